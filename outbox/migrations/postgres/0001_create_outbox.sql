-- courier-outbox, PostgreSQL: the outbox table.
--
-- Run as is for the default table name, or through `PostgresOutbox::migrate()`,
-- which writes the configured name in place of every `courier_outbox`
-- (indexes become `<table>_<suffix>`). Every statement is idempotent.
--
-- One row per enqueued message. The message is stored in columns, so
-- operators can query it; `headers` holds every header except the
-- correlation and causation ids, which have their own columns.
--
-- state: 'pending' (waiting for the relay), 'sent' (confirmed by the broker;
-- deleted by cleanup after the retention), 'failed' (refused by the broker
-- for good; `last_error` says why; `retry_failed()` sets it back to pending).
-- The relay selects pending rows by state, never by a high-water `seq`, so
-- rows committed out of `seq` order are never skipped.

CREATE TABLE IF NOT EXISTS courier_outbox (
    seq               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic             TEXT        NOT NULL,
    message_id        TEXT        NOT NULL,
    message_key       TEXT,
    headers           JSONB       NOT NULL DEFAULT '{}',
    payload           BYTEA       NOT NULL,
    content_type      TEXT,
    message_timestamp TIMESTAMPTZ NOT NULL,
    correlation_id    TEXT,
    causation_id      TEXT,
    state             TEXT        NOT NULL DEFAULT 'pending'
                                  CHECK (state IN ('pending', 'sent', 'failed')),
    attempts          INTEGER     NOT NULL DEFAULT 0,
    last_error        TEXT,
    enqueued_at       TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    sent_at           TIMESTAMPTZ,
    failed_at         TIMESTAMPTZ
);

-- The relay's scan: pending rows in enqueue order.
CREATE INDEX IF NOT EXISTS courier_outbox_pending
    ON courier_outbox (seq) WHERE state = 'pending';

-- Per-key order: the oldest pending row of a topic and key.
CREATE INDEX IF NOT EXISTS courier_outbox_pending_key
    ON courier_outbox (topic, message_key, seq)
    WHERE state = 'pending' AND message_key IS NOT NULL;

-- Cleanup of sent rows.
CREATE INDEX IF NOT EXISTS courier_outbox_sent
    ON courier_outbox (sent_at) WHERE state = 'sent';

-- Operators' list of failed rows.
CREATE INDEX IF NOT EXISTS courier_outbox_failed
    ON courier_outbox (seq) WHERE state = 'failed';
