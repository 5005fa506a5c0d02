//! What the consumer runtime allocates per message, and that its memory
//! stays flat over a million messages, on the in-process broker.
//!
//! ```text
//! cargo bench -p courier-memory --bench runtime_memory               # 1,000,000 messages
//! cargo bench -p courier-memory --bench runtime_memory -- 200000     # or any count
//! ```
//!
//! Part 1 counts heap allocations (through a counting global allocator)
//! while 100,000 messages published beforehand are consumed: by a bare
//! subscribe-and-ack loop, and by the runtime with a no-op raw handler at
//! concurrency 1, at concurrency 16 without keys and with 16 keys.
//!
//! Part 2 pushes the messages through the runtime (concurrency 16, 16
//! keys) while a publisher keeps at most two batches of 1,000 ahead of the
//! handler, and samples the process's resident memory (`/proc/self/statm`)
//! every tenth of the run
//! ([`courier_testkit::bench_resident`], the run every broker adapter's
//! `runtime_memory` bench makes). The growth after the first tenth must
//! stay within what the prefetch can hold; the bench exits with an error
//! if it grows by more than 16 MiB.

use courier_core::runtime::{Consumer, RetryPolicy};
use courier_core::{Broker, Message, Subscription};
use courier_memory::MemoryBroker;
use courier_testkit::bench_resident::resident_bench;
use futures::StreamExt;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

mod common;

use common::{Counting, multi_thread};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

const PAYLOAD: [u8; 64] = [0x2a; 64];
const KEYS: usize = 16;
const COUNTED: usize = 100_000;
const BATCH: usize = 1_000;

#[derive(Debug, Clone, Copy)]
enum Case {
    Bare,
    Runtime { concurrency: usize, keyed: bool },
}

impl Case {
    fn label(self) -> String {
        match self {
            Case::Bare => "bare subscribe+ack".to_owned(),
            Case::Runtime {
                concurrency,
                keyed: false,
            } => format!("runtime c={concurrency}"),
            Case::Runtime {
                concurrency,
                keyed: true,
            } => format!("runtime c={concurrency} keys={KEYS}"),
        }
    }
}

fn message(i: usize, keyed: bool) -> Message {
    let message = Message::new(&PAYLOAD[..]);
    if keyed {
        message.with_key(format!("key-{}", i % KEYS))
    } else {
        message
    }
}

async fn loaded_broker(messages: usize, keyed: bool) -> (Broker, Subscription) {
    let broker = MemoryBroker::with_config(common::bench_config()).into_broker();
    let sub = Subscription::new("bench", "bench");
    broker.provision(&sub).await.expect("provision");
    for start in (0..messages).step_by(BATCH) {
        let batch = (start..(start + BATCH).min(messages))
            .map(|i| message(i, keyed))
            .collect();
        broker.publish_batch("bench", batch).await.expect("publish");
    }
    (broker, sub)
}

/// Heap allocations per consumed message.
async fn allocations(case: Case) -> f64 {
    let keyed = matches!(case, Case::Runtime { keyed: true, .. });
    let (broker, sub) = loaded_broker(COUNTED, keyed).await;
    let region = Region::new(GLOBAL);
    match case {
        Case::Bare => {
            let mut stream = broker.subscribe(sub.prefetch(32)).await.expect("subscribe");
            for _ in 0..COUNTED {
                let delivery = stream.next().await.expect("open").expect("delivery");
                delivery.ack().await.expect("ack");
            }
        }
        Case::Runtime { concurrency, .. } => {
            let (counting, handler) = Counting::handler(COUNTED);
            let consumer = Consumer::builder(&broker, sub, handler)
                .concurrency(concurrency)
                .retry(RetryPolicy::none())
                .start()
                .await
                .expect("start");
            counting.last.notified().await;
            while consumer.metrics().snapshot().handled < COUNTED as u64 {
                tokio::task::yield_now().await;
            }
            consumer.shutdown().await.expect("shutdown");
        }
    }
    region.change().allocations as f64 / COUNTED as f64
}

fn main() {
    let rt = multi_thread(2);
    println!(
        "heap allocations per consumed message (courier-memory, {COUNTED} messages of {} bytes, \
         no-op handler)",
        PAYLOAD.len()
    );
    rt.block_on(async {
        // Warm-up: lazily initialised statics, thread-locals, pools.
        allocations(Case::Runtime {
            concurrency: 16,
            keyed: true,
        })
        .await;
        for case in [
            Case::Bare,
            Case::Runtime {
                concurrency: 1,
                keyed: false,
            },
            Case::Runtime {
                concurrency: 16,
                keyed: false,
            },
            Case::Runtime {
                concurrency: 16,
                keyed: true,
            },
        ] {
            println!("  {:<28} {:>6.2}", case.label(), allocations(case).await);
        }
    });
    // Part 2: the run every broker adapter's `runtime_memory` bench makes.
    resident_bench("memory", || async {
        MemoryBroker::with_config(common::bench_config()).into_broker()
    });
}
