//! A fault-injecting TCP proxy for tests: put it between a client and its
//! broker and make the network misbehave on command.
//!
//! [`FaultProxy::start`] listens on a free local port and forwards every
//! connection to the upstream address. While it runs, a test can
//!
//! - [`black_hole`](FaultProxy::black_hole) it: connections stay open, but
//!   nothing is read or forwarded either way and new connections are
//!   accepted without being connected upstream (a frozen VM, a network
//!   partition that drops packets); [`heal`](FaultProxy::heal) lets
//!   everything held go on;
//! - [`reset_all`](FaultProxy::reset_all): every open connection is closed
//!   with a TCP reset on both sides (a broker or load balancer restart);
//!   new connections are accepted as before;
//! - add [`latency`](FaultProxy::set_latency) to every chunk in each
//!   direction (chunks stay in order and in flight together, as on a long
//!   link), and limit the [`bandwidth`](FaultProxy::set_bandwidth) of each
//!   direction of each connection.
//!
//! ```
//! use courier_testkit::proxy::FaultProxy;
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! // An echo server stands in for the broker.
//! let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//! let upstream_address = upstream.local_addr().unwrap();
//! tokio::spawn(async move {
//!     let (mut socket, _) = upstream.accept().await.unwrap();
//!     let mut buffer = [0; 5];
//!     socket.read_exact(&mut buffer).await.unwrap();
//!     socket.write_all(&buffer).await.unwrap();
//! });
//! let proxy = FaultProxy::start(upstream_address.to_string()).await.unwrap();
//! let mut client = tokio::net::TcpStream::connect(proxy.address()).await.unwrap();
//! client.write_all(b"hello").await.unwrap();
//! let mut echoed = [0; 5];
//! client.read_exact(&mut echoed).await.unwrap();
//! assert_eq!(&echoed, b"hello");
//! # });
//! ```
//!
//! The proxy is the test's own: dropping it stops it and closes every
//! connection it holds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// How much a pump reads at once.
const CHUNK: usize = 16 * 1024;
/// Chunks read but not yet written, per direction (they carry latency).
const IN_FLIGHT: usize = 256;

/// What the proxy does to the traffic; [`Faults::default`] passes it on
/// untouched.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// Nothing is read or forwarded; connections stay open.
    pub black_hole: bool,
    /// Added to every chunk in each direction.
    pub latency: Duration,
    /// Bytes per second per direction of each connection; `None` for no
    /// limit.
    pub bandwidth: Option<u64>,
}

/// A running proxy; see the [module docs](self).
#[derive(Debug)]
pub struct FaultProxy {
    address: SocketAddr,
    upstream: String,
    shared: Arc<Shared>,
    tasks: JoinSet<()>,
}

#[derive(Debug)]
struct Shared {
    faults: watch::Sender<Faults>,
    /// Bumped by every [`FaultProxy::reset_all`]; a connection resets when
    /// it changes.
    resets: watch::Sender<u64>,
    connections: AtomicU64,
    open: AtomicU64,
    forwarded: AtomicU64,
}

impl FaultProxy {
    /// Starts a proxy on a free port of 127.0.0.1 forwarding to `upstream`
    /// (`host:port`), passing traffic on untouched.
    ///
    /// # Errors
    ///
    /// The local port cannot be bound.
    pub async fn start(upstream: impl Into<String>) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let upstream = upstream.into();
        let shared = Arc::new(Shared {
            faults: watch::Sender::new(Faults::default()),
            resets: watch::Sender::new(0),
            connections: AtomicU64::new(0),
            open: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
        });
        let mut tasks = JoinSet::new();
        tasks.spawn(accept(listener, upstream.clone(), shared.clone()));
        Ok(FaultProxy {
            address,
            upstream,
            shared,
            tasks,
        })
    }

    /// Where clients connect.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Where the proxy forwards to.
    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// `url` with the upstream address replaced by the proxy's, e.g.
    /// `amqp://guest:guest@127.0.0.1:5672/%2f` for upstream
    /// `127.0.0.1:5672` becomes the same URL on the proxy's port.
    ///
    /// # Panics
    ///
    /// If `url` does not contain the upstream address.
    pub fn proxied_url(&self, url: &str) -> String {
        assert!(
            url.contains(&self.upstream),
            "{url} does not reach the proxy's upstream {}",
            self.upstream
        );
        url.replacen(&self.upstream, &self.address.to_string(), 1)
    }

    /// The faults in force.
    pub fn faults(&self) -> Faults {
        *self.shared.faults.borrow()
    }

    /// Sets every fault at once.
    pub fn set_faults(&self, faults: Faults) {
        self.shared.faults.send_replace(faults);
    }

    /// Stops all traffic, keeping connections open.
    pub fn black_hole(&self) {
        self.shared.faults.send_modify(|f| f.black_hole = true);
    }

    /// Clears every fault: traffic held by a black hole goes on.
    pub fn heal(&self) {
        self.set_faults(Faults::default());
    }

    /// Adds `latency` to every chunk in each direction.
    pub fn set_latency(&self, latency: Duration) {
        self.shared.faults.send_modify(|f| f.latency = latency);
    }

    /// Limits each direction of each connection to `bytes_per_second`
    /// (`None`: no limit).
    pub fn set_bandwidth(&self, bytes_per_second: Option<u64>) {
        self.shared
            .faults
            .send_modify(|f| f.bandwidth = bytes_per_second);
    }

    /// Closes every open connection with a TCP reset on both sides and
    /// returns how many there were. New connections are taken as before.
    pub fn reset_all(&self) -> u64 {
        let open = self.shared.open.load(Ordering::Acquire);
        self.shared
            .resets
            .send_modify(|generation| *generation += 1);
        open
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Acquire)
    }

    /// Connections open now.
    pub fn open_connections(&self) -> u64 {
        self.shared.open.load(Ordering::Acquire)
    }

    /// Bytes forwarded so far, both directions together.
    pub fn forwarded_bytes(&self) -> u64 {
        self.shared.forwarded.load(Ordering::Acquire)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // Connections end with the accept task (they run in its JoinSet).
        self.tasks.abort_all();
    }
}

async fn accept(listener: TcpListener, upstream: String, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                shared.connections.fetch_add(1, Ordering::AcqRel);
                connections.spawn(serve(client, upstream.clone(), shared.clone()));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// One client connection: connected upstream once no black hole holds it,
/// then pumped both ways until either side closes or a reset comes.
async fn serve(mut client: TcpStream, upstream: String, shared: Arc<Shared>) {
    let mut resets = shared.resets.subscribe();
    resets.borrow_and_update();
    let _ = client.set_nodelay(true);
    shared.open.fetch_add(1, Ordering::AcqRel);
    let _open = OpenGuard(&shared);
    let connected = tokio::select! {
        connected = async {
            wait_open(&shared).await;
            TcpStream::connect(&upstream).await
        } => connected,
        _ = resets.changed() => {
            let _ = client.set_zero_linger();
            return;
        }
    };
    let Ok(mut server) = connected else {
        let _ = client.set_zero_linger();
        return;
    };
    let _ = server.set_nodelay(true);
    let reset = {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        let both = async {
            tokio::join!(
                pump(client_read, server_write, &shared),
                pump(server_read, client_write, &shared),
            )
        };
        tokio::select! {
            _ = both => false,
            _ = resets.changed() => true,
        }
    };
    if reset {
        // Dropped with a zero linger: the peers see a reset, not a close.
        let _ = client.set_zero_linger();
        let _ = server.set_zero_linger();
    }
}

struct OpenGuard<'a>(&'a Shared);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Waits until no black hole holds the traffic.
async fn wait_open(shared: &Shared) {
    let mut faults = shared.faults.subscribe();
    let _ = faults.wait_for(|f| !f.black_hole).await;
}

/// One direction: a reader stamps each chunk with when it may be written
/// (now + latency), a writer writes it then, paced by the bandwidth.
async fn pump(mut from: ReadHalf<'_>, mut to: WriteHalf<'_>, shared: &Shared) {
    let (chunks, mut due_chunks) = mpsc::channel::<(Instant, Vec<u8>)>(IN_FLIGHT);
    let read = async move {
        loop {
            wait_open(shared).await;
            let mut chunk = vec![0; CHUNK];
            match from.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(read) => {
                    chunk.truncate(read);
                    let due = Instant::now() + shared.faults.borrow().latency;
                    if chunks.send((due, chunk)).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let write = async move {
        while let Some((due, chunk)) = due_chunks.recv().await {
            tokio::time::sleep_until(due).await;
            wait_open(shared).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
            shared
                .forwarded
                .fetch_add(chunk.len() as u64, Ordering::AcqRel);
            let bandwidth = shared.faults.borrow().bandwidth;
            if let Some(bytes_per_second) = bandwidth.filter(|b| *b > 0) {
                tokio::time::sleep(Duration::from_secs_f64(
                    chunk.len() as f64 / bytes_per_second as f64,
                ))
                .await;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream that echoes every connection until it closes.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let (mut read, mut write) = socket.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        address
    }

    async fn round_trip(client: &mut TcpStream, payload: &[u8]) -> std::io::Result<Vec<u8>> {
        client.write_all(payload).await?;
        let mut echoed = vec![0; payload.len()];
        client.read_exact(&mut echoed).await?;
        Ok(echoed)
    }

    const BOUND: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn passes_traffic_and_counts_it() {
        let proxy = FaultProxy::start(echo_server().await.to_string())
            .await
            .unwrap();
        let mut client = TcpStream::connect(proxy.address()).await.unwrap();
        let payload = vec![42; 100_000];
        let echoed = tokio::time::timeout(BOUND, round_trip(&mut client, &payload))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(echoed, payload);
        assert_eq!(proxy.forwarded_bytes(), 200_000);
        assert_eq!(proxy.connections(), 1);
    }

    #[tokio::test]
    async fn black_hole_holds_everything_until_healed() {
        let proxy = FaultProxy::start(echo_server().await.to_string())
            .await
            .unwrap();
        let mut client = TcpStream::connect(proxy.address()).await.unwrap();
        assert_eq!(round_trip(&mut client, b"before").await.unwrap(), b"before");
        proxy.black_hole();
        client.write_all(b"held").await.unwrap();
        let mut echoed = [0; 4];
        // Nothing comes back while the black hole holds (a read that
        // returned would be data or a close, both wrong).
        let held =
            tokio::time::timeout(Duration::from_millis(300), client.read_exact(&mut echoed)).await;
        assert!(held.is_err(), "the black hole let {held:?} through");
        // A new connection is accepted but not answered either.
        let mut late = TcpStream::connect(proxy.address()).await.unwrap();
        late.write_all(b"late").await.unwrap();
        proxy.heal();
        tokio::time::timeout(BOUND, client.read_exact(&mut echoed))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&echoed, b"held");
        tokio::time::timeout(BOUND, late.read_exact(&mut echoed))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&echoed, b"late");
    }

    #[tokio::test]
    async fn reset_closes_open_connections_and_takes_new_ones() {
        let proxy = FaultProxy::start(echo_server().await.to_string())
            .await
            .unwrap();
        let mut client = TcpStream::connect(proxy.address()).await.unwrap();
        assert_eq!(round_trip(&mut client, b"one").await.unwrap(), b"one");
        assert_eq!(proxy.reset_all(), 1);
        let mut buffer = [0; 1];
        let after = tokio::time::timeout(BOUND, client.read(&mut buffer))
            .await
            .unwrap();
        let error = after.expect_err("a reset connection reads an error, not a close");
        assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset);
        let mut again = TcpStream::connect(proxy.address()).await.unwrap();
        assert_eq!(round_trip(&mut again, b"two").await.unwrap(), b"two");
    }

    #[tokio::test]
    async fn latency_delays_each_direction_and_bandwidth_paces() {
        let proxy = FaultProxy::start(echo_server().await.to_string())
            .await
            .unwrap();
        let mut client = TcpStream::connect(proxy.address()).await.unwrap();
        proxy.set_latency(Duration::from_millis(100));
        let started = std::time::Instant::now();
        round_trip(&mut client, b"slow").await.unwrap();
        // Two directions, 100 ms each: the proxy cannot be faster.
        assert!(started.elapsed() >= Duration::from_millis(200));
        proxy.set_latency(Duration::ZERO);
        proxy.set_bandwidth(Some(100_000));
        let started = std::time::Instant::now();
        round_trip(&mut client, &vec![1; 50_000]).await.unwrap();
        // 50 kB each way at 100 kB/s, chunks paced after they are written:
        // at least the chunks before the last one wait.
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(
            proxy.faults(),
            Faults {
                black_hole: false,
                latency: Duration::ZERO,
                bandwidth: Some(100_000)
            }
        );
    }
}
