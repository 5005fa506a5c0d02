//! The names most services use, for a glob import:
//! `use courier_core::prelude::*;` (or `courier::prelude::*`).
//!
//! It also brings [`futures::StreamExt`] into scope (unnamed), so
//! `stream.next().await` works on a [`DeliveryStream`].

pub use crate::request::{RequestError, Requester};
pub use crate::runtime::{App, Consumer, Envelope, HandlerError, HandlerResult, Meta};
pub use crate::{
    Broker, Close, Delivery, DeliveryStream, Error, Message, MessageId, Nack, Publisher, Result,
    StartPosition, Subscriber, Subscription,
};
pub use futures::StreamExt as _;
