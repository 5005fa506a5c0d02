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
