//! `edgekit dns serve`: recursive DNS over UDP and TCP in front of the [`Resolver`].
//!
//! Every query first goes through [`parse_query`] and the [`PacketCache`]: a hit is answered
//! from cached wire bytes without touching the engine. A miss becomes a task that runs the
//! resolver, encodes the answer once, stores it in the packet cache and sends it; identical
//! questions that arrive meanwhile wait on that same resolution. Resolutions are bounded, and
//! a miss past the bound is answered SERVFAIL at once instead of queueing.

mod config;
mod failure_recheck;
mod rate_limit;
mod request_check;
mod respond;
mod special_use;
mod stats;
mod udp;

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, mpsc, watch},
    task::JoinHandle,
};

pub use config::{Network, NetworkParseError, ServerConfig, ServerConfigError};
pub use request_check::{RequestPathViolation, check_request_path};
pub use stats::ServerStatsSnapshot;

use crate::{
    packet_cache::{PacketCache, PacketCacheConfig, PacketCacheConfigError, parse_query},
    resolver::Resolver,
    wire::frame_tcp,
};
use respond::{
    ClientQuery, HEADER_LEN, RCODE_FORMERR, RCODE_NOTIMP, RCODE_REFUSED, badvers_reply,
    error_reply, finish, personalise, servfail_template,
};
use stats::Counters;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A `[server]` setting is unusable.
    #[error(transparent)]
    Config(#[from] ServerConfigError),
    /// The packet cache settings are unusable.
    #[error(transparent)]
    PacketCache(#[from] PacketCacheConfigError),
    /// A socket could not be bound.
    #[error("cannot listen on {address} ({protocol}): {source}")]
    Bind {
        /// The listen address.
        address: SocketAddr,
        /// "udp" or "tcp".
        protocol: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// A UDP worker thread could not be started.
    #[error("cannot start a UDP worker thread: {0}")]
    Thread(io::Error),
}

/// A running server. [`DnsServer::shutdown`] stops it and waits for answers in flight.
#[derive(Debug)]
pub struct DnsServer {
    core: Arc<Core>,
    udp_addresses: Vec<SocketAddr>,
    tcp_addresses: Vec<SocketAddr>,
    metrics_address: Option<SocketAddr>,
    /// The configuration running, to tell what a reload cannot change.
    config: Mutex<ServerConfig>,
    listeners: Vec<JoinHandle<()>>,
    /// One blocking thread per UDP socket (see `udp.rs`); they stop when `udp_stop` is set.
    udp_threads: Vec<std::thread::JoinHandle<()>>,
    udp_stop: Arc<AtomicBool>,
    shutdown: watch::Sender<bool>,
    in_flight: Arc<()>,
}

impl DnsServer {
    /// Bind every listen address (UDP and TCP on the same port) and start serving with
    /// `resolver`. Must be called inside a tokio runtime.
    pub async fn start(config: ServerConfig, resolver: Resolver) -> Result<Self, ServerError> {
        config.validate()?;
        let cache = PacketCache::new(PacketCacheConfig {
            max_bytes: config.packet_cache_bytes,
            keep_expired: Duration::from_secs(u64::from(config.serve_stale_max_seconds)),
            ..PacketCacheConfig::default()
        })?;
        let resolution_timeout =
            Duration::from_millis(resolver.config().resolution_timeout_ms) + Duration::from_secs(1);
        let counters = Counters::new();
        let registry = counters.registry();
        let core = Arc::new(Core {
            resolver,
            cache,
            policy: parking_lot::RwLock::new(Arc::new(Policy::from_config(&config))),
            policy_generation: AtomicU64::new(0),
            runtime: tokio::runtime::Handle::current(),
            rate_limiter: (config.rate_limit_per_client > 0).then(|| {
                let burst = match config.rate_limit_burst {
                    0 => config.rate_limit_per_client,
                    burst => burst,
                };
                rate_limit::RateLimiter::new(config.rate_limit_per_client, burst)
            }),
            counters,
            registry,
            inflight: Mutex::new(HashMap::new()),
            failed_refreshes: failure_recheck::FailureRecheck::default(),
            resolutions: Arc::new(Semaphore::new(config.max_concurrent_resolutions)),
            pending: AtomicUsize::new(0),
            max_pending: config.max_pending_queries,
            max_udp_payload: usize::from(config.max_udp_payload),
            resolution_timeout,
        });
        let (shutdown, _) = watch::channel(false);
        let in_flight = Arc::new(());
        let connections = Arc::new(Semaphore::new(config.max_tcp_connections));
        let idle_timeout = Duration::from_millis(config.tcp_idle_timeout_ms);
        let mut server = Self {
            core,
            udp_addresses: Vec::new(),
            tcp_addresses: Vec::new(),
            metrics_address: None,
            config: Mutex::new(config.clone()),
            listeners: Vec::new(),
            udp_threads: Vec::new(),
            udp_stop: Arc::new(AtomicBool::new(false)),
            shutdown,
            in_flight,
        };
        for &address in &config.listen {
            let (udp, tcp) = bind_pair(address)?;
            let bound = udp.local_addr().map_err(|source| ServerError::Bind {
                address,
                protocol: "udp",
                source,
            })?;
            let mut udp_sockets = vec![udp];
            for _ in 1..config.udp_sockets_per_address {
                udp_sockets.push(bind_udp(bound).map_err(|source| ServerError::Bind {
                    address: bound,
                    protocol: "udp",
                    source,
                })?);
            }
            // One thread per socket; each also drains its siblings when its own is empty.
            let udp_sockets: Arc<[Arc<std::net::UdpSocket>]> =
                udp_sockets.into_iter().map(Arc::new).collect();
            for own in 0..udp_sockets.len() {
                let (core, sockets, stop, guard) = (
                    server.core.clone(),
                    udp_sockets.clone(),
                    server.udp_stop.clone(),
                    server.in_flight.clone(),
                );
                // Built here, so a failure is the caller's error rather than a dead thread.
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .on_thread_park(udp::send_queued_replies)
                    .build()
                    .map_err(ServerError::Thread)?;
                let thread = std::thread::Builder::new()
                    .name("edgekit-dns-udp".into())
                    .spawn(move || udp::serve(runtime, core, sockets, own, stop, guard))
                    .map_err(ServerError::Thread)?;
                server.udp_threads.push(thread);
            }
            let listener = TcpListener::from_std(tcp).map_err(|source| ServerError::Bind {
                address: bound,
                protocol: "tcp",
                source,
            })?;
            let task = tcp_accept_loop(
                server.core.clone(),
                listener,
                connections.clone(),
                idle_timeout,
                server.shutdown.subscribe(),
                server.in_flight.clone(),
            );
            server.listeners.push(tokio::spawn(task));
            server.udp_addresses.push(bound);
            server.tcp_addresses.push(bound);
            tracing::info!(%bound, "serving DNS over UDP and TCP");
        }
        if let Some(address) = config.metrics_listen {
            let listener = bind_tcp(address)
                .and_then(TcpListener::from_std)
                .map_err(bind_error(address, "tcp"))?;
            server.metrics_address =
                Some(listener.local_addr().map_err(bind_error(address, "tcp"))?);
            let router = axum::Router::new()
                .route("/metrics", axum::routing::get(serve_metrics))
                .with_state(server.core.clone());
            server.listeners.push(tokio::spawn(async move {
                if let Err(error) = axum::serve(listener, router).await {
                    tracing::warn!(%error, "the metrics endpoint stopped");
                }
            }));
        }
        Ok(server)
    }

    /// Apply a new configuration without dropping any cache: `allow`, `prefetch_percent` and
    /// `stale_client_timeout_ms` take effect at once. Returns the names of changed settings
    /// that only a restart applies (sockets, bounds, cache sizes); they are left as they were.
    pub fn reload(&self, config: ServerConfig) -> Result<Vec<&'static str>, ServerError> {
        config.validate()?;
        let mut running = self.config.lock();
        let mut needs_restart = Vec::new();
        let mut compare = |name, changed: bool| {
            if changed {
                needs_restart.push(name);
            }
        };
        compare("listen", config.listen != running.listen);
        compare(
            "udp_sockets_per_address",
            config.udp_sockets_per_address != running.udp_sockets_per_address,
        );
        compare(
            "max_concurrent_resolutions",
            config.max_concurrent_resolutions != running.max_concurrent_resolutions,
        );
        compare(
            "max_pending_queries",
            config.max_pending_queries != running.max_pending_queries,
        );
        compare(
            "max_tcp_connections",
            config.max_tcp_connections != running.max_tcp_connections,
        );
        compare(
            "tcp_idle_timeout_ms",
            config.tcp_idle_timeout_ms != running.tcp_idle_timeout_ms,
        );
        compare(
            "max_udp_payload",
            config.max_udp_payload != running.max_udp_payload,
        );
        compare(
            "packet_cache_bytes",
            config.packet_cache_bytes != running.packet_cache_bytes,
        );
        compare(
            "metrics_listen",
            config.metrics_listen != running.metrics_listen,
        );
        compare(
            "rate_limit_per_client",
            config.rate_limit_per_client != running.rate_limit_per_client,
        );
        compare(
            "rate_limit_burst",
            config.rate_limit_burst != running.rate_limit_burst,
        );
        // Turning serve-stale on or changing its cap needs the cache to keep expired answers.
        compare(
            "serve_stale_max_seconds",
            config.serve_stale_max_seconds != running.serve_stale_max_seconds,
        );
        // Settings that need a restart keep their running values; the rest apply now.
        let mut applied = running.clone();
        applied.allow = config.allow.clone();
        applied.prefetch_percent = config.prefetch_percent;
        applied.stale_client_timeout_ms = config.stale_client_timeout_ms;
        *self.core.policy.write() = Arc::new(Policy::from_config(&applied));
        self.core.policy_generation.fetch_add(1, Ordering::Release);
        *running = applied;
        Ok(needs_restart)
    }

    /// Append what `GET /metrics` serves (OpenMetrics text, ending in `# EOF`) to `out`, for a
    /// process that merges several services into one metrics endpoint.
    pub fn encode_metrics(&self, out: &mut String) -> std::fmt::Result {
        prometheus_client::encoding::text::encode(out, &self.core.registry)
    }

    /// Where `GET /metrics` is served, when `metrics_listen` is set.
    pub fn metrics_address(&self) -> Option<SocketAddr> {
        self.metrics_address
    }

    /// The bound UDP address of each listen address (ports resolved when 0 was asked for).
    pub fn udp_addresses(&self) -> &[SocketAddr] {
        &self.udp_addresses
    }

    /// The bound TCP address of each listen address.
    pub fn tcp_addresses(&self) -> &[SocketAddr] {
        &self.tcp_addresses
    }

    /// Counters so far.
    pub fn stats(&self) -> ServerStatsSnapshot {
        self.core.counters.snapshot()
    }

    /// The resolver behind the server (its cache and upstream counters).
    pub fn resolver(&self) -> &Resolver {
        &self.core.resolver
    }

    /// Answers held in the packet cache.
    pub fn packet_cache_len(&self) -> usize {
        self.core.cache.len()
    }

    /// Stop receiving and accepting, close TCP connections between queries, and wait up to
    /// `grace` for answers already being resolved to be sent. Returns whether all were.
    pub async fn shutdown(mut self, grace: Duration) -> bool {
        for listener in self.listeners.drain(..) {
            listener.abort();
        }
        self.udp_stop.store(true, Ordering::Relaxed);
        let _ = self.shutdown.send(true);
        let deadline = Instant::now() + grace;
        while Arc::strong_count(&self.in_flight) > 1 {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        for listener in &self.listeners {
            listener.abort();
        }
        self.udp_stop.store(true, Ordering::Relaxed);
        let _ = self.shutdown.send(true);
    }
}

/// Prometheus text exposition of the counters and the resolution latency histogram.
async fn serve_metrics(
    axum::extract::State(core): axum::extract::State<Arc<Core>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &core.registry) {
        Ok(()) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// What the fast path decided.
enum Fast {
    /// `out` holds the reply.
    Reply,
    /// Not worth a reply (too short to echo an ID, or a response).
    Drop,
    /// Needs the engine; the reply may be at most this long.
    Miss(ClientQuery, usize),
}

/// Where waiters learn the encoded answer (ID 0) of a running resolution.
type TemplateReceiver = watch::Receiver<Option<Arc<[u8]>>>;

#[derive(Debug)]
struct Core {
    resolver: Resolver,
    cache: PacketCache,
    /// What a reload can change; replaced whole, and `policy_generation` bumped, on reload so
    /// UDP workers re-read it only when it changed.
    policy: parking_lot::RwLock<Arc<Policy>>,
    policy_generation: AtomicU64,
    /// Where misses from the UDP worker threads are resolved.
    runtime: tokio::runtime::Handle,
    /// Per-client token buckets, when the limit is on.
    rate_limiter: Option<rate_limit::RateLimiter>,
    counters: Counters,
    registry: prometheus_client::registry::Registry,
    /// Resolutions running, by question; late askers wait on the same channel.
    inflight: Mutex<HashMap<Vec<u8>, TemplateReceiver>>,
    /// Questions whose refresh failed lately: with serve-stale on, their expired answers are
    /// served at once.
    failed_refreshes: failure_recheck::FailureRecheck,
    resolutions: Arc<Semaphore>,
    pending: AtomicUsize,
    max_pending: usize,
    max_udp_payload: usize,
    resolution_timeout: Duration,
}

/// The settings [`DnsServer::reload`] applies to a running server.
#[derive(Debug)]
struct Policy {
    acl: Vec<Network>,
    prefetch_percent: u8,
    /// Serve-stale on, and how long a client waits for a fresh answer first.
    stale_client_timeout: Option<Duration>,
}

impl Policy {
    fn from_config(config: &ServerConfig) -> Self {
        Self {
            acl: config.effective_acl(),
            prefetch_percent: config.prefetch_percent,
            stale_client_timeout: (config.serve_stale_max_seconds > 0)
                .then(|| Duration::from_millis(config.stale_client_timeout_ms)),
        }
    }
}

impl Policy {
    fn allowed(&self, client: IpAddr) -> bool {
        self.acl.iter().any(|network| network.contains(client))
    }
}

/// A worker's copy of the policy and the generation it was read at.
#[derive(Debug)]
struct PolicyView {
    generation: u64,
    policy: Arc<Policy>,
}

/// The counters the hot path bumps, kept by one worker and added to the shared counters once
/// per batch: no shared cache line is written per query.
#[derive(Debug, Default)]
struct Tally {
    queries: u64,
    cache_hits: u64,
    truncated: u64,
    dropped: u64,
    rcodes: [u64; 16],
}

impl Tally {
    fn count_reply(&mut self, reply: &[u8]) {
        if let Some(byte) = reply.get(3) {
            self.rcodes[usize::from(byte & 0x0F)] += 1;
        }
    }
}

impl Core {
    /// A core with default settings, an empty cache and a resolver that is never called: for
    /// exercising the request path without sockets. Must be called inside a tokio runtime.
    fn offline() -> Self {
        let counters = Counters::new();
        let registry = counters.registry();
        let resolver_config = crate::config::ResolverConfig::default();
        Self {
            resolver: Resolver::new(resolver_config).unwrap_or_else(|error| {
                unreachable!("the default resolver config is valid: {error}")
            }),
            cache: PacketCache::new(PacketCacheConfig::default())
                .unwrap_or_else(|error| unreachable!("the default cache config is valid: {error}")),
            policy: parking_lot::RwLock::new(Arc::new(Policy::from_config(
                &ServerConfig::default(),
            ))),
            policy_generation: AtomicU64::new(0),
            runtime: tokio::runtime::Handle::current(),
            rate_limiter: None,
            counters,
            registry,
            inflight: Mutex::new(HashMap::new()),
            failed_refreshes: failure_recheck::FailureRecheck::default(),
            resolutions: Arc::new(Semaphore::new(1)),
            pending: AtomicUsize::new(0),
            max_pending: 1,
            max_udp_payload: 1232,
            resolution_timeout: Duration::from_secs(1),
        }
    }

    fn policy_snapshot(&self) -> PolicyView {
        let generation = self.policy_generation.load(Ordering::Acquire);
        PolicyView {
            generation,
            policy: self.policy.read().clone(),
        }
    }

    /// Re-read the policy if a reload replaced it (one shared load when it did not).
    fn refresh_policy(&self, view: &mut PolicyView) {
        if self.policy_generation.load(Ordering::Acquire) != view.generation {
            *view = self.policy_snapshot();
        }
    }

    /// Add a worker's tally to the shared counters and zero it.
    fn flush(&self, tally: &mut Tally) {
        let counters = &self.counters;
        let add = |counter: &prometheus_client::metrics::counter::Counter, value: u64| {
            if value > 0 {
                counter.inc_by(value);
            }
        };
        add(&counters.queries, tally.queries);
        add(&counters.cache_hits, tally.cache_hits);
        add(&counters.truncated, tally.truncated);
        add(&counters.dropped, tally.dropped);
        for (counter, &value) in counters.rcodes.iter().zip(&tally.rcodes) {
            add(counter, value);
        }
        *tally = Tally::default();
    }

    /// Resolve a UDP miss on the calling UDP worker's own runtime and queue the reply on that
    /// thread, which sends it with the others ready at the same time (`udp::queue_reply`).
    /// `guards` are held until the reply is sent.
    fn spawn_udp_miss(
        self: &Arc<Self>,
        socket: &Arc<std::net::UdpSocket>,
        query: ClientQuery,
        max_len: usize,
        peer: SocketAddr,
        guards: [Arc<()>; 2],
    ) {
        let (core, socket) = (self.clone(), socket.clone());
        // Boxed: the resolution's future is about 2 KiB, and tokio moves an unboxed one into
        // the task and over it again at completion (memmove was the top user-space symbol
        // of a cold batch's profile).
        tokio::spawn(Box::pin(async move {
            let reply = core.answer_miss(query, max_len).await;
            core.counters.count_reply(&reply);
            udp::queue_reply(socket, reply, peer, guards);
        }));
    }

    /// Everything that needs no resolution: errors, refusals and packet-cache hits.
    fn answer_fast(
        self: &Arc<Self>,
        packet: &[u8],
        client: IpAddr,
        udp: bool,
        out: &mut Vec<u8>,
        policy: &Policy,
        tally: &mut Tally,
    ) -> Fast {
        let counters = &self.counters;
        tally.queries += 1;
        out.clear();
        if packet.len() < HEADER_LEN || packet[2] & 0x80 != 0 {
            tally.dropped += 1;
            return Fast::Drop;
        }
        // Before anything is sent back, so a spoofed source cannot be used for reflection.
        if let Some(limiter) = &self.rate_limiter
            && !limiter.allow(client)
        {
            Counters::bump(&counters.rate_limited);
            return Fast::Drop;
        }
        let parsed = parse_query(packet);
        if !policy.allowed(client) {
            Counters::bump(&counters.refused);
            error_reply(packet, parsed.as_ref().ok(), RCODE_REFUSED, out);
            return Fast::Reply;
        }
        if (packet[2] >> 3) & 0x0F != 0 {
            Counters::bump(&counters.notimp);
            // With the question and OPT when they parse (RFC 6891 section 7: a request with OPT
            // gets OPT back, whatever the rcode).
            error_reply(packet, parsed.as_ref().ok(), RCODE_NOTIMP, out);
            return Fast::Reply;
        }
        let query = match parsed {
            Ok(query) => query,
            Err(error) => {
                tracing::debug!(%client, %error, "malformed query");
                Counters::bump(&counters.formerr);
                error_reply(packet, None, RCODE_FORMERR, out);
                return Fast::Reply;
            }
        };
        if query.edns.is_some_and(|edns| edns.version != 0) {
            Counters::bump(&counters.badvers);
            badvers_reply(packet, &query, out);
            return Fast::Reply;
        }
        // Zone transfers are not a resolver's business; OPT is no question; classes other than
        // IN have no public tree.
        let refusal = match (query.qclass, query.qtype) {
            (class, _) if class != 1 => Some(RCODE_REFUSED),
            (_, 251 | 252) => Some(RCODE_REFUSED),
            (_, 41) => Some(RCODE_NOTIMP),
            _ => None,
        };
        if let Some(rcode) = refusal {
            Counters::bump(if rcode == RCODE_REFUSED {
                &counters.refused
            } else {
                &counters.notimp
            });
            error_reply(packet, Some(&query), rcode, out);
            return Fast::Reply;
        }
        let max_len = if udp {
            usize::from(query.max_udp_payload()).min(self.max_udp_payload)
        } else {
            usize::from(u16::MAX)
        };
        // ANY (RFC 8482): one synthesised HINFO instead of everything at the name, which
        // would make the resolver an amplifier and has no well-defined answer from a cache.
        if query.qtype == respond::TYPE_ANY {
            let client_query = ClientQuery::from_parsed(&query);
            if let Some(template) = respond::any_template(&client_query) {
                Counters::bump(&counters.local_answers);
                personalise(&template, &client_query, out);
                let dnssec_ok = query.edns.map(|edns| edns.dnssec_ok);
                if finish(out, client_query.qname.len(), dnssec_ok, max_len) {
                    tally.truncated += 1;
                }
                return Fast::Reply;
            }
        }
        if let Some(lifetime_left) = self.cache.answer_into_with_lifetime(&query, out) {
            tally.cache_hits += 1;
            if lifetime_left < policy.prefetch_percent {
                self.prefetch(ClientQuery::from_parsed(&query));
            }
            let dnssec_ok = query.edns.map(|edns| edns.dnssec_ok);
            if finish(out, query.qname_wire().len(), dnssec_ok, max_len) {
                tally.truncated += 1;
            }
            return Fast::Reply;
        }
        let client_query = ClientQuery::from_parsed(&query);
        if let Some((name, record_type)) = respond::question(&client_query)
            && let Some(local) = special_use::answer(&name, record_type)
        {
            Counters::bump(&counters.local_answers);
            personalise(&local, &client_query, out);
            let dnssec_ok = query.edns.map(|edns| edns.dnssec_ok);
            if finish(out, client_query.qname.len(), dnssec_ok, max_len) {
                Counters::bump(&counters.truncated);
            }
            return Fast::Reply;
        }
        Counters::bump(&counters.cache_misses);
        Fast::Miss(client_query, max_len)
    }

    /// A miss: wait for (or start) the resolution of this question, then personalise it.
    async fn answer_miss(self: &Arc<Self>, query: ClientQuery, max_len: usize) -> Vec<u8> {
        let counters = &self.counters;
        // Read before awaiting: the lock guard must not be held across an await.
        let stale_client_timeout = self.policy.read().stale_client_timeout;
        if stale_client_timeout.is_some()
            && self
                .failed_refreshes
                .failed_lately(|| query.key(), Instant::now())
            && let Some(reply) = self.stale_reply(&query, max_len)
        {
            return reply;
        }
        let template = match PendingGuard::enter(&self.pending, self.max_pending) {
            Some(_pending) => match stale_client_timeout {
                // This future always runs to the end (misses are detached tasks), so it can do
                // the resolution itself when it is the first to ask.
                None => self.template_for(&query, Leader::Inline).await,
                Some(client_timeout) => {
                    // Giving up waiting drops this future: the resolution gets its own task.
                    let resolution = self.template_for(&query, Leader::Spawn);
                    tokio::pin!(resolution);
                    // The resolution runs in its own task: giving up waiting does not stop it.
                    match tokio::time::timeout(client_timeout, &mut resolution).await {
                        Ok(template) if !is_servfail(&template) => template,
                        Ok(template) => match self.stale_reply(&query, max_len) {
                            Some(reply) => return reply,
                            None => template,
                        },
                        Err(_) => match self.stale_reply(&query, max_len) {
                            Some(reply) => return reply,
                            None => resolution.await,
                        },
                    }
                }
            },
            None => {
                Counters::bump(&counters.overloaded);
                // Overload is when an expired answer helps most (RFC 8767).
                if stale_client_timeout.is_some()
                    && let Some(reply) = self.stale_reply(&query, max_len)
                {
                    return reply;
                }
                servfail_template(&query).into()
            }
        };
        let mut out = Vec::with_capacity(template.len() + 11);
        personalise(&template, &query, &mut out);
        if out
            .get(3)
            .is_some_and(|byte| byte & 0x0F == respond::RCODE_SERVFAIL)
        {
            Counters::bump(&counters.servfail);
        }
        let dnssec_ok = query.edns.map(|edns| edns.dnssec_ok);
        if finish(&mut out, query.qname.len(), dnssec_ok, max_len) {
            Counters::bump(&counters.truncated);
        }
        out
    }

    /// The expired answer kept for `query` (serve-stale), in cache form with TTLs of 30 s.
    fn stale_answer(&self, query: &ClientQuery) -> Option<Vec<u8>> {
        let key_query = respond::cache_key_query(query);
        let parsed = parse_query(&key_query).ok()?;
        let mut stale = Vec::new();
        self.cache
            .answer_stale_into(&parsed, &mut stale, STALE_TTL)
            .then_some(stale)
    }

    /// An expired answer for `query`, if one is kept (serve-stale), with TTLs of 30 s.
    fn stale_reply(&self, query: &ClientQuery, max_len: usize) -> Option<Vec<u8>> {
        let stale = self.stale_answer(query)?;
        Counters::bump(&self.counters.stale_answers);
        let mut out = Vec::with_capacity(stale.len() + 11);
        personalise(&stale, query, &mut out);
        let dnssec_ok = query.edns.map(|edns| edns.dnssec_ok);
        if finish(&mut out, query.qname.len(), dnssec_ok, max_len) {
            Counters::bump(&self.counters.truncated);
        }
        Some(out)
    }

    async fn template_for(self: &Arc<Self>, query: &ClientQuery, leader: Leader) -> Arc<[u8]> {
        let key = query.key();
        // In a block of its own: the lock guard must be gone before anything is awaited.
        let started = {
            let mut inflight = self.inflight.lock();
            if let Some(running) = inflight.get(&key) {
                Counters::bump(&self.counters.coalesced);
                Err(running.clone())
            } else {
                let Ok(permit) = self.resolutions.clone().try_acquire_owned() else {
                    Counters::bump(&self.counters.overloaded);
                    return servfail_template(query).into();
                };
                let (sender, receiver) = watch::channel(None);
                inflight.insert(key.clone(), receiver.clone());
                Ok((sender, receiver, permit))
            }
        };
        let mut waiting = match started {
            Err(running) => running,
            Ok((sender, receiver, permit)) => {
                let leading = Leading {
                    entry: InflightEntry {
                        core: self.clone(),
                        key,
                    },
                    sender,
                    permit,
                };
                match leader {
                    // No task and no channel hop for the common case of one asker: on a cold
                    // cache that was a measurable share of the CPU per miss.
                    Leader::Inline => return self.lead(query, false, leading).await,
                    Leader::Spawn => {
                        let (core, question) = (self.clone(), query.clone());
                        // Its own task, so a client that goes away does not cancel it for the
                        // others; on the shared runtime, not the calling UDP worker's: a
                        // worker gives its thread up only while it has misses of its own
                        // outstanding, and drops its runtime (cancelling whatever is left on
                        // it) when it stops, so an orphaned resolution there could starve or
                        // be cut short.
                        self.runtime
                            .spawn(async move { core.lead(&question, false, leading).await });
                        receiver
                    }
                }
            }
        };
        match waiting.wait_for(Option::is_some).await {
            Ok(template) => template
                .as_ref()
                .map_or_else(|| servfail_template(query).into(), Arc::clone),
            Err(_) => servfail_template(query).into(),
        }
    }

    /// Refresh `query`'s answer in the background unless that is already under way or the
    /// resolution bound is reached (the cached answer keeps being served meanwhile).
    fn prefetch(self: &Arc<Self>, query: ClientQuery) {
        let key = query.key();
        let mut inflight = self.inflight.lock();
        if inflight.contains_key(&key) {
            return;
        }
        let Ok(permit) = self.resolutions.clone().try_acquire_owned() else {
            return;
        };
        let (sender, receiver) = watch::channel(None);
        inflight.insert(key.clone(), receiver);
        drop(inflight);
        Counters::bump(&self.counters.prefetches);
        let core = self.clone();
        let leading = Leading {
            entry: InflightEntry {
                core: self.clone(),
                key,
            },
            sender,
            permit,
        };
        // Called from UDP worker threads too, which are outside the runtime.
        self.runtime
            .spawn(async move { core.lead(&query, true, leading).await });
    }

    /// Run the resolution `leading` was started for and hand its answer to every waiter. The
    /// in-flight entry goes first, so an asker arriving after the answer starts afresh; the
    /// permit last, so the bound on resolutions covers the whole of it.
    async fn lead(&self, query: &ClientQuery, refresh: bool, leading: Leading) -> Arc<[u8]> {
        let Leading {
            entry,
            sender,
            permit,
        } = leading;
        let template = self.resolve_to_template(query, refresh).await;
        if !is_servfail(&template) {
            self.failed_refreshes.note_success(&entry.key);
        } else if self.policy.read().stale_client_timeout.is_some()
            && self.stale_answer(query).is_some()
        {
            // Only questions with a stale answer: a flood of never-answered names must not
            // crowd out the ones the recheck is for.
            self.failed_refreshes
                .note_failure(&entry.key, Instant::now());
        }
        drop(entry);
        let _ = sender.send(Some(template.clone()));
        drop(permit);
        template
    }

    async fn resolve_to_template(&self, query: &ClientQuery, refresh: bool) -> Arc<[u8]> {
        let Some((name, record_type)) = respond::question(query) else {
            return servfail_template(query).into();
        };
        Counters::bump(&self.counters.resolutions);
        let started = Instant::now();
        let resolution = async {
            if refresh {
                self.resolver.refresh(&name, record_type).await
            } else {
                self.resolver.resolve_untraced(&name, record_type).await
            }
        };
        let outcome = tokio::time::timeout(self.resolution_timeout, resolution).await;
        self.counters
            .resolution_seconds
            .observe(started.elapsed().as_secs_f64());
        let resolution = match outcome {
            Ok(Ok(resolution)) => {
                self.counters
                    .upstream_queries
                    .inc_by(u64::from(resolution.upstream_queries));
                resolution
            }
            Ok(Err(error)) => {
                tracing::debug!(%name, %record_type, %error, "resolution failed");
                return servfail_template(query).into();
            }
            Err(_) => {
                tracing::debug!(%name, %record_type, "resolution timed out");
                return servfail_template(query).into();
            }
        };
        let Some(wire) = respond::encode_resolution(query, &resolution) else {
            return servfail_template(query).into();
        };
        let key_query = respond::cache_key_query(query);
        if let Ok(parsed) = parse_query(&key_query)
            && let Err(error) = self.cache.insert(&parsed, &wire)
        {
            tracing::trace!(%name, %record_type, %error, "answer not cached");
        }
        wire.into()
    }
}

/// Who runs a resolution that nobody else is running yet.
#[derive(Debug, Clone, Copy)]
enum Leader {
    /// The asking future itself: only for callers that never drop it before it finishes.
    Inline,
    /// A task of its own, which finishes even if the asker stops waiting.
    Spawn,
}

/// What the one asker that runs a resolution holds until it ends (see [`Core::lead`]).
struct Leading {
    entry: InflightEntry,
    sender: watch::Sender<Option<Arc<[u8]>>>,
    permit: tokio::sync::OwnedSemaphorePermit,
}

/// A question's entry in [`Core::inflight`], removed when the resolution ends however it ends
/// (also if its future is dropped or panics), so a later asker starts afresh instead of waiting
/// on a channel nobody will ever send on.
struct InflightEntry {
    core: Arc<Core>,
    key: Vec<u8>,
}

impl Drop for InflightEntry {
    fn drop(&mut self) {
        self.core.inflight.lock().remove(&self.key);
    }
}

/// TTL of stale answers (RFC 8767 section 4 recommends 30 s).
const STALE_TTL: u32 = 30;

fn is_servfail(reply: &[u8]) -> bool {
    reply
        .get(3)
        .is_some_and(|byte| byte & 0x0F == respond::RCODE_SERVFAIL)
}

/// Counts queries waiting on resolutions; refuses to count past the bound.
struct PendingGuard<'a>(&'a AtomicUsize);

impl<'a> PendingGuard<'a> {
    fn enter(pending: &'a AtomicUsize, max: usize) -> Option<Self> {
        pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                (now < max).then_some(now + 1)
            })
            .ok()
            .map(|_| Self(pending))
    }
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn bind_error(address: SocketAddr, protocol: &'static str) -> impl Fn(io::Error) -> ServerError {
    move |source| ServerError::Bind {
        address,
        protocol,
        source,
    }
}

/// UDP and TCP on one port; with port 0, retry until a port is free for both.
fn bind_pair(
    address: SocketAddr,
) -> Result<(std::net::UdpSocket, std::net::TcpListener), ServerError> {
    let attempts = if address.port() == 0 { 16 } else { 1 };
    let mut last_error = None;
    for _ in 0..attempts {
        let udp = bind_udp(address).map_err(bind_error(address, "udp"))?;
        let bound = udp.local_addr().map_err(bind_error(address, "udp"))?;
        match bind_tcp(bound) {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(error) => last_error = Some(error),
        }
    }
    let source = last_error.unwrap_or_else(|| io::Error::other("no attempt made"));
    Err(bind_error(address, "tcp")(source))
}

fn bind_udp(address: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_port(true)?;
    // A bigger receive buffer absorbs bursts; the kernel may cap it, which is fine.
    let _ = socket.set_recv_buffer_size(4 << 20);
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    Ok(socket.into())
}

fn bind_tcp(address: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

async fn tcp_accept_loop(
    core: Arc<Core>,
    listener: TcpListener,
    connections: Arc<Semaphore>,
    idle_timeout: Duration,
    shutdown: watch::Receiver<bool>,
    in_flight: Arc<()>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::debug!(%error, "TCP accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            Counters::bump(&core.counters.tcp_rejected);
            continue;
        };
        let (core, shutdown, in_flight) = (core.clone(), shutdown.clone(), in_flight.clone());
        tokio::spawn(async move {
            serve_tcp(core, stream, peer, idle_timeout, shutdown, in_flight).await;
            drop(permit);
        });
    }
}

/// Replies one TCP connection may have queued or being resolved at once. The reader takes a
/// slot before it reads each query, so a client that sends without reading its replies stops
/// being read once this many are waiting, instead of making the server resolve and hold a
/// reply for every query it sends.
const TCP_REPLIES_IN_FLIGHT: usize = 64;

/// One TCP connection: length-prefixed queries, answered in completion order (pipelining).
///
/// The connection ends when the client sends nothing for `idle_timeout` between queries, or
/// takes no byte of its replies for that long: otherwise a client that never reads would hold
/// its connection, and its share of `max_tcp_connections`, for ever. While all its reply slots
/// are taken by misses still resolving, the reader just waits (each resolution is bounded).
async fn serve_tcp(
    core: Arc<Core>,
    stream: TcpStream,
    peer: SocketAddr,
    idle_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
    in_flight: Arc<()>,
) {
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    let (replies, mut outbox) = mpsc::channel::<Vec<u8>>(TCP_REPLIES_IN_FLIGHT);
    let writer_task = tokio::spawn(async move {
        while let Some(reply) = outbox.recv().await {
            let Ok(frame) = frame_tcp(&reply) else {
                continue;
            };
            if !write_with_progress(&mut writer, &frame, idle_timeout).await {
                break;
            }
        }
    });
    let mut length = [0u8; 2];
    let mut packet = Vec::new();
    let mut out = Vec::new();
    loop {
        let slot = tokio::select! {
            slot = replies.clone().reserve_owned() => slot,
            _ = shutdown.wait_for(|stopping| *stopping) => break,
        };
        // The writer has stopped: the client went away, or stopped reading.
        let Ok(slot) = slot else {
            break;
        };
        let read = tokio::select! {
            read = tokio::time::timeout(idle_timeout, reader.read_exact(&mut length)) => read,
            _ = shutdown.wait_for(|stopping| *stopping) => break,
        };
        if !matches!(read, Ok(Ok(_))) {
            break;
        }
        let frame_len = usize::from(u16::from_be_bytes(length));
        if frame_len < HEADER_LEN {
            // Not even a header: nothing to answer and no way to resynchronise.
            Counters::bump(&core.counters.formerr);
            break;
        }
        packet.resize(frame_len, 0);
        let read = tokio::time::timeout(idle_timeout, reader.read_exact(&mut packet)).await;
        if !matches!(read, Ok(Ok(_))) {
            break;
        }
        let policy = core.policy.read().clone();
        let mut tally = Tally::default();
        let fast = core.answer_fast(&packet, peer.ip(), false, &mut out, &policy, &mut tally);
        core.flush(&mut tally);
        match fast {
            Fast::Reply => {
                core.counters.count_reply(&out);
                if !out.is_empty() {
                    slot.send(out.clone());
                }
            }
            Fast::Drop => {}
            Fast::Miss(query, max_len) => {
                let (core, guard) = (core.clone(), in_flight.clone());
                tokio::spawn(async move {
                    let reply = core.answer_miss(query, max_len).await;
                    core.counters.count_reply(&reply);
                    slot.send(reply);
                    drop(guard);
                });
            }
        }
    }
    drop(replies);
    let _ = writer_task.await;
}

/// Write all of `frame`, giving up (false) when the client takes none of it for `idle_timeout`
/// or the connection fails. A client that reads a long reply slowly but steadily is not cut
/// off.
async fn write_with_progress(
    writer: &mut tokio::net::tcp::OwnedWriteHalf,
    frame: &[u8],
    idle_timeout: Duration,
) -> bool {
    let mut written = 0;
    while written < frame.len() {
        match tokio::time::timeout(idle_timeout, writer.write(&frame[written..])).await {
            Ok(Ok(count)) if count > 0 => written += count,
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn any_bytes_keep_the_request_path_invariants(
            packet in proptest::collection::vec(any::<u8>(), 0..300),
            header in proptest::collection::vec(any::<u8>(), 12),
        ) {
            // Random bytes, and random bytes behind a plausible query header.
            let mut plausible = header;
            plausible[2] &= 0x07; // a QUERY
            plausible[4..6].copy_from_slice(&[0, 1]); // one question
            plausible.extend_from_slice(&packet);
            for bytes in [&packet, &plausible] {
                if let Err(violation) = check_request_path(bytes) {
                    prop_assert!(false, "{}", violation);
                }
            }
        }
    }

    #[test]
    fn the_request_check_catches_nothing_on_ordinary_queries() {
        let mut query = vec![0x12, 0x34, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        query.extend_from_slice(b"\x03www\x07example\x04test\x00\x00\x01\x00\x01");
        assert_eq!(check_request_path(&query), Ok(()));
        // ANY, a zone transfer and a bad class: answered locally, still well formed.
        for (qtype, qclass) in [(255u16, 1u16), (252, 1), (1, 3)] {
            let at = query.len() - 4;
            query[at..at + 2].copy_from_slice(&qtype.to_be_bytes());
            query[at + 2..].copy_from_slice(&qclass.to_be_bytes());
            assert_eq!(check_request_path(&query), Ok(()));
        }
    }
}
