//! The outbox's error type.

/// `Result` with the outbox's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every failure the outbox reports.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The table name is not a plain SQL identifier (optionally
    /// schema-qualified on PostgreSQL).
    #[error("invalid outbox table name {name:?}: {reason}")]
    InvalidTableName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The message cannot be enqueued: an invalid topic name.
    #[error("cannot enqueue: {0}")]
    InvalidTopic(#[from] courier_core::name::InvalidName),
    /// The database failed an operation.
    #[error("outbox store {store}: {operation} failed")]
    Database {
        /// The store, as a URL without password.
        store: String,
        /// What was being done (`"enqueue"`, `"claim"`, `"migrate"`, ...).
        operation: &'static str,
        /// sqlx's error.
        #[source]
        source: sqlx::Error,
    },
    /// A stored row cannot be turned back into a message (its headers are
    /// not a JSON object of strings, or its id is not a valid message id).
    /// The relay marks such a row failed with this reason.
    #[error("outbox row {row} cannot be read back as a message: {reason}")]
    CorruptRow {
        /// The row's id.
        row: i64,
        /// What is wrong with it.
        reason: String,
    },
}

impl Error {
    /// A [`Error::Database`] for `operation` on `store`.
    pub(crate) fn database(
        store: &str,
        operation: &'static str,
    ) -> impl FnOnce(sqlx::Error) -> Self {
        let store = store.to_owned();
        move |source| Error::Database {
            store,
            operation,
            source,
        }
    }
}
