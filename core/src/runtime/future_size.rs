//! Keeps the per-delivery future small: it is moved into its place (the
//! dispatcher's own future, or a heap slot) once per message, so every
//! byte of it is copied per message.

use std::mem::size_of;
use std::sync::Arc;

use super::handler::BoxHandler;
use super::process::process;
use super::shared::Running;
use crate::delivery::Delivery;

/// Most bytes the per-delivery future may take. It takes 576 now (rustc
/// 1.95); with the wait for a handler that does not finish at once (and
/// its shutdown-deadline future) inline rather than boxed, it took 720;
/// acking through `Delivery::ack` (whose future holds the delivery twice)
/// made that 840, and as an `async fn` besides (holding its arguments
/// twice) it took 1032.
const MOST: usize = 640;

/// A value of any type, never made: only the types below matter.
fn never<T>() -> T {
    unreachable!("only the type is used")
}

/// The size of what `make` returns, without calling it.
fn size_of_output<R>(_make: impl FnOnce() -> R) -> usize {
    size_of::<R>()
}

#[test]
fn the_per_delivery_future_stays_small() {
    let borrowed = size_of_output(|| {
        process(
            never::<&'static Running<BoxHandler>>(),
            never::<Delivery>(),
            None,
        )
    });
    let owned = size_of_output(|| {
        process(
            never::<Arc<Running<BoxHandler>>>(),
            never::<Delivery>(),
            None,
        )
    });
    for size in [borrowed, owned] {
        assert!(
            size <= MOST,
            "the per-delivery future takes {size} bytes (at most {MOST})"
        );
    }
}
