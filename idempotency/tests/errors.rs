//! Bad input is refused with typed errors that name the store URL without
//! its password.
//!
//! `cargo test -p courier-idempotency --all-features --test errors`

use courier_core::ConnectErrorKind;
use courier_idempotency::Error;

fn assert_redacted(err: &Error, shown: &str, secret: &str) {
    let text = err.to_string();
    assert!(text.contains(shown), "{text}");
    assert!(!text.contains(secret), "{text}");
    assert!(!format!("{err:?}").contains(secret), "{err:?}");
}

#[tokio::test]
async fn unknown_scheme() {
    let err = courier_idempotency::connect("mongodb://app:s3cret@db:27017/x")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidUrl { .. }), "{err:?}");
    assert_redacted(&err, "mongodb://app:***@db:27017/x", "s3cret");
}

#[tokio::test]
async fn memory_url_with_a_name() {
    let err = courier_idempotency::connect("memory://shared")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidUrl { .. }), "{err:?}");
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_file_in_a_missing_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}/missing/dir/x.db", dir.path().display());
    match courier_idempotency::connect(&url).await {
        Err(err @ Error::Connect { .. }) => {
            let Error::Connect {
                kind, url: shown, ..
            } = &err
            else {
                unreachable!()
            };
            assert_eq!(*kind, ConnectErrorKind::NotFound, "{err}");
            assert_eq!(shown, &url);
        }
        other => panic!("expected Connect, got {other:?}"),
    }
}

/// `scheme://user:password@host:port/path` for the server at `url`.
#[cfg(any(feature = "postgres", feature = "redis"))]
fn with_login(url: &str, login: &str, path: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("scheme");
    let address = rest.rsplit_once('@').map_or(rest, |(_, a)| a);
    let address = address.split('/').next().expect("address");
    format!("{scheme}://{login}@{address}{path}")
}

#[cfg(any(feature = "postgres", feature = "redis"))]
async fn expect_connect_error(url: &str, expected: ConnectErrorKind) {
    match courier_idempotency::connect(url).await {
        Err(err @ Error::Connect { .. }) => {
            let Error::Connect { kind, .. } = &err else {
                unreachable!()
            };
            assert_eq!(*kind, expected, "{url}: {err}");
            assert_redacted(&err, &courier_core::error::redact_url(url), "s3cret");
        }
        other => panic!("{url}: expected Connect, got {other:?}"),
    }
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn postgres_login_and_database_errors() {
    let server = courier_testkit::fixtures::postgres()
        .await
        .expect("postgres fixture");
    // The fixture trusts every login, so a wrong password passes; an
    // unknown role is refused the same way (28000 vs 28P01).
    let unknown_role = with_login(server.url(), "nobody:s3cret", "/postgres");
    expect_connect_error(&unknown_role, ConnectErrorKind::Authentication).await;
    let missing_db = with_login(server.url(), "postgres:s3cret", "/no_such_database");
    expect_connect_error(&missing_db, ConnectErrorKind::NotFound).await;
    expect_connect_error(
        "postgres://app:s3cret@127.0.0.1:1/db",
        ConnectErrorKind::Refused,
    )
    .await;
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_login_errors() {
    let server = courier_testkit::fixtures::redis()
        .await
        .expect("redis fixture");
    // The fixture has no password: any password is refused.
    let wrong_password = with_login(server.url(), ":s3cret", "");
    expect_connect_error(&wrong_password, ConnectErrorKind::Authentication).await;
    let unknown_user = with_login(server.url(), "nobody:s3cret", "");
    expect_connect_error(&unknown_user, ConnectErrorKind::Authentication).await;
    expect_connect_error("redis://:s3cret@127.0.0.1:1", ConnectErrorKind::Refused).await;
}
