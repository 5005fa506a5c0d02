-- courier-idempotency, SQLite: one row per key within a scope.
--
-- scope       the consumer group (keys of one group never hide another's)
-- key         the message id, or a business key
-- state       'claimed' while a worker's lease runs, 'done' once completed
-- owner       the claim's owner token; complete and release must present it
-- expires_at  end of the lease ('claimed') or of the retention ('done'), in
--             milliseconds since the Unix epoch; an expired row counts as absent
-- result      what the worker stored with its completion, if anything
--
-- Safe to run more than once. courier-idempotency runs it on connect unless
-- told not to (StoreConfig::migrate(false)).
CREATE TABLE IF NOT EXISTS courier_idempotency (
    scope      TEXT    NOT NULL,
    key        TEXT    NOT NULL,
    state      TEXT    NOT NULL CHECK (state IN ('claimed', 'done')),
    owner      TEXT    NOT NULL,
    expires_at INTEGER NOT NULL,
    result     BLOB,
    PRIMARY KEY (scope, key)
);

-- The cleanup deletes expired rows in batches, oldest first.
CREATE INDEX IF NOT EXISTS courier_idempotency_expires_at
    ON courier_idempotency (expires_at);
