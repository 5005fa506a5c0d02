//! Serving an axum router on a port, stopped with its handle.

use std::net::SocketAddr;

use axum::http::HeaderMap;
use courier::telemetry::{TRACEPARENT, TraceContext};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::error::Result;

/// An HTTP server running in the background.
#[derive(Debug)]
pub struct HttpServer {
    address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl HttpServer {
    /// Binds `address` (`127.0.0.1:0` for any free port) and serves
    /// `router` until [`HttpServer::shutdown`].
    ///
    /// # Errors
    ///
    /// [`Error::Io`](crate::Error::Io) when the address cannot be bound.
    pub async fn start(address: &str, router: axum::Router) -> Result<Self> {
        let listener = TcpListener::bind(address).await?;
        let address = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
        });
        Ok(HttpServer {
            address,
            stop: Some(stop),
            task,
        })
    }

    /// The bound address.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Stops taking connections, lets the open requests finish and waits.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// The trace a request belongs to: the caller's W3C `traceparent`
/// header, or a new trace started here.
pub fn trace_of(headers: &HeaderMap) -> TraceContext {
    headers
        .get(TRACEPARENT)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| TraceContext::parse(value, None))
        .unwrap_or_else(TraceContext::new_root)
}
