//! The stock service: answers "is this available?" over request/reply
//! (a [`responder`](courier::runtime::responder) run by the consumer
//! runtime). It only reads; reserving is the inventory service's job.

use courier::Subscription;
use courier::runtime::{self, Consumer, Envelope, HandlerError, RunningConsumer};

use super::events::{StockQuery, StockReply};
use super::flow::{OrderFlow, STOCK_GROUP};
use crate::db::with_backend;
use crate::flow_trace;

/// Free stock of a product: on hand minus reserved.
const FREE: &str = "SELECT on_hand - reserved FROM stock WHERE product = $1";

/// Sets a product's stock on hand (creating it, nothing reserved).
const SEED: &str = "INSERT INTO stock (product, on_hand, reserved) VALUES ($1, $2, 0)
     ON CONFLICT (product) DO UPDATE SET on_hand = excluded.on_hand";

/// Sets `product`'s stock on hand to `on_hand`.
///
/// # Errors
///
/// [`Error::Database`](crate::Error::Database) when the write fails.
pub async fn seed(flow: &OrderFlow, product: &str, on_hand: i64) -> crate::Result<()> {
    with_backend!(&*flow.db, b => {
        sqlx::query(SEED).bind(product).bind(on_hand).execute(&b.pool).await?;
    });
    Ok(())
}

/// Starts the stock responder; it answers until shut down.
///
/// # Errors
///
/// The broker's error when the subscription fails.
pub async fn start(flow: &OrderFlow) -> courier::Result<RunningConsumer> {
    let service = flow.clone();
    let handler = runtime::responder(&flow.broker, move |query: Envelope<StockQuery>| {
        let flow = service.clone();
        async move {
            let StockQuery {
                order_id,
                product,
                quantity,
            } = query.body;
            let free: Option<(i64,)> = with_backend!(&*flow.db, b => {
                flow_trace::record!(&b.pool, &order_id, "stock", flow_trace::ids(query.meta.message()))
                    .await
                    .map_err(HandlerError::transient)?;
                sqlx::query_as(FREE).bind(&product).fetch_optional(&b.pool).await
            })
            .map_err(HandlerError::transient)?;
            let free = free.map_or(0, |(free,)| free);
            let available = free >= quantity;
            flow.timeline.note(
                "stock",
                format!(
                    "{quantity} × {product}? {free} free: {}",
                    if available { "yes" } else { "no" }
                ),
            );
            Ok(StockReply { available, free })
        }
    });
    let subscription = Subscription::new(&flow.topics.stock_query, STOCK_GROUP);
    Consumer::builder(&flow.broker, subscription, handler)
        .concurrency(32)
        .start()
        .await
}

/// The catalog a stock service started on its own begins with, where the
/// database has no stock of the product yet.
pub const CATALOG: [(&str, i64); 3] = [("apple", 100), ("pear", 5), ("plum", 0)];

/// Adds the [`CATALOG`]'s products that are missing.
///
/// # Errors
///
/// [`Error::Database`](crate::Error::Database) when the write fails.
pub async fn seed_catalog(flow: &OrderFlow) -> crate::Result<()> {
    for (product, on_hand) in CATALOG {
        with_backend!(&*flow.db, b => {
            sqlx::query(SEED_MISSING).bind(product).bind(on_hand).execute(&b.pool).await?;
        });
    }
    Ok(())
}

/// Adds a product unless it is there.
const SEED_MISSING: &str = "INSERT INTO stock (product, on_hand, reserved) VALUES ($1, $2, 0)
     ON CONFLICT (product) DO NOTHING";
