-- courier-outbox, SQLite: the outbox table.
--
-- Run as is for the default table name, or through `SqliteOutbox::migrate()`,
-- which writes the configured name in place of every `courier_outbox`
-- (indexes become `<table>_<suffix>`). Every statement is idempotent.
--
-- The same columns as on PostgreSQL: `headers` is a JSON object of strings
-- (query it with json_extract), times are milliseconds since the Unix epoch.
-- state: 'pending', 'sent' or 'failed' (see the PostgreSQL file).

CREATE TABLE IF NOT EXISTS courier_outbox (
    seq               INTEGER PRIMARY KEY AUTOINCREMENT,
    topic             TEXT    NOT NULL,
    message_id        TEXT    NOT NULL,
    message_key       TEXT,
    headers           TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(headers)),
    payload           BLOB    NOT NULL,
    content_type      TEXT,
    message_timestamp INTEGER NOT NULL,
    correlation_id    TEXT,
    causation_id      TEXT,
    state             TEXT    NOT NULL DEFAULT 'pending'
                              CHECK (state IN ('pending', 'sent', 'failed')),
    attempts          INTEGER NOT NULL DEFAULT 0,
    last_error        TEXT,
    enqueued_at       INTEGER NOT NULL,
    sent_at           INTEGER,
    failed_at         INTEGER
);

CREATE INDEX IF NOT EXISTS courier_outbox_pending
    ON courier_outbox (seq) WHERE state = 'pending';

CREATE INDEX IF NOT EXISTS courier_outbox_sent
    ON courier_outbox (sent_at) WHERE state = 'sent';

CREATE INDEX IF NOT EXISTS courier_outbox_failed
    ON courier_outbox (seq) WHERE state = 'failed';
