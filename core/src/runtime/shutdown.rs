//! Triggering a consumer's graceful shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::sync::CancellationToken;

/// Asks a running consumer to shut down gracefully; see
/// [`Consumer::run`](super::Consumer::run) for the two phases. Cheap to
/// clone; triggering twice is harmless.
#[derive(Debug, Clone, Default)]
pub struct ShutdownHandle {
    pub(crate) token: CancellationToken,
    /// Set with the token; cheaper to read on every delivery.
    pub(crate) flag: Arc<AtomicBool>,
}

impl ShutdownHandle {
    /// A handle not yet triggered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts the shutdown. Returns at once; await
    /// [`Consumer::run`](super::Consumer::run)'s future to know when it is done.
    pub fn shutdown(&self) {
        self.flag.store(true, Ordering::Release);
        self.token.cancel();
    }

    /// Whether the shutdown was triggered.
    pub fn is_shutdown(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// Completes once the shutdown is triggered.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only watches.
    pub async fn triggered(&self) {
        self.token.cancelled().await;
    }
}

/// Completes on SIGINT (Ctrl-C) or, on Unix, SIGTERM.
///
/// # Cancel safety
///
/// Cancel safe; the signal handlers stay installed for the process.
pub async fn signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}
