//! Members of one group share its messages: a member takes its share of a
//! backlog, not as much as its prefetch allows.

use courier_core::prelude::*;
use courier_core::{DeliveryStream, Message, Subscription};
use courier_memory::MemoryBroker;
use futures::FutureExt;

/// Deliveries the stream hands out without waiting, left unsettled.
fn take_ready(stream: &mut DeliveryStream) -> Vec<courier_core::Delivery> {
    let mut taken = Vec::new();
    while let Some(Some(delivery)) = stream.next().now_or_never() {
        taken.push(delivery.expect("delivery"));
    }
    taken
}

#[tokio::test]
async fn two_members_split_a_backlog_evenly() {
    let broker = MemoryBroker::new();
    let sub = Subscription::new("orders", "billing");
    assert_eq!(sub.prefetch_count(), 256, "the default prefetch");
    let mut first = broker.subscribe(sub.clone()).await.unwrap();
    let mut second = broker.subscribe(sub.clone()).await.unwrap();
    let batch = (0..300).map(|n| Message::new(format!("{n}"))).collect();
    broker.publish_batch("orders", batch).await.unwrap();

    // The first member to poll takes half, although its prefetch allows 256.
    let by_first = take_ready(&mut first);
    let by_second = take_ready(&mut second);
    assert_eq!((by_first.len(), by_second.len()), (150, 150));
}

#[tokio::test]
async fn a_member_takes_the_rest_while_the_other_is_busy() {
    let broker = MemoryBroker::new();
    let sub = Subscription::new("orders", "billing").prefetch(100);
    let mut busy = broker.subscribe(sub.clone()).await.unwrap();
    let mut free = broker.subscribe(sub.clone()).await.unwrap();
    let batch = (0..300).map(|n| Message::new(format!("{n}"))).collect();
    broker.publish_batch("orders", batch).await.unwrap();

    // The busy member fills its prefetch and settles nothing.
    let held = take_ready(&mut busy);
    assert_eq!(held.len(), 100);
    // The free member handles everything else, coming back for more.
    let mut handled = 0;
    loop {
        let taken = take_ready(&mut free);
        if taken.is_empty() {
            break;
        }
        handled += taken.len();
        for delivery in taken {
            delivery.ack().await.unwrap();
        }
    }
    assert_eq!(handled, 200);
    // Once the busy member's messages come back, the free member gets them.
    drop(held);
    drop(busy);
    let returned = take_ready(&mut free);
    assert_eq!(returned.len(), 100);
}
