//! What the order flow's services say to each other, and the HTTP bodies.

use serde::{Deserialize, Serialize};

/// `POST /orders`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewOrder {
    /// The product's name (`apple`, `pear`, ...).
    pub product: String,
    /// How many.
    pub quantity: i64,
    /// Where the confirmation goes.
    pub email: String,
}

/// The answer to a placed order (201).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Placed {
    /// The new order's id.
    pub order_id: String,
    /// The trace id of the flow the order started.
    pub trace_id: String,
}

/// The body of a refusal (409, 503, 400).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Refused {
    /// Why.
    pub error: String,
    /// For 503: the breaker's state (`closed`, `open`, `half-open`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit: Option<String>,
}

/// Request to the stock service: is this much of the product available?
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StockQuery {
    /// The order it is asked for (for the flow's trace record).
    pub order_id: String,
    /// The product.
    pub product: String,
    /// How many.
    pub quantity: i64,
}

/// The stock service's reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StockReply {
    /// Whether `quantity` can be had now.
    pub available: bool,
    /// On hand minus reserved.
    pub free: i64,
}

/// The event the API writes into the outbox with the order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderPlaced {
    /// The order.
    pub order_id: String,
    /// The product.
    pub product: String,
    /// How many.
    pub quantity: i64,
    /// Where the confirmation goes.
    pub email: String,
}

/// `GET /orders/{id}`: the order and what the downstream services did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderView {
    /// The order as placed.
    pub order: OrderPlaced,
    /// The inventory service's reservations for it (`reserved` or
    /// `insufficient stock`): exactly one once it has run.
    pub reservations: Vec<String>,
    /// The confirmations the email service sent (their subjects): exactly
    /// one once it has run.
    pub emails: Vec<String>,
    /// The correlation and trace id each service saw.
    pub trace: Vec<crate::flow_trace::Sighting>,
}
