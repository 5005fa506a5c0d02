//! What every service of the order flow shares: the broker, the
//! database, the topic names, the timeline and the counters.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use courier::Broker;

use crate::db::Database;
use crate::faults::LostAcks;
use crate::timeline::Timeline;
use crate::topology;

/// The consumer group of the stock service (request/reply).
pub const STOCK_GROUP: &str = "stock";
/// The consumer group of the inventory service.
pub const INVENTORY_GROUP: &str = "inventory";
/// The consumer group of the email service.
pub const EMAIL_GROUP: &str = "email";

/// The order flow's topics; a prefix keeps runs apart on a shared broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderTopics {
    /// Stock queries (request/reply).
    pub stock_query: String,
    /// `OrderPlaced` events, written to the outbox by the API.
    pub order_placed: String,
}

impl OrderTopics {
    /// `{prefix}stock.query` and `{prefix}orders.placed`.
    pub fn with_prefix(prefix: &str) -> Self {
        OrderTopics {
            stock_query: format!("{prefix}stock.query"),
            order_placed: format!("{prefix}orders.placed"),
        }
    }
}

impl Default for OrderTopics {
    fn default() -> Self {
        Self::with_prefix("")
    }
}

/// Counts the services keep of what they skipped.
#[derive(Debug, Default)]
pub struct FlowCounters {
    /// `OrderPlaced` deliveries the inventory service found already
    /// processed (its claim inside the transaction said done).
    pub inventory_duplicates: AtomicU64,
}

/// Faults the scenario and the tests switch on.
#[derive(Debug, Default)]
pub struct OrderFaults {
    /// Acks the inventory consumer loses after reserving.
    pub inventory: Arc<LostAcks>,
    /// Acks the email consumer loses after mailing.
    pub email: Arc<LostAcks>,
}

/// The handles every service of the flow needs. Cheap to clone.
#[derive(Debug, Clone)]
pub struct OrderFlow {
    /// The broker, any adapter.
    pub broker: Broker,
    /// The database with its outbox and idempotency store.
    pub db: Arc<Database>,
    /// The topic names.
    pub topics: OrderTopics,
    /// Where services say what they did.
    pub timeline: Timeline,
    /// What the services skipped.
    pub counters: Arc<FlowCounters>,
    /// Faults to simulate.
    pub faults: Arc<OrderFaults>,
}

impl OrderFlow {
    /// The flow on `broker` and `db`, with the default topics, silent.
    pub fn new(broker: Broker, db: Arc<Database>) -> Self {
        OrderFlow {
            broker,
            db,
            topics: OrderTopics::default(),
            timeline: Timeline::silent(),
            counters: Arc::default(),
            faults: Arc::default(),
        }
    }

    /// With other topic names.
    pub fn topics(mut self, topics: OrderTopics) -> Self {
        self.topics = topics;
        self
    }

    /// Printing to `timeline`.
    pub fn timeline(mut self, timeline: Timeline) -> Self {
        self.timeline = timeline;
        self
    }

    /// Declares the event consumers' subscriptions on the broker, so that
    /// events published while a consumer is down wait for it (every
    /// service calls this at start; it is idempotent).
    ///
    /// # Errors
    ///
    /// The broker's error.
    pub async fn provision(&self) -> courier::Result<()> {
        let topic = self.topics.order_placed.as_str();
        topology::provision(
            &self.broker,
            [(topic, INVENTORY_GROUP), (topic, EMAIL_GROUP)],
        )
        .await
    }
}
