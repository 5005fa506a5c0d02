//! The harness: adapters under test, their capabilities, test cases, and the
//! runner that turns each (adapter, case) pair into a named test.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use courier_core::{Broker, Delivery, DeliveryStream, Result};
use futures::StreamExt;
use futures::future::BoxFuture;
use libtest_mimic::{Arguments, Failed, Trial};

use crate::proxy::FaultProxy;

type ConnectFn = dyn Fn() -> BoxFuture<'static, Result<Broker>> + Send + Sync;
type RestartFn = dyn Fn() -> BoxFuture<'static, std::result::Result<(), String>> + Send + Sync;

/// A server the tests may restart, and how to connect to it. Usually not the
/// server the other cases share, since restarting that would disturb them.
#[derive(Clone)]
struct Restartable {
    connect: Arc<ConnectFn>,
    restart: Arc<RestartFn>,
    kill: Option<Arc<RestartFn>>,
}

/// A behaviour some brokers have and others lack. A case that needs a
/// capability the adapter does not declare is reported as ignored, with the
/// capability named, never passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Capability {
    /// A group created with `StartPosition::Earliest` receives messages
    /// published before it existed (memory, Kafka, JetStream; not RabbitMQ).
    History,
    /// `Delivery::delivery_count` is reported and exact.
    DeliveryCount,
    /// The test can stop and restart the broker (see [`Adapter::with_restart`]).
    Restart,
    /// The test can freeze the broker without closing its connections and
    /// let it go on (see [`Adapter::with_freeze`]).
    Freeze,
    /// After a freeze the broker serves the connections it had, so the
    /// same handle publishes and consumes again (the Kafka-protocol test
    /// broker does not: see the testing docs).
    ThawRecovery,
    /// A request nobody can receive fails at once with
    /// `RequestError::NoResponders` (memory, RabbitMQ, NATS; not Kafka,
    /// where it times out).
    NoResponders,
    /// The test can kill the restartable server (no clean shutdown) and
    /// start it again (see [`Adapter::with_kill`]).
    Kill,
    /// The test can put a [`FaultProxy`] between the adapter and its
    /// broker (see [`Adapter::with_proxy`]). Not Kafka: its clients reach
    /// the brokers at the addresses the metadata advertises, past any
    /// proxy.
    Proxy,
    /// A publish to a topic without any group fails (RabbitMQ returns it
    /// unroutable). Memory, Kafka and NATS keep it (as history, in the
    /// topic, in the stream), so a dead-letter copy there is never refused
    /// for want of a group.
    RefusesTopicsWithoutGroups,
    /// The test can connect a broker whose groups hold a few messages and
    /// refuse more at once (see [`Adapter::with_queue_limit`]): memory.
    QueueLimit,
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Capability::History => "history",
            Capability::DeliveryCount => "delivery-count",
            Capability::Restart => "restart",
            Capability::Freeze => "freeze",
            Capability::ThawRecovery => "thaw-recovery",
            Capability::NoResponders => "no-responders",
            Capability::Proxy => "proxy",
            Capability::Kill => "kill",
            Capability::RefusesTopicsWithoutGroups => "refuses-topics-without-groups",
            Capability::QueueLimit => "queue-limit",
        })
    }
}

/// A server the tests may freeze (`docker pause`) and thaw, and how to
/// connect to it with the short time bounds the fault cases check.
#[derive(Clone)]
struct Freezable {
    connect: Arc<ConnectFn>,
    freeze: Arc<RestartFn>,
    thaw: Arc<RestartFn>,
    bound: Duration,
}

type OptionsConnectFn =
    dyn Fn(Vec<(String, String)>) -> BoxFuture<'static, Result<Broker>> + Send + Sync;
type UpstreamFn = dyn Fn() -> BoxFuture<'static, Result<(String, String)>> + Send + Sync;
type ConnectUrlFn = dyn Fn(String) -> BoxFuture<'static, Result<Broker>> + Send + Sync;

/// A server the tests may reach through a [`FaultProxy`] of their own.
#[derive(Clone)]
struct Proxied {
    upstream: Arc<UpstreamFn>,
    connect: Arc<ConnectUrlFn>,
    bound: Duration,
}

/// An adapter under test: how to connect, what it can do, and how patient
/// the tests must be with it.
#[derive(Clone)]
pub struct Adapter {
    name: &'static str,
    capabilities: Vec<Capability>,
    connect: Arc<ConnectFn>,
    restart: Option<Restartable>,
    freeze: Option<Freezable>,
    proxy: Option<Proxied>,
    /// A broker whose groups refuse more than so many messages.
    queue_limit: Option<(usize, Arc<ConnectFn>)>,
    partitioned: Option<Arc<ConnectFn>>,
    with_options: Option<Arc<OptionsConnectFn>>,
    patience: Duration,
    quiet: Duration,
}

impl fmt::Debug for Adapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Adapter")
            .field("name", &self.name)
            .field("capabilities", &self.capabilities)
            .field("patience", &self.patience)
            .finish_non_exhaustive()
    }
}

impl Adapter {
    /// An adapter called `name` (the prefix of every test name), connecting
    /// a fresh [`Broker`] per test with `connect`.
    pub fn new<F, Fut>(name: &'static str, capabilities: &[Capability], connect: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Broker>> + Send + 'static,
    {
        Adapter {
            name,
            capabilities: capabilities.to_vec(),
            connect: Arc::new(move || Box::pin(connect())),
            restart: None,
            freeze: None,
            proxy: None,
            queue_limit: None,
            partitioned: None,
            with_options: None,
            patience: Duration::from_secs(15),
            quiet: Duration::from_millis(500),
        }
    }

    /// Lets restart cases run on a server of their own: `connect` reaches
    /// it and `restart` stops and starts it. Declares [`Capability::Restart`].
    pub fn with_restart<C, CFut, R, RFut>(mut self, connect: C, restart: R) -> Self
    where
        C: Fn() -> CFut + Send + Sync + 'static,
        CFut: Future<Output = Result<Broker>> + Send + 'static,
        R: Fn() -> RFut + Send + Sync + 'static,
        RFut: Future<Output = std::result::Result<(), String>> + Send + 'static,
    {
        self.restart = Some(Restartable {
            connect: Arc::new(move || Box::pin(connect())),
            restart: Arc::new(move || Box::pin(restart())),
            kill: None,
        });
        if !self.capabilities.contains(&Capability::Restart) {
            self.capabilities.push(Capability::Restart);
        }
        self
    }

    /// Lets fault cases run on a server of their own: `connect` reaches it
    /// with every operation bounded by `bound` (the URL's timeouts),
    /// `freeze` makes the server stop answering without closing its
    /// connections and `thaw` lets it go on. Declares [`Capability::Freeze`].
    pub fn with_freeze<C, CFut, F, FFut, T, TFut>(
        mut self,
        bound: Duration,
        connect: C,
        freeze: F,
        thaw: T,
    ) -> Self
    where
        C: Fn() -> CFut + Send + Sync + 'static,
        CFut: Future<Output = Result<Broker>> + Send + 'static,
        F: Fn() -> FFut + Send + Sync + 'static,
        FFut: Future<Output = std::result::Result<(), String>> + Send + 'static,
        T: Fn() -> TFut + Send + Sync + 'static,
        TFut: Future<Output = std::result::Result<(), String>> + Send + 'static,
    {
        self.freeze = Some(Freezable {
            connect: Arc::new(move || Box::pin(connect())),
            freeze: Arc::new(move || Box::pin(freeze())),
            thaw: Arc::new(move || Box::pin(thaw())),
            bound,
        });
        if !self.capabilities.contains(&Capability::Freeze) {
            self.capabilities.push(Capability::Freeze);
        }
        self
    }

    /// Lets cases kill the restartable server (see [`Adapter::with_restart`],
    /// which must come first) with `kill`, which also starts it again.
    /// Declares [`Capability::Kill`].
    ///
    /// # Panics
    ///
    /// Without [`Adapter::with_restart`] before it.
    pub fn with_kill<K, KFut>(mut self, kill: K) -> Self
    where
        K: Fn() -> KFut + Send + Sync + 'static,
        KFut: Future<Output = std::result::Result<(), String>> + Send + 'static,
    {
        let restartable = self
            .restart
            .as_mut()
            .expect("with_kill needs with_restart first: it kills the restartable server");
        restartable.kill = Some(Arc::new(move || Box::pin(kill())));
        if !self.capabilities.contains(&Capability::Kill) {
            self.capabilities.push(Capability::Kill);
        }
        self
    }

    /// Lets fault cases put a [`FaultProxy`] of their own between the
    /// adapter and a server: `upstream` gives the server's URL and the
    /// `host:port` in it the proxy forwards to; `connect` connects to a URL
    /// (the server's, with the proxy's address in place of the upstream
    /// one) with every operation bounded by `bound`. Declares
    /// [`Capability::Proxy`].
    pub fn with_proxy<U, UFut, C, CFut>(mut self, bound: Duration, upstream: U, connect: C) -> Self
    where
        U: Fn() -> UFut + Send + Sync + 'static,
        UFut: Future<Output = Result<(String, String)>> + Send + 'static,
        C: Fn(String) -> CFut + Send + Sync + 'static,
        CFut: Future<Output = Result<Broker>> + Send + 'static,
    {
        self.proxy = Some(Proxied {
            upstream: Arc::new(move || Box::pin(upstream())),
            connect: Arc::new(move |url| Box::pin(connect(url))),
            bound,
        });
        if !self.capabilities.contains(&Capability::Proxy) {
            self.capabilities.push(Capability::Proxy);
        }
        self
    }

    /// Lets cases connect, with `connect`, a broker whose groups hold at
    /// most `limit` messages and refuse more at once (a full dead-letter
    /// group, say). Declares [`Capability::QueueLimit`].
    pub fn with_queue_limit<C, CFut>(mut self, limit: usize, connect: C) -> Self
    where
        C: Fn() -> CFut + Send + Sync + 'static,
        CFut: Future<Output = Result<Broker>> + Send + 'static,
    {
        self.queue_limit = Some((limit, Arc::new(move || Box::pin(connect()))));
        if !self.capabilities.contains(&Capability::QueueLimit) {
            self.capabilities.push(Capability::QueueLimit);
        }
        self
    }

    /// Lets the cases in which the members of one group must share its
    /// messages connect with `connect`, whose new topics are split into
    /// several partitions. Needed where a partition goes to one member of a
    /// group at a time (Kafka: with one partition per topic one member gets
    /// everything); adapters whose groups share without partitions leave it
    /// out and those cases use the plain connection.
    pub fn with_partitioned<C, CFut>(mut self, connect: C) -> Self
    where
        C: Fn() -> CFut + Send + Sync + 'static,
        CFut: Future<Output = Result<Broker>> + Send + 'static,
    {
        self.partitioned = Some(Arc::new(move || Box::pin(connect())));
        self
    }

    /// Lets cases connect to the shared server with URL options of their
    /// own: `connect` gets the options (names and values, such as the
    /// shared `unroutable=drop`) and connects with them set on the URL
    /// (replacing the URL's own of the same name). See
    /// [`Ctx::broker_with_options`].
    pub fn with_options<F, Fut>(mut self, connect: F) -> Self
    where
        F: Fn(Vec<(String, String)>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Broker>> + Send + 'static,
    {
        self.with_options = Some(Arc::new(move |options| Box::pin(connect(options))));
        self
    }

    /// How long a case waits for an expected message before failing
    /// (default 15 s).
    pub fn with_patience(mut self, patience: Duration) -> Self {
        self.patience = patience;
        self
    }

    /// How long a case watches for a message that must not arrive
    /// (default 500 ms).
    pub fn with_quiet_period(mut self, quiet: Duration) -> Self {
        self.quiet = quiet;
        self
    }

    /// The adapter's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Whether the adapter declares `capability`.
    pub fn has(&self, capability: Capability) -> bool {
        self.capabilities.contains(&capability)
    }
}

/// One behaviour test, run against every adapter.
#[derive(Clone)]
pub struct Case {
    name: &'static str,
    needs: &'static [Capability],
    run: fn(Ctx) -> BoxFuture<'static, ()>,
}

impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Case")
            .field("name", &self.name)
            .field("needs", &self.needs)
            .finish_non_exhaustive()
    }
}

impl Case {
    /// A case called `name` that needs `needs` and runs `run`. Cases panic
    /// (`assert!`) to fail.
    pub const fn new(
        name: &'static str,
        needs: &'static [Capability],
        run: fn(Ctx) -> BoxFuture<'static, ()>,
    ) -> Self {
        Case { name, needs, run }
    }

    /// The case's name.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

/// What a running case gets: the adapter, unique names, and helpers.
#[derive(Debug, Clone)]
pub struct Ctx {
    adapter: Adapter,
    prefix: String,
    /// The case restarts its server, so it runs on the restartable one.
    restarts: bool,
    /// The case freezes its server, so it runs on the freezable one.
    freezes: bool,
}

impl Ctx {
    /// The adapter under test.
    pub fn adapter(&self) -> &Adapter {
        &self.adapter
    }

    /// A new broker connection.
    ///
    /// # Panics
    ///
    /// When connecting fails.
    pub async fn broker(&self) -> Broker {
        let connect = match (&self.adapter.restart, &self.adapter.freeze) {
            (Some(restartable), _) if self.restarts => &restartable.connect,
            (_, Some(freezable)) if self.freezes => &freezable.connect,
            _ => &self.adapter.connect,
        };
        connect()
            .await
            .unwrap_or_else(|e| panic!("{}: connect failed: {e} ({e:?})", self.adapter.name))
    }

    /// A new broker connection whose new topics are split into partitions
    /// (see [`Adapter::with_partitioned`]), or the plain one of
    /// [`Ctx::broker`] when the adapter shares a group without partitions.
    ///
    /// # Panics
    ///
    /// When connecting fails.
    pub async fn partitioned_broker(&self) -> Broker {
        let Some(connect) = &self.adapter.partitioned else {
            return self.broker().await;
        };
        connect().await.unwrap_or_else(|e| {
            panic!(
                "{}: connect (partitioned) failed: {e} ({e:?})",
                self.adapter.name
            )
        })
    }

    /// A new broker connection to the shared server with the URL `options`
    /// set (see [`Adapter::with_options`]).
    ///
    /// # Panics
    ///
    /// When the adapter has no such hook (a case that needs one says so),
    /// or connecting fails.
    pub async fn broker_with_options(&self, options: &[(&str, &str)]) -> Broker {
        let connect = self.adapter.with_options.as_ref().unwrap_or_else(|| {
            panic!(
                "{}: this case connects with URL options: declare Adapter::with_options",
                self.adapter.name
            )
        });
        let options = options
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect();
        connect(options)
            .await
            .unwrap_or_else(|e| panic!("{}: connect failed: {e} ({e:?})", self.adapter.name))
    }

    /// A topic or group name unique to this run of this case.
    pub fn name(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.prefix)
    }

    /// How long to wait for an expected message.
    pub fn patience(&self) -> Duration {
        self.adapter.patience
    }

    /// How long to watch for a message that must not arrive.
    pub fn quiet(&self) -> Duration {
        self.adapter.quiet
    }

    /// Restarts the broker.
    ///
    /// # Panics
    ///
    /// When the adapter has no restart hook or the restart fails.
    pub async fn restart_broker(&self) {
        let restartable = self
            .adapter
            .restart
            .as_ref()
            .expect("case declares Capability::Restart");
        (restartable.restart)()
            .await
            .unwrap_or_else(|e| panic!("{}: restart failed: {e}", self.adapter.name));
    }

    /// Kills the broker (no clean shutdown) and starts it again; returns
    /// once it answers.
    ///
    /// # Panics
    ///
    /// When the adapter has no kill hook or the kill or start fails.
    pub async fn kill_and_start_broker(&self) {
        let kill = self
            .adapter
            .restart
            .as_ref()
            .and_then(|restartable| restartable.kill.as_ref())
            .expect("case declares Capability::Kill");
        kill()
            .await
            .unwrap_or_else(|e| panic!("{}: kill failed: {e}", self.adapter.name));
    }

    /// Freezes the broker: it stops answering, its connections stay open.
    ///
    /// # Panics
    ///
    /// When the adapter has no freeze hook or freezing fails.
    pub async fn freeze_broker(&self) {
        let freezable = self.freezable();
        (freezable.freeze)()
            .await
            .unwrap_or_else(|e| panic!("{}: freeze failed: {e}", self.adapter.name));
    }

    /// Lets a frozen broker go on.
    ///
    /// # Panics
    ///
    /// When the adapter has no freeze hook or thawing fails.
    pub async fn thaw_broker(&self) {
        let freezable = self.freezable();
        (freezable.thaw)()
            .await
            .unwrap_or_else(|e| panic!("{}: thaw failed: {e}", self.adapter.name));
    }

    /// The bound every broker operation keeps on the freezable server's
    /// connections (see [`Adapter::with_freeze`]), or else on proxied ones
    /// (see [`Adapter::with_proxy`]).
    ///
    /// # Panics
    ///
    /// When the adapter has neither hook.
    pub fn fault_bound(&self) -> Duration {
        match (&self.adapter.freeze, &self.adapter.proxy) {
            (Some(freezable), _) if self.freezes => freezable.bound,
            (_, Some(proxied)) => proxied.bound,
            (Some(freezable), None) => freezable.bound,
            (None, None) => panic!("case declares Capability::Freeze or Capability::Proxy"),
        }
    }

    /// A new broker connection through a [`FaultProxy`] of this case's own,
    /// and the proxy. [`Ctx::broker`] reaches the same server directly.
    ///
    /// # Panics
    ///
    /// When the adapter has no proxy hook, or the proxy or the connection
    /// cannot be set up.
    pub async fn proxied_broker(&self) -> (Broker, FaultProxy) {
        let proxied = self
            .adapter
            .proxy
            .as_ref()
            .expect("case declares Capability::Proxy");
        let (url, upstream) = (proxied.upstream)()
            .await
            .unwrap_or_else(|e| panic!("{}: upstream failed: {e} ({e:?})", self.adapter.name));
        let proxy = FaultProxy::start(upstream)
            .await
            .unwrap_or_else(|e| panic!("{}: proxy failed to start: {e}", self.adapter.name));
        let broker = (proxied.connect)(proxy.proxied_url(&url))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{}: connect through the proxy failed: {e} ({e:?})",
                    self.adapter.name
                )
            });
        (broker, proxy)
    }

    /// A broker whose groups refuse more than the returned number of
    /// messages (see [`Adapter::with_queue_limit`]).
    ///
    /// # Panics
    ///
    /// When the adapter has no queue-limit hook or connecting fails.
    pub async fn queue_limited_broker(&self) -> (Broker, usize) {
        let (limit, connect) = self
            .adapter
            .queue_limit
            .as_ref()
            .expect("case declares Capability::QueueLimit");
        let broker = connect()
            .await
            .unwrap_or_else(|e| panic!("{}: connect failed: {e} ({e:?})", self.adapter.name));
        (broker, *limit)
    }

    fn freezable(&self) -> &Freezable {
        self.adapter
            .freeze
            .as_ref()
            .expect("case declares Capability::Freeze")
    }

    /// The next delivery, within the adapter's patience.
    ///
    /// # Panics
    ///
    /// When none arrives in time, the stream ends, or it yields an error.
    pub async fn next(&self, stream: &mut DeliveryStream) -> Delivery {
        crate::deliveries::next_within(stream, self.patience()).await
    }

    /// Asserts that nothing arrives within the quiet period.
    ///
    /// # Panics
    ///
    /// When a delivery (or an error) arrives.
    pub async fn expect_nothing(&self, stream: &mut DeliveryStream) {
        if let Ok(Some(item)) = tokio::time::timeout(self.quiet(), stream.next()).await {
            match item {
                Ok(d) => panic!("unexpected delivery {:?}", d.message()),
                Err(e) => panic!("unexpected stream error {e}"),
            }
        }
    }
}

/// Longest a single case may run before it is failed.
const CASE_LIMIT: Duration = Duration::from_secs(300);

/// The tests for every (adapter, case) pair, named `adapter::case`. Cases
/// whose capabilities the adapter lacks are ignored, with the missing
/// capability shown as the test's kind (`[lacks history]`).
pub fn trials(adapters: &[Adapter], cases: &[Case]) -> Vec<Trial> {
    let mut trials = Vec::new();
    for adapter in adapters {
        for case in cases {
            let missing: Vec<String> = case
                .needs
                .iter()
                .filter(|c| !adapter.has(**c))
                .map(ToString::to_string)
                .collect();
            let name = format!("{}::{}", adapter.name, case.name);
            let ctx = Ctx {
                adapter: adapter.clone(),
                prefix: unique_prefix(adapter.name, case.name),
                restarts: case.needs.contains(&Capability::Restart)
                    || case.needs.contains(&Capability::Kill),
                freezes: case.needs.contains(&Capability::Freeze),
            };
            let run = case.run;
            let lacks = missing.join(", ");
            let trial = Trial::test(name, move || {
                if !lacks.is_empty() {
                    return Err(Failed::from(format!("adapter lacks: {lacks}")));
                }
                let thaw = ctx.freezes.then(|| ctx.adapter.freeze.clone()).flatten();
                let outcome = run_case(ctx, run);
                if let (Err(_), Some(freezable)) = (&outcome, thaw) {
                    // A failed fault case may have left its server frozen.
                    thaw_after_failure(&freezable);
                }
                outcome
            });
            trials.push(if missing.is_empty() {
                trial
            } else {
                trial
                    .with_kind(format!("lacks {}", missing.join(", ")))
                    .with_ignored_flag(true)
            });
        }
    }
    trials
}

fn run_case(ctx: Ctx, run: fn(Ctx) -> BoxFuture<'static, ()>) -> std::result::Result<(), Failed> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failed::from(format!("tokio runtime: {e}")))?;
    let outcome = runtime.block_on(async { tokio::time::timeout(CASE_LIMIT, run(ctx)).await });
    runtime.shutdown_timeout(Duration::from_secs(5));
    outcome.map_err(|_| Failed::from(format!("case did not finish within {CASE_LIMIT:?}")))
}

/// Lets the freezable server go on after a case that failed while it was
/// frozen, so the next fault case finds it answering (an error because it
/// was not frozen is expected and ignored).
fn thaw_after_failure(freezable: &Freezable) {
    if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        let _ = runtime.block_on((freezable.thaw)());
    }
}

/// Installs a subscriber printing what `COURIER_TEST_LOG` selects, unless
/// it is empty or the test binary installed one of its own.
fn log_to_stderr() {
    let spec = std::env::var("COURIER_TEST_LOG").unwrap_or_default();
    if spec.is_empty() || tracing::dispatcher::has_been_set() {
        return;
    }
    match crate::log_lines::print_to(&spec, std::io::stderr) {
        Ok(true) => {}
        Ok(false) => eprintln!("COURIER_TEST_LOG: a subscriber is already installed"),
        Err(e) => eprintln!("COURIER_TEST_LOG={spec}: {e}"),
    }
}

fn unique_prefix(adapter: &str, case: &str) -> String {
    let id = courier_core::MessageId::new().to_string();
    let tail: String = id
        .chars()
        .filter(char::is_ascii_hexdigit)
        .skip(20)
        .collect();
    let case: String = case.chars().take(40).collect();
    format!("ct-{adapter}-{case}-{tail}").replace('_', "-")
}

/// Runs `cases` against `adapters` as a test binary (`harness = false`):
/// parses the usual `cargo test` arguments, prints each adapter's declared
/// capabilities, runs, and prints the summary. Cases run one at a time
/// unless `--test-threads` is given.
///
/// `COURIER_TEST_LOG` (e.g. `rdkafka=info,courier_kafka=debug`) prints the
/// log lines of the targets it names to standard error, with the time.
pub fn run(adapters: &[Adapter], cases: &[Case]) -> ExitCode {
    log_to_stderr();
    let mut args = Arguments::from_args();
    // One case at a time unless `--test-threads` says otherwise: on a
    // small machine, cases running side by side against the same servers
    // starve each other (the Kafka-protocol test broker then stalled a
    // consumer group for over 30 s), and a case's waits measure the broker,
    // not its neighbour.
    if args.test_threads.is_none() {
        args.test_threads = Some(1);
    }
    for adapter in adapters {
        let declared: HashMap<_, _> = adapter.capabilities.iter().map(|c| (*c, ())).collect();
        let all = [
            Capability::History,
            Capability::DeliveryCount,
            Capability::Restart,
            Capability::Freeze,
            Capability::ThawRecovery,
            Capability::NoResponders,
            Capability::Proxy,
            Capability::Kill,
            Capability::RefusesTopicsWithoutGroups,
            Capability::QueueLimit,
        ];
        let lacks: Vec<String> = all
            .iter()
            .filter(|c| !declared.contains_key(c))
            .map(ToString::to_string)
            .collect();
        if lacks.is_empty() {
            eprintln!(
                "conformance: adapter `{}` declares every capability",
                adapter.name
            );
        } else {
            eprintln!(
                "conformance: adapter `{}` lacks [{}]; cases needing those are ignored",
                adapter.name,
                lacks.join(", ")
            );
        }
    }
    libtest_mimic::run(&args, trials(adapters, cases)).exit_code()
}
