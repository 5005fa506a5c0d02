//! The Redis store: Lua scripts over an owner token.

use std::fmt;
use std::future::Future;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use courier_core::ConnectErrorKind;
use courier_core::error::redact_url;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisError, Script, ServerErrorKind, Value};

use crate::config::StoreConfig;
use crate::error::{Error, Result};
use crate::key::{ClaimToken, IdempotencyKey, check_duration};
use crate::store::{Claim, IdempotencyStore};

/// Claims the key unless it exists: a hash with `state` (`claimed` or
/// `done`), `owner` and maybe `result`, expiring with the lease or the
/// retention. Answers `{1}` (claimed), `{2, ms left on the lease}`, `{3}`
/// (done) or `{3, result}`.
const CLAIM: &str = r"
local found = redis.call('HMGET', KEYS[1], 'state', 'result')
if not found[1] then
    redis.call('HSET', KEYS[1], 'state', 'claimed', 'owner', ARGV[1])
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {1}
end
if found[1] == 'done' then
    if found[2] then
        return {3, found[2]}
    end
    return {3}
end
return {2, redis.call('PTTL', KEYS[1])}
";

/// Marks the owner's claim (or its own done mark, again) done for ARGV[2]
/// ms, with the result ARGV[4] if ARGV[3] is `1`. Answers 1, or 0 if the
/// owner does not hold the key.
const COMPLETE: &str = r"
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then
    return 0
end
redis.call('HSET', KEYS[1], 'state', 'done')
if ARGV[3] == '1' then
    redis.call('HSET', KEYS[1], 'result', ARGV[4])
else
    redis.call('HDEL', KEYS[1], 'result')
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
";

/// Deletes the owner's live claim. Answers 1, or 0 if the owner does not
/// hold a claim on the key.
const RELEASE: &str = r"
local found = redis.call('HMGET', KEYS[1], 'state', 'owner')
if found[1] == 'claimed' and found[2] == ARGV[1] then
    redis.call('DEL', KEYS[1])
    return 1
end
return 0
";

/// An idempotency store in Redis (`redis://[user:password@]host:port[/db]`):
/// shared by every instance of a service, fast, and forgetful by design
/// (every key carries its lease or retention as a Redis TTL).
///
/// Each key is a hash `<prefix><scope length>:<scope>:<key>` (prefix
/// [`StoreConfig::key_prefix`], `courier:idempotency:` by default) with the
/// fields `state`, `owner` and `result`. Claim, complete and release are
/// Lua scripts (`EVALSHA`, loaded again after a restart), atomic on the
/// server and checking the owner token: they work on Redis 7 and 8 and
/// need no newer compare-and-delete command. Leases run on Redis's clock
/// (`PEXPIRE`).
///
/// The connection is a reconnecting [`ConnectionManager`]: when Redis goes
/// away, operations fail (retryably, after at most
/// [`StoreConfig::operation_timeout`]) until it is back, and then work again
/// without anything to do. A Redis without persistence forgets its keys on
/// restart, and with them which messages were handled: use `appendonly yes`
/// where that matters.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use courier_idempotency::{IdempotencyKey, IdempotencyStore, RedisStore, StoreConfig};
///
/// # async fn example() -> courier_idempotency::Result<()> {
/// let store = RedisStore::connect("redis://:s3cret@cache:6379/2", StoreConfig::default()).await?;
/// let key = IdempotencyKey::new("billing", "order-42");
/// let claim = store.claim(&key, Duration::from_secs(30)).await?;
/// # let _ = claim;
/// # Ok(()) }
/// ```
pub struct RedisStore {
    connection: ConnectionManager,
    url: String,
    prefix: String,
    operation_timeout: Duration,
    claim: Script,
    complete: Script,
    release: Script,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.url)
            .field("prefix", &self.prefix)
            .field("operation_timeout", &self.operation_timeout)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to the Redis server at `url`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`] for a URL the client cannot read,
    /// [`Error::Connect`] when the server cannot be reached (kind `Refused`,
    /// `TimedOut`, ...) or refuses the credentials (`Authentication`).
    pub async fn connect(url: &str, config: StoreConfig) -> Result<Self> {
        let shown = redact_url(url);
        let client = redis::Client::open(url).map_err(|e| Error::InvalidUrl {
            url: shown.clone(),
            reason: e.to_string(),
        })?;
        let connect_error = |error: RedisError| Error::Connect {
            url: shown.clone(),
            kind: connect_error_kind(&error),
            source: Some(Box::new(error)),
        };
        let timed_out = || Error::Connect {
            url: shown.clone(),
            kind: ConnectErrorKind::TimedOut,
            source: None,
        };
        // One plain connection first, so that a refused connection or login
        // is reported as such (the manager would retry it).
        tokio::time::timeout(
            config.connect_timeout,
            client.get_multiplexed_async_connection(),
        )
        .await
        .map_err(|_| timed_out())?
        .map_err(connect_error)?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.operation_timeout))
            .set_number_of_retries(3)
            .set_min_delay(Duration::from_millis(100))
            .set_max_delay(Duration::from_secs(1));
        let connection = tokio::time::timeout(
            config.connect_timeout,
            ConnectionManager::new_with_config(client, manager_config),
        )
        .await
        .map_err(|_| timed_out())?
        .map_err(connect_error)?;
        Ok(RedisStore {
            connection,
            url: shown,
            prefix: config.key_prefix,
            operation_timeout: config.operation_timeout,
            claim: Script::new(CLAIM),
            complete: Script::new(COMPLETE),
            release: Script::new(RELEASE),
        })
    }

    /// The Redis key of `key`: the scope's length makes it unambiguous.
    fn redis_key(&self, key: &IdempotencyKey) -> String {
        format!(
            "{}{}:{}:{}",
            self.prefix,
            key.scope().len(),
            key.scope(),
            key.key()
        )
    }

    /// Runs a script call with the operation timeout.
    async fn run<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.operation_timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(Error::Store {
                url: self.url.clone(),
                operation,
                retryable: retryable(&error),
                source: Box::new(error),
            }),
            Err(_) => Err(Error::Timeout {
                url: self.url.clone(),
                operation,
                after: self.operation_timeout,
            }),
        }
    }

    fn unexpected(&self, operation: &'static str, answer: &Value) -> Error {
        Error::Store {
            url: self.url.clone(),
            operation,
            retryable: false,
            source: format!("unexpected answer from the script: {answer:?}").into(),
        }
    }

    /// `Ok` when the script answered 1; otherwise the token's claim is gone.
    fn held(&self, token: &ClaimToken, answer: i64) -> Result<()> {
        if answer == 1 {
            Ok(())
        } else {
            Err(token.lost(&self.url))
        }
    }
}

#[async_trait]
impl IdempotencyStore for RedisStore {
    async fn claim(&self, key: &IdempotencyKey, lease: Duration) -> Result<Claim> {
        key.check(&self.url)?;
        let lease_ms = check_duration(&self.url, "lease", lease)?;
        let owner = ClaimToken::fresh_owner();
        let asked = SystemTime::now();
        let mut connection = self.connection.clone();
        let answer: Value = self
            .run(
                "claim",
                self.claim
                    .key(self.redis_key(key))
                    .arg(&owner)
                    .arg(lease_ms)
                    .invoke_async(&mut connection),
            )
            .await?;
        let Value::Array(parts) = &answer else {
            return Err(self.unexpected("claim", &answer));
        };
        match parts.as_slice() {
            [Value::Int(1)] => Ok(Claim::Claimed(ClaimToken::new(
                key.clone(),
                owner,
                asked + lease,
            ))),
            [Value::Int(2), Value::Int(left)] => Ok(Claim::InProgress {
                until: SystemTime::now() + Duration::from_millis(u64::try_from(*left).unwrap_or(0)),
            }),
            [Value::Int(3)] => Ok(Claim::AlreadyDone { result: None }),
            [Value::Int(3), Value::BulkString(result)] => Ok(Claim::AlreadyDone {
                result: Some(Bytes::from(result.clone())),
            }),
            _ => Err(self.unexpected("claim", &answer)),
        }
    }

    async fn complete_with_result(
        &self,
        token: &ClaimToken,
        retention: Duration,
        result: Option<Bytes>,
    ) -> Result<()> {
        let retention_ms = check_duration(&self.url, "retention", retention)?;
        let mut connection = self.connection.clone();
        let mut call = self.complete.key(self.redis_key(token.key()));
        call.arg(token.owner()).arg(retention_ms);
        match &result {
            Some(result) => call.arg("1").arg(result.as_ref()),
            None => call.arg("0").arg(""),
        };
        let answer: i64 = self
            .run("complete", call.invoke_async(&mut connection))
            .await?;
        self.held(token, answer)
    }

    async fn release(&self, token: &ClaimToken) -> Result<()> {
        let mut connection = self.connection.clone();
        let answer: i64 = self
            .run(
                "release",
                self.release
                    .key(self.redis_key(token.key()))
                    .arg(token.owner())
                    .invoke_async(&mut connection),
            )
            .await?;
        self.held(token, answer)
    }

    fn url(&self) -> &str {
        &self.url
    }
}

/// What kind of connection failure `error` is.
fn connect_error_kind(error: &RedisError) -> ConnectErrorKind {
    if error.kind() == ErrorKind::AuthenticationFailed {
        ConnectErrorKind::Authentication
    } else if error.kind() == ErrorKind::Server(ServerErrorKind::NoPerm) {
        ConnectErrorKind::Authorization
    } else if error.is_connection_refusal() {
        ConnectErrorKind::Refused
    } else if error.is_timeout() {
        ConnectErrorKind::TimedOut
    } else if error.is_io_error() {
        ConnectErrorKind::Unreachable
    } else {
        ConnectErrorKind::Other
    }
}

/// Whether an operation that failed with `error` may succeed if tried again.
fn retryable(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || matches!(
            error.kind(),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::ReadOnly
            )
        )
}
