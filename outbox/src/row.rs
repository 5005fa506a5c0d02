//! A message as the outbox's columns, and back.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use courier_core::message::{CAUSATION_ID, CORRELATION_ID};
use courier_core::telemetry::{TRACEPARENT, TRACESTATE, TraceContext};
use courier_core::{Message, MessageId};

use crate::error::Error;

/// The columns one message is stored in.
#[derive(Debug, Clone)]
pub(crate) struct Columns {
    pub(crate) message_id: String,
    pub(crate) message_key: Option<String>,
    /// Every header except the correlation and causation ids, as a JSON
    /// object of strings.
    pub(crate) headers: String,
    pub(crate) payload: Vec<u8>,
    pub(crate) content_type: Option<String>,
    pub(crate) timestamp_ms: i64,
    pub(crate) correlation_id: Option<String>,
    pub(crate) causation_id: Option<String>,
}

impl Columns {
    /// The columns of `message`. A message enqueued in a trace (a handler's,
    /// or the current OpenTelemetry span's) that carries no trace context
    /// gets that trace's: the row keeps the context of the transaction that
    /// wrote it, and the relay's publish passes it on unchanged.
    pub(crate) fn of(message: &Message) -> Self {
        let mut headers: serde_json::Map<String, serde_json::Value> = message
            .headers()
            .iter()
            .filter(|(name, _)| *name != CORRELATION_ID && *name != CAUSATION_ID)
            .map(|(name, value)| (name.to_owned(), value.into()))
            .collect();
        if !headers.contains_key(TRACEPARENT)
            && let Some(context) = TraceContext::current()
        {
            headers.insert(TRACEPARENT.to_owned(), context.traceparent().into());
            if let Some(state) = context.state() {
                headers.insert(TRACESTATE.to_owned(), state.into());
            }
        }
        Columns {
            message_id: message.id().to_string(),
            message_key: message.key().map(str::to_owned),
            headers: serde_json::Value::Object(headers).to_string(),
            payload: message.payload().to_vec(),
            content_type: message.content_type().map(str::to_owned),
            timestamp_ms: i64::try_from(message.timestamp_millis()).unwrap_or(i64::MAX),
            correlation_id: message.correlation_id().map(str::to_owned),
            causation_id: message.causation_id().map(str::to_owned),
        }
    }

    /// The message these columns hold; `row` names the row in errors.
    pub(crate) fn into_message(self, row: i64) -> Result<Message, Error> {
        let corrupt = |reason: String| Error::CorruptRow { row, reason };
        let id =
            MessageId::parse(&self.message_id).map_err(|e| corrupt(format!("message id: {e}")))?;
        let mut message = Message::new(Bytes::from(self.payload))
            .with_id(id)
            .with_timestamp(UNIX_EPOCH + Duration::from_millis(self.timestamp_ms.max(0) as u64));
        if let Some(key) = self.message_key {
            message = message.with_key(key);
        }
        if let Some(content_type) = self.content_type {
            message = message.with_content_type(content_type);
        }
        let headers: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&self.headers)
                .map_err(|e| corrupt(format!("headers are not a JSON object: {e}")))?;
        let reserved = [
            (CORRELATION_ID, self.correlation_id),
            (CAUSATION_ID, self.causation_id),
        ];
        let all = headers
            .into_iter()
            .map(|(name, value)| match value {
                serde_json::Value::String(value) => Ok((name, value)),
                other => Err(corrupt(format!("header {name:?} is {other}, not a string"))),
            })
            .chain(
                reserved
                    .into_iter()
                    .filter_map(|(name, value)| Some(Ok((name.to_owned(), value?)))),
            );
        for header in all {
            let (name, value) = header?;
            courier_core::adapter::restore_header(
                courier_core::adapter::headers_mut(&mut message),
                name,
                value,
            )
            .map_err(|e| corrupt(e.to_string()))?;
        }
        Ok(message)
    }
}

/// A row the broker refused for good, or that could not be read back.
/// Operators list them with `failed()` and put them back with
/// `retry_failed()`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct FailedRow {
    /// The row's id (the `seq` column).
    pub row: i64,
    /// The topic it was enqueued for.
    pub topic: String,
    /// The message, when the row can still be read as one.
    pub message: Option<Message>,
    /// Why it failed: the broker's error with its causes.
    pub reason: String,
    /// Publish attempts made.
    pub attempts: i32,
    /// When it was marked failed.
    pub failed_at: SystemTime,
}

/// A pending row claimed by the relay.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) seq: i64,
    pub(crate) topic: String,
    pub(crate) message: Message,
}

/// A row read from either backend: `seq`, `topic`, then the message's
/// columns in [`Columns`] order (the backends' `MESSAGE_COLUMNS`).
pub(crate) type ReadRow = (i64, String, Result<Message, Error>);

/// Reads a row selected with the backend's `MESSAGE_COLUMNS`.
pub(crate) fn read_row<R>(r: &R) -> Result<ReadRow, sqlx::Error>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Vec<u8>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let seq: i64 = r.try_get(0)?;
    let columns = Columns {
        message_id: r.try_get(2)?,
        message_key: r.try_get(3)?,
        headers: r.try_get(4)?,
        payload: r.try_get(5)?,
        content_type: r.try_get(6)?,
        timestamp_ms: r.try_get(7)?,
        correlation_id: r.try_get(8)?,
        causation_id: r.try_get(9)?,
    };
    Ok((seq, r.try_get(1)?, columns.into_message(seq)))
}

/// Reads a failed row selected with the backend's `MESSAGE_COLUMNS`, then
/// `last_error`, `attempts` and `failed_at` in milliseconds.
pub(crate) fn read_failed_row<R>(r: &R) -> Result<FailedRow, sqlx::Error>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    for<'r> i32: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Vec<u8>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let (row, topic, message) = read_row(r)?;
    let failed_at: Option<i64> = r.try_get(12)?;
    Ok(FailedRow {
        row,
        topic,
        message: message.ok(),
        reason: r.try_get::<Option<String>, _>(10)?.unwrap_or_default(),
        attempts: r.try_get(11)?,
        failed_at: UNIX_EPOCH + Duration::from_millis(failed_at.unwrap_or(0).max(0) as u64),
    })
}

/// Claimed rows split into those that read back as messages and those
/// that did not (with the reason).
pub(crate) fn split_readable(rows: Vec<ReadRow>) -> (Vec<Row>, Vec<(i64, String)>) {
    let mut readable = Vec::with_capacity(rows.len());
    let mut corrupt = Vec::new();
    for (seq, topic, message) in rows {
        match message {
            Ok(message) => readable.push(Row {
                seq,
                topic,
                message,
            }),
            Err(e) => corrupt.push((seq, e.to_string())),
        }
    }
    (readable, corrupt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_field_survives_the_columns() {
        let original = Message::new("payload")
            .with_key("k-ü")
            .with_content_type("text/plain")
            .with_header("empty", "")
            .unwrap()
            .with_header("unicode", "✓ ünïcode")
            .unwrap()
            .with_correlation_id("corr")
            .unwrap()
            .with_causation_id("cause")
            .unwrap();
        let columns = Columns::of(&original);
        assert_eq!(columns.correlation_id.as_deref(), Some("corr"));
        assert!(!columns.headers.contains("courier-"), "{}", columns.headers);
        assert_eq!(columns.into_message(1).unwrap(), original);

        let bare = Message::new("");
        assert_eq!(Columns::of(&bare).into_message(2).unwrap(), bare);
    }

    #[test]
    fn corrupt_headers_are_a_typed_error() {
        let mut columns = Columns::of(&Message::new("x"));
        columns.headers = "{\"n\": 1}".into();
        let err = columns.into_message(7).unwrap_err();
        assert!(
            matches!(&err, Error::CorruptRow { row: 7, reason } if reason.contains("\"n\"")),
            "{err}"
        );
    }
}
