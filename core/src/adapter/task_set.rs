//! The detached tasks of one broker connection (a delayed requeue, a
//! dead-letter publish, a reply reader), so that closing the connection
//! waits for them instead of leaving them to outlive it.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::{Error, Result};

/// Detached tasks of a broker connection, each named by what it does;
/// [`TaskSet::close_within`] waits for them. Cheap to clone: clones share
/// the set.
#[derive(Debug, Clone, Default)]
pub struct TaskSet {
    tracker: TaskTracker,
    closing: CancellationToken,
    running: Arc<Counts>,
}

impl TaskSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `task` on the current Tokio runtime as a member of the set.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime, as [`tokio::spawn`]; use
    /// [`TaskSet::spawn_on`] where that can happen.
    pub fn spawn<F>(&self, what: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.spawn_on(what, task, &Handle::current());
    }

    /// Runs `task` on `runtime` as a member of the set.
    pub fn spawn_on<F>(&self, what: &'static str, task: F, runtime: &Handle)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let running = Running::start(self.running.clone(), what);
        self.tracker.spawn_on(
            async move {
                task.await;
                drop(running);
            },
            runtime,
        );
    }

    /// Runs `task` on `runtime` as a member of the set until it finishes
    /// or closing begins, whichever comes first: for waits that closing
    /// makes pointless (a delayed redelivery on a subscription that ends).
    pub fn spawn_until_close<F>(&self, what: &'static str, task: F, runtime: &Handle)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let closing = self.closing.clone();
        let cancellable = async move {
            tokio::select! {
                () = closing.cancelled() => {}
                () = task => {}
            }
        };
        self.spawn_on(what, cancellable, runtime);
    }

    /// How many tasks of the set have not finished yet.
    pub fn pending(&self) -> usize {
        self.tracker.len()
    }

    /// Waits until every task of the set (also those started meanwhile)
    /// has finished, for at most `bound`.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] naming the operation `close` when tasks are
    /// still running after `bound`; which ones is logged as a warning.
    pub async fn close_within(&self, bound: Duration) -> Result<()> {
        self.closing.cancel();
        self.tracker.close();
        if tokio::time::timeout(bound, self.tracker.wait())
            .await
            .is_ok()
        {
            return Ok(());
        }
        let unfinished = self.running.snapshot();
        tracing::warn!(
            ?unfinished,
            after = ?bound,
            "closing gave up waiting for the connection's tasks"
        );
        Err(Error::Timeout {
            operation: "close",
            after: bound,
        })
    }

    /// The tasks not finished yet, by what they do.
    pub fn unfinished(&self) -> BTreeMap<&'static str, usize> {
        self.running.snapshot()
    }
}

/// One running task, counted under its name until dropped (also when the
/// task is cancelled with its runtime).
struct Running {
    counts: Arc<Counts>,
    what: &'static str,
}

impl Running {
    fn start(counts: Arc<Counts>, what: &'static str) -> Self {
        counts.add(what, 1);
        Running { counts, what }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.counts.add(self.what, -1);
    }
}

/// Running tasks per name.
#[derive(Debug, Default)]
struct Counts(Mutex<BTreeMap<&'static str, usize>>);

impl Counts {
    fn add(&self, what: &'static str, change: isize) {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(what).or_default();
        *count = count.saturating_add_signed(change);
        if *count == 0 {
            counts.remove(what);
        }
    }

    fn snapshot(&self) -> BTreeMap<&'static str, usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn close_waits_for_the_tasks() {
        let tasks = TaskSet::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tasks.spawn("delayed requeue", async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = tx.send(());
        });
        assert_eq!(tasks.unfinished().get("delayed requeue"), Some(&1));
        tasks.close_within(Duration::from_secs(5)).await.unwrap();
        rx.await.expect("the task finished before close returned");
        assert_eq!(tasks.pending(), 0);
        assert!(tasks.unfinished().is_empty());
    }

    #[tokio::test]
    async fn close_ends_the_waits_it_makes_pointless() {
        let tasks = TaskSet::new();
        tasks.spawn_until_close(
            "delayed redelivery",
            tokio::time::sleep(Duration::from_secs(3600)),
            &Handle::current(),
        );
        assert_eq!(tasks.pending(), 1);
        tasks.close_within(Duration::from_secs(5)).await.unwrap();
        assert_eq!(tasks.pending(), 0);
    }

    #[tokio::test]
    async fn close_reports_a_task_that_does_not_finish() {
        let tasks = TaskSet::new();
        tasks.spawn("dead-letter publish", std::future::pending());
        let error = tasks
            .close_within(Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(
            matches!(error, Error::Timeout { operation: "close", after } if after == Duration::from_millis(50)),
            "{error:?}"
        );
        assert_eq!(tasks.unfinished().get("dead-letter publish"), Some(&1));
    }
}
