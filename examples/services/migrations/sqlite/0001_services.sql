-- The example services' tables (the outbox and idempotency tables are
-- created by courier-outbox and courier-idempotency themselves).

-- Order flow: the API's orders.
CREATE TABLE IF NOT EXISTS orders (
    id TEXT PRIMARY KEY,
    product TEXT NOT NULL,
    quantity INTEGER NOT NULL,
    email TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);

-- Order flow: the stock service's and the inventory service's stock.
CREATE TABLE IF NOT EXISTS stock (
    product TEXT PRIMARY KEY,
    on_hand INTEGER NOT NULL,
    reserved INTEGER NOT NULL
);

-- Order flow: one row per reservation the inventory service made. No
-- unique key on purpose: exactly-once comes from the idempotency store.
CREATE TABLE IF NOT EXISTS reservations (
    order_id TEXT NOT NULL,
    product TEXT NOT NULL,
    quantity INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS reservations_order ON reservations (order_id);

-- Order flow: the email service's sent mails (no unique key either).
CREATE TABLE IF NOT EXISTS emails (
    order_id TEXT NOT NULL,
    recipient TEXT NOT NULL,
    subject TEXT NOT NULL,
    sent_at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS emails_order ON emails (order_id);

-- Loan approval: one row per application.
CREATE TABLE IF NOT EXISTS loans (
    reference TEXT PRIMARY KEY,
    applicant TEXT NOT NULL,
    amount INTEGER NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    decided_at_ms INTEGER,
    created_at_ms INTEGER NOT NULL
);

-- Loan approval: what each level did, in order.
CREATE TABLE IF NOT EXISTS loan_steps (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    reference TEXT NOT NULL,
    level TEXT NOT NULL,
    outcome TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS loan_steps_reference ON loan_steps (reference);

-- Both flows: the correlation and trace id each service saw per message.
CREATE TABLE IF NOT EXISTS flow_trace (
    flow TEXT NOT NULL,
    service TEXT NOT NULL,
    correlation_id TEXT,
    trace_id TEXT,
    at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS flow_trace_flow ON flow_trace (flow);
