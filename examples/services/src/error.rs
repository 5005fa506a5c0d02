//! The one error type of the example services.

/// What can stop a service, a scenario or a load run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The command line could not be read.
    #[error("usage: {0}")]
    Usage(String),
    /// A broker operation failed.
    #[error("broker: {0}")]
    Broker(#[from] courier::Error),
    /// A database query failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The services' schema could not be applied.
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The outbox failed (migration, enqueue).
    #[error("outbox: {0}")]
    Outbox(#[from] courier::outbox::Error),
    /// The idempotency store failed.
    #[error("idempotency store: {0}")]
    Idempotency(#[from] courier::idempotency::Error),
    /// An HTTP call of a scenario or load run failed.
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
    /// Binding or serving the HTTP port failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// A scenario saw something it did not expect.
    #[error("scenario: {0}")]
    Unexpected(String),
}

/// `Result` with the example services' [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
