//! The iterative resolver: one explicit state machine per resolution.
//!
//! A resolution walks from the closest cached zone cut (or the root hints) down the tree:
//! ask a server of the current zone, then follow the referral, chase the CNAME/DNAME, or
//! finish with an answer, NXDOMAIN or NODATA. Its state is the zone cut, the candidate servers
//! and a [`Work`] budget shared with all nested work: resolving a glueless NS name is a nested
//! resolution one level deeper, bounded by `max_depth`, by a cycle check, and by the total
//! query and time budget, so an NS cycle or a long chain ends in an error, never a hang or a
//! stack overflow.

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Message, ResponseCode},
    rr::{Name, RData, Record, RecordType, rdata::CNAME},
};

use crate::{
    cache::{Cache, CacheAnswer, Rank},
    clock::Clock,
    config::{QnameMinimisation, ResolverConfig},
    error::{ConfigError, ResolveError},
    root_hints::RootHints,
    scrub::{scrub, substitute},
    servers::{AddressPolicy, ServerSelection},
    shared_exchange::{InFlightExchanges, Role},
    stats::{Stats, StatsSnapshot},
    trace::{StepOutcome, TraceStep, rcode_mnemonic},
    transport::{ExchangeError, exchange},
    wire::dname_target,
};

/// How many times one zone's servers are gone round when some of them time out: a first try
/// and two more, as a stub resolver retries a few times before giving up (Unbound retries an
/// unanswered server up to 5 times).
const MAX_ROUNDS_PER_ZONE: u32 = 3;

/// The result of one resolution that reached an authoritative conclusion.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Resolution {
    /// NOERROR (answer or NODATA) or NXDOMAIN.
    pub rcode: ResponseCode,
    /// The answer: the CNAME/DNAME chain followed, then the records asked for; TTLs are what
    /// remains of them.
    pub answers: Vec<Record>,
    /// For negative answers, the SOA that says for how long they hold.
    pub authorities: Vec<Record>,
    /// Each upstream query made, in order; a step answered by an identical query another
    /// resolution had in flight is listed too (so there can be more steps than queries sent).
    pub trace: Vec<TraceStep>,
    /// Upstream queries this resolution sent (0: answered from the cache). A query an
    /// identical one already in flight answered is not counted.
    pub upstream_queries: u32,
}

/// A resolution that failed, with the upstream steps taken before it did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FailedResolution {
    /// Why it failed.
    pub error: ResolveError,
    /// Each upstream query made, in order.
    pub trace: Vec<TraceStep>,
}

/// A recursive resolver with its cache. Cheap to clone; clones share the cache.
#[derive(Debug, Clone)]
pub struct Resolver {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: ResolverConfig,
    roots: RootHints,
    root_addresses: HashMap<Name, Vec<IpAddr>>,
    cache: Cache,
    servers: ServerSelection,
    policy: AddressPolicy,
    stats: Stats,
    exchanges: InFlightExchanges,
}

/// The budget and record of one resolution, shared by its nested work.
#[derive(Debug)]
struct Work {
    started: Instant,
    deadline: Instant,
    /// Upstream steps taken, sent or shared: what the query budget limits.
    queries: u32,
    /// Upstream queries actually sent.
    sent: u32,
    minimisation_queries: u8,
    trace: Vec<TraceStep>,
    /// Whether to fill `trace`: only `resolve_traced` returns it, so the server's resolutions
    /// (`resolve_untraced`) skip cloning zone, name and referral NS names per upstream query.
    record_trace: bool,
    in_progress: Vec<(Name, RecordType)>,
    /// A refresh: the cached answer for this (lowercased) question is ignored once, so the
    /// authoritative servers are asked again (cached delegations are still used).
    skip_cached_answer: Option<(Name, RecordType)>,
}

/// A conclusion: rcode, answer chain, SOA for negative answers.
#[derive(Debug)]
struct Conclusion {
    rcode: ResponseCode,
    answers: Vec<Record>,
    authorities: Vec<Record>,
}

/// What iterating towards one name produced.
#[derive(Debug)]
enum Outcome {
    Answer(Vec<Record>),
    NxDomain(Option<Record>),
    NoData(Option<Record>),
}

/// A usable reply from a server of a zone, already scrubbed.
#[derive(Debug)]
struct Reply {
    message: Message,
    server: SocketAddr,
    elapsed: Duration,
    over_tcp: bool,
}

type BoxedConclusion<'a> =
    Pin<Box<dyn Future<Output = Result<Conclusion, ResolveError>> + Send + 'a>>;

impl Resolver {
    /// A resolver from a configuration: validated here, root hints loaded from
    /// `root_hints_file` or IANA's built-in ones; the cache uses the system clock.
    pub fn new(config: ResolverConfig) -> Result<Self, ConfigError> {
        let roots = match &config.root_hints_file {
            Some(path) => RootHints::from_file(path)?,
            None => RootHints::iana(),
        };
        Self::with_parts(config, roots, Clock::system())
    }

    /// A resolver with explicit root hints and clock (test hierarchies, replays). The
    /// configuration's `root_hints_file` is ignored.
    pub fn with_parts(
        config: ResolverConfig,
        roots: RootHints,
        clock: Clock,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let cache = Cache::new(
            clock,
            config.cache_max_entries,
            config.cache_max_ttl,
            config.negative_max_ttl,
        );
        let policy = AddressPolicy {
            allow_loopback: config.allow_loopback,
            allow_private: config.allow_private,
            do_ip4: config.do_ip4,
            do_ip6: config.do_ip6,
        };
        let root_addresses = roots
            .servers()
            .iter()
            .map(|server| (server.name.to_lowercase(), server.addresses.clone()))
            .collect();
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                roots,
                root_addresses,
                cache,
                servers: ServerSelection::default(),
                policy,
                stats: Stats::default(),
                exchanges: InFlightExchanges::default(),
            }),
        })
    }

    /// The cache (shared by every resolution of this resolver and its clones).
    pub fn cache(&self) -> &Cache {
        &self.inner.cache
    }

    /// The counters so far.
    pub fn stats(&self) -> StatsSnapshot {
        self.inner.stats.snapshot()
    }

    /// The configuration in use.
    pub fn config(&self) -> &ResolverConfig {
        &self.inner.config
    }

    /// Resolve `name`/`record_type` (class IN). `Ok` carries NOERROR (with data or NODATA) or
    /// NXDOMAIN; `Err` is what a server would report as SERVFAIL.
    pub async fn resolve(
        &self,
        name: &Name,
        record_type: RecordType,
    ) -> Result<Resolution, ResolveError> {
        self.resolve_with(name, record_type, false, true)
            .await
            .map_err(|failed| failed.error)
    }

    /// Like [`Resolver::resolve`], but without a trace (`Resolution::trace` is empty): the
    /// server's path, which never shows one, so a miss does not clone the zone, the name sent
    /// and a referral's NS names into a trace step per upstream query.
    pub async fn resolve_untraced(
        &self,
        name: &Name,
        record_type: RecordType,
    ) -> Result<Resolution, ResolveError> {
        self.resolve_with(name, record_type, false, false)
            .await
            .map_err(|failed| failed.error)
    }

    /// Like [`Resolver::resolve`], but a failure keeps the steps taken before it (for
    /// `edgekit resolve --trace` and for logging why a name fails).
    pub async fn resolve_traced(
        &self,
        name: &Name,
        record_type: RecordType,
    ) -> Result<Resolution, FailedResolution> {
        self.resolve_with(name, record_type, false, true).await
    }

    /// Ask the authoritative servers again for `name`/`record_type` even when its answer is
    /// cached, and cache what they say (prefetch of answers about to expire). Cached
    /// delegations are used as usual.
    pub async fn refresh(
        &self,
        name: &Name,
        record_type: RecordType,
    ) -> Result<Resolution, ResolveError> {
        self.resolve_with(name, record_type, true, true)
            .await
            .map_err(|failed| failed.error)
    }

    async fn resolve_with(
        &self,
        name: &Name,
        record_type: RecordType,
        refresh: bool,
        record_trace: bool,
    ) -> Result<Resolution, FailedResolution> {
        if matches!(
            record_type,
            RecordType::OPT | RecordType::AXFR | RecordType::IXFR | RecordType::ANY
        ) {
            return Err(FailedResolution {
                error: ResolveError::BadQuery {
                    name: name.to_string(),
                    reason: format!("type {record_type} is not resolvable iteratively"),
                },
                trace: Vec::new(),
            });
        }
        let mut name = name.clone();
        name.set_fqdn(true);
        let started = Instant::now();
        let mut work = Work {
            started,
            deadline: started + Duration::from_millis(self.inner.config.resolution_timeout_ms),
            queries: 0,
            sent: 0,
            minimisation_queries: 0,
            trace: Vec::new(),
            record_trace,
            in_progress: vec![(name.to_lowercase(), record_type)],
            skip_cached_answer: refresh.then(|| (name.to_lowercase(), record_type)),
        };
        let result = self.resolve_at(name, record_type, 0, &mut work).await;
        if work.queries == 0 {
            self.inner.stats.add_cache_hit();
        } else {
            self.inner.stats.add_cache_miss();
        }
        let conclusion = result.map_err(|error| FailedResolution {
            error,
            trace: std::mem::take(&mut work.trace),
        })?;
        Ok(Resolution {
            rcode: conclusion.rcode,
            answers: conclusion.answers,
            authorities: conclusion.authorities,
            trace: work.trace,
            upstream_queries: work.sent,
        })
    }

    /// Resolve one name at nesting `depth`: the cache first, then iteration, following the
    /// CNAME/DNAME chain. Boxed because glueless NS resolution nests (bounded by `max_depth`).
    fn resolve_at<'a>(
        &'a self,
        name: Name,
        record_type: RecordType,
        depth: u8,
        work: &'a mut Work,
    ) -> BoxedConclusion<'a> {
        Box::pin(async move {
            let config = &self.inner.config;
            let mut answers: Vec<Record> = Vec::new();
            let mut current = name;
            // Filled at the first alias only: most questions have none, and this runs per miss.
            let mut seen: HashSet<Name> = HashSet::new();
            let mut follow = |current: &mut Name, target: Name| {
                if seen.is_empty() {
                    seen.insert(current.to_lowercase());
                }
                if seen.len() > usize::from(config.max_cname_chain)
                    || !seen.insert(target.to_lowercase())
                {
                    return Err(ResolveError::ChainTooLong {
                        limit: config.max_cname_chain,
                        name: target.to_string(),
                    });
                }
                *current = target;
                Ok(())
            };
            loop {
                check_deadline(work)?;
                let skip = work
                    .skip_cached_answer
                    .take_if(|(skipped, skipped_type)| {
                        *skipped_type == record_type && *skipped == current.to_lowercase()
                    })
                    .is_some();
                let cached = if skip {
                    None
                } else {
                    self.inner.cache.lookup(&current, record_type)
                };
                match cached {
                    Some(CacheAnswer::Records(records)) => {
                        answers.extend(records);
                        return Ok(conclusion(ResponseCode::NoError, answers, None));
                    }
                    Some(CacheAnswer::Cname(record)) => {
                        let RData::CNAME(CNAME(target)) = &record.data else {
                            return Err(no_server(&current, "cached CNAME without a target"));
                        };
                        let target = target.clone();
                        answers.push(record);
                        follow(&mut current, target)?;
                        continue;
                    }
                    Some(CacheAnswer::NxDomain(soa)) => {
                        return Ok(conclusion(ResponseCode::NXDomain, answers, soa));
                    }
                    Some(CacheAnswer::NoData(soa)) => {
                        return Ok(conclusion(ResponseCode::NoError, answers, soa));
                    }
                    _ => {}
                }
                match self.iterate(&current, record_type, depth, work).await? {
                    Outcome::NxDomain(soa) => {
                        return Ok(conclusion(ResponseCode::NXDomain, answers, soa));
                    }
                    Outcome::NoData(soa) => {
                        return Ok(conclusion(ResponseCode::NoError, answers, soa));
                    }
                    Outcome::Answer(records) => {
                        let before = current.clone();
                        loop {
                            let finals: Vec<Record> = records
                                .iter()
                                .filter(|r| r.record_type() == record_type && r.name == current)
                                .cloned()
                                .collect();
                            if !finals.is_empty() {
                                answers.extend(finals);
                                return Ok(conclusion(ResponseCode::NoError, answers, None));
                            }
                            // DNAME first: we synthesise the CNAME ourselves (RFC 6672 3.2)
                            // rather than trust the server's copy.
                            let dname = records.iter().find_map(|r| {
                                let target = dname_target(&r.data)?;
                                let synth = substitute(&current, &r.name, &target)?;
                                Some((r.clone(), synth))
                            });
                            if let Some((record, synth)) = dname {
                                let cname = Record::from_rdata(
                                    current.clone(),
                                    record.ttl,
                                    RData::CNAME(CNAME(synth.clone())),
                                );
                                answers.push(record);
                                answers.push(cname);
                                follow(&mut current, synth)?;
                                continue;
                            }
                            if let Some(record) = records
                                .iter()
                                .find(|r| r.record_type() == RecordType::CNAME && r.name == current)
                                && let RData::CNAME(CNAME(target)) = &record.data
                            {
                                answers.push(record.clone());
                                follow(&mut current, target.clone())?;
                                continue;
                            }
                            break;
                        }
                        if current == before {
                            // Records at the name, none of the type and no alias: NODATA.
                            return Ok(conclusion(ResponseCode::NoError, answers, None));
                        }
                    }
                }
            }
        })
    }

    /// Walk down from the closest known cut towards `name`, with QNAME minimisation.
    async fn iterate(
        &self,
        name: &Name,
        record_type: RecordType,
        depth: u8,
        work: &mut Work,
    ) -> Result<Outcome, ResolveError> {
        let config = &self.inner.config;
        let (mut zone, mut ns_names) = self.inner.cache.closest_cut(name).unwrap_or_else(|| {
            let names = self
                .inner
                .roots
                .servers()
                .iter()
                .map(|server| server.name.to_lowercase())
                .collect();
            (Name::root(), names)
        });
        let mode = config.qname_minimisation;
        let mut minimise = mode != QnameMinimisation::Off;
        let mut next_labels = zone.num_labels() + 1;
        loop {
            check_deadline(work)?;
            let minimised = minimise
                && next_labels < name.num_labels()
                && work.minimisation_queries < config.max_minimisation_queries;
            let (sent_name, sent_type) = if minimised {
                work.minimisation_queries += 1;
                (name.trim_to(usize::from(next_labels)), RecordType::A)
            } else {
                (name.clone(), record_type)
            };
            let reply = self
                .ask_zone(&zone, &ns_names, &sent_name, sent_type, depth, work)
                .await?;
            let message = &reply.message;
            let soa = message
                .authorities
                .iter()
                .find(|r| r.record_type() == RecordType::SOA)
                .cloned();
            // A server of `zone` that answers authoritatively with the SOA of a zone below it
            // hosts that child zone too: remember the cut, so later questions under the child
            // start there instead of walking down from `zone` again.
            if message.metadata.authoritative
                && let Some(soa) = &soa
                && soa.name.num_labels() > zone.num_labels()
                && zone.zone_of(&soa.name)
                && soa.name.zone_of(&sent_name)
            {
                self.inner
                    .cache
                    .insert_learned_cut(&soa.name, &ns_names, soa.ttl);
            }
            let record_trace = work.record_trace;
            let mut step = |outcome: StepOutcome| {
                if !record_trace {
                    return;
                }
                work.trace.push(TraceStep {
                    depth,
                    zone: zone.clone(),
                    server: reply.server,
                    qname: sent_name.clone(),
                    qtype: sent_type,
                    outcome,
                    elapsed: reply.elapsed,
                    over_tcp: reply.over_tcp,
                });
            };

            if message.metadata.response_code == ResponseCode::NXDomain {
                step(StepOutcome::NxDomain);
                if minimised && mode == QnameMinimisation::Relaxed {
                    minimise = false;
                    continue;
                }
                self.inner.cache.insert_nxdomain(&sent_name, soa.clone());
                return Ok(Outcome::NxDomain(soa));
            }
            if let Some((cut, servers)) = referral(message, &zone, &sent_name) {
                if record_trace {
                    step(StepOutcome::Referral {
                        zone: cut.clone(),
                        servers: servers.clone(),
                    });
                }
                self.cache_referral(message, &cut, &servers);
                zone = cut;
                ns_names = servers;
                next_labels = zone.num_labels() + 1;
                continue;
            }
            if !message.answers.is_empty() {
                step(StepOutcome::Answer {
                    records: message.answers.len(),
                });
                if minimised {
                    // The name exists here and is no cut. An alias means the rest of the name
                    // is elsewhere: ask the full question instead.
                    if message
                        .answers
                        .iter()
                        .any(|r| matches!(r.record_type(), RecordType::CNAME | RecordType::DNAME))
                    {
                        minimise = false;
                    } else {
                        next_labels += 1;
                    }
                    continue;
                }
                for rrset in group_rrsets(&message.answers) {
                    self.inner.cache.insert_rrset(rrset, Rank::Answer);
                }
                return Ok(Outcome::Answer(message.answers.clone()));
            }
            step(StepOutcome::NoData);
            if minimised {
                next_labels += 1;
                continue;
            }
            self.inner
                .cache
                .insert_nodata(name, record_type, soa.clone());
            return Ok(Outcome::NoData(soa));
        }
    }

    /// Store a referral's NS set and the glue for its NS names (scrubbing already kept only
    /// addresses inside the delegating zone).
    fn cache_referral(&self, message: &Message, cut: &Name, servers: &[Name]) {
        let ns_records: Vec<Record> = message
            .authorities
            .iter()
            .filter(|r| r.record_type() == RecordType::NS && r.name == *cut)
            .cloned()
            .collect();
        self.inner.cache.insert_rrset(ns_records, Rank::Referral);
        let glue: Vec<Record> = message
            .additionals
            .iter()
            .filter(|r| servers.contains(&r.name))
            .cloned()
            .collect();
        for rrset in group_rrsets(&glue) {
            self.inner.cache.insert_rrset(rrset, Rank::Glue);
        }
    }

    /// Addresses we know for an NS name: the cache (answers or glue), or the root hints.
    fn addresses_of(&self, ns: &Name) -> Vec<IpAddr> {
        let mut addresses = self.inner.cache.addresses(ns);
        if addresses.is_empty()
            && let Some(hinted) = self.inner.root_addresses.get(&ns.to_lowercase())
        {
            addresses.extend(hinted);
        }
        addresses
    }

    /// Ask servers of `zone` until one gives a usable (scrubbed, non-lame) reply. Resolves
    /// glueless NS names as nested work when no address is known.
    async fn ask_zone(
        &self,
        zone: &Name,
        ns_names: &[Name],
        name: &Name,
        record_type: RecordType,
        depth: u8,
        work: &mut Work,
    ) -> Result<Reply, ResolveError> {
        let config = &self.inner.config;
        // At most one entry per query sent (max_queries_per_resolution, 100 by default), and
        // usually one or two: a Vec searched in place costs less than a hashed set, and
        // nothing until the first push.
        let mut tried: Vec<IpAddr> = Vec::new();
        // Servers whose last query here went unanswered; each round, they are asked again.
        let mut unanswered: Vec<IpAddr> = Vec::new();
        let mut rounds = 1;
        let mut looked_up: Vec<Name> = Vec::new();
        let mut refused_counted = false;
        let mut failures: Vec<String> = Vec::new();
        loop {
            check_deadline(work)?;
            let mut candidates = Vec::new();
            for ns in ns_names {
                for ip in self.addresses_of(ns) {
                    if !self.inner.policy.permits(ip) {
                        if !refused_counted {
                            self.inner.stats.add_refused_address();
                            failures.push(format!("{ip} refused by policy"));
                        }
                        continue;
                    }
                    if !tried.contains(&ip) && !candidates.contains(&ip) {
                        candidates.push(ip);
                    }
                }
            }
            refused_counted = true;

            let Some(ip) = self.inner.servers.choose(&candidates) else {
                // No address left to try: resolve an NS name we have no address for.
                let pending = ns_names
                    .iter()
                    .find(|ns| !looked_up.contains(*ns) && self.addresses_of(ns).is_empty());
                let Some(ns) = pending.cloned() else {
                    // Every server has been asked. Those that did not answer at all get another
                    // round, with timeouts doubled by their failure: one lost datagram to a
                    // zone's only server would otherwise fail the resolution after the 50 ms an
                    // RTT-based timeout may be. Not a server that has failed that many times
                    // in a row already, over all resolutions: it is down, not unlucky, and
                    // asking it again would only multiply the load on it and the wait.
                    unanswered.retain(|ip| {
                        self.inner.servers.failures_since_reply(*ip) < MAX_ROUNDS_PER_ZONE
                    });
                    if !unanswered.is_empty() && rounds < MAX_ROUNDS_PER_ZONE {
                        rounds += 1;
                        tried.retain(|ip| !unanswered.contains(ip));
                        unanswered.clear();
                        continue;
                    }
                    return Err(no_server(
                        zone,
                        &if failures.is_empty() {
                            "no server address known".to_string()
                        } else {
                            failures.join("; ")
                        },
                    ));
                };
                looked_up.push(ns.clone());
                // IPv4 first when enabled; AAAA if that found nothing and IPv6 is on.
                let address_types = [
                    (config.do_ip4, RecordType::A),
                    (config.do_ip6, RecordType::AAAA),
                ];
                for (_, address_type) in address_types.into_iter().filter(|(on, _)| *on) {
                    if !self.addresses_of(&ns).is_empty() {
                        break;
                    }
                    let key = (ns.to_lowercase(), address_type);
                    if depth + 1 >= config.max_depth || work.in_progress.contains(&key) {
                        failures.push(format!("{ns}: nested too deep or a cycle"));
                        break;
                    }
                    work.in_progress.push(key);
                    let nested = self
                        .resolve_at(ns.clone(), address_type, depth + 1, work)
                        .await;
                    work.in_progress.pop();
                    match nested {
                        Err(
                            err @ (ResolveError::Timeout { .. }
                            | ResolveError::QueryBudgetExhausted { .. }),
                        ) => return Err(err),
                        Err(err) => failures.push(format!("{ns} {address_type}: {err}")),
                        Ok(_) => {}
                    }
                }
                continue;
            };
            tried.push(ip);
            if work.queries >= config.max_queries_per_resolution {
                return Err(ResolveError::QueryBudgetExhausted {
                    limit: config.max_queries_per_resolution,
                });
            }
            work.queries += 1;
            let server = SocketAddr::new(ip, config.authority_port);
            let mut sent_name = name.clone();
            if config.use_0x20 {
                sent_name.randomize_label_case();
            }
            let remaining = work.deadline.saturating_duration_since(Instant::now());
            // Wait as long as this server's measured RTT warrants (bounded by the configured
            // query timeout), so a lost datagram to a fast server costs milliseconds, not the
            // whole configured timeout; TCP after a truncated reply gets the configured one.
            let max_timeout = Duration::from_millis(config.query_timeout_ms);
            let timeout = self
                .inner
                .servers
                .query_timeout(ip, max_timeout)
                .min(remaining);
            let tcp_timeout = max_timeout.min(remaining);
            let started = Instant::now();
            let mut fail = |work: &mut Work, outcome: StepOutcome| {
                failures.push(format!("{server}: {outcome}"));
                if !work.record_trace {
                    return;
                }
                work.trace.push(TraceStep {
                    depth,
                    zone: zone.clone(),
                    server,
                    qname: sent_name.clone(),
                    qtype: record_type,
                    outcome,
                    elapsed: started.elapsed(),
                    over_tcp: false,
                });
            };
            let query_name = &sent_name;
            let ask = |timeout: Duration, tcp_timeout: Duration| async move {
                self.inner.stats.add_upstream_query();
                let result = exchange(
                    server,
                    query_name,
                    record_type,
                    config.edns_buffer_size,
                    timeout,
                    tcp_timeout,
                    &self.inner.stats,
                )
                .await;
                if let Err(ExchangeError::Timeout(_)) = &result {
                    self.inner.stats.add_upstream_timeout();
                }
                result
            };
            // A follower waits as long as its resolution may: the sender's own exchange is
            // bounded (UDP, then TCP after a truncated reply, each with its timeout), and if
            // the sender is cancelled the wait ends at once.
            let wait_until = tokio::time::Instant::from_std(work.deadline);
            let (result, sent) = loop {
                match self.inner.exchanges.join(server, name, record_type) {
                    Role::Leader(leader) => {
                        // After waiting for a cancelled sender, less time is left than when
                        // the timeouts were worked out.
                        let left = work.deadline.saturating_duration_since(Instant::now());
                        let result = ask(timeout.min(left), tcp_timeout.min(left)).await;
                        leader.finish(&result);
                        break (result, true);
                    }
                    Role::Follower(follower) => {
                        match tokio::time::timeout_at(wait_until, follower).await {
                            Ok(Ok(shared)) => break (shared.map_err(ExchangeError::Shared), false),
                            // The sender was cancelled before its reply came: join again, and
                            // send the query if nobody else has by now.
                            Ok(Err(_)) => {}
                            Err(_) => {
                                let reason = "no reply to the identical query in flight before \
                                              the resolution's deadline";
                                break (Err(ExchangeError::Shared(reason.to_string())), false);
                            }
                        }
                    }
                }
            };
            // `sent`: this resolution's own query, whose outcome also rates the server; a
            // shared one was rated by the resolution that sent it.
            if sent {
                work.sent += 1;
            }
            let rate_failure = || {
                if sent {
                    self.inner.servers.record_failure(ip, timeout);
                }
            };
            let exchanged = match result {
                Ok(exchanged) => exchanged,
                Err(err) => {
                    // Only this resolution's own query: a shared one that timed out was
                    // another resolution's to retry.
                    if sent && matches!(err, ExchangeError::Timeout(_)) {
                        unanswered.push(ip);
                    }
                    rate_failure();
                    fail(
                        work,
                        StepOutcome::Failed {
                            reason: err.to_string(),
                        },
                    );
                    continue;
                }
            };
            let mut message = exchanged.message;
            let rcode = message.metadata.response_code;
            if rcode != ResponseCode::NoError && rcode != ResponseCode::NXDomain {
                rate_failure();
                fail(
                    work,
                    StepOutcome::Lame {
                        reason: rcode_mnemonic(rcode),
                    },
                );
                continue;
            }
            scrub(&mut message, zone, name);
            if let Some(reason) = lameness(&message, zone) {
                rate_failure();
                fail(work, StepOutcome::Lame { reason });
                continue;
            }
            if sent {
                self.inner.servers.record_reply(ip, exchanged.rtt);
            }
            return Ok(Reply {
                message,
                server,
                elapsed: exchanged.rtt,
                over_tcp: exchanged.over_tcp,
            });
        }
    }
}

fn check_deadline(work: &Work) -> Result<(), ResolveError> {
    if Instant::now() >= work.deadline {
        return Err(ResolveError::Timeout {
            elapsed_ms: u64::try_from(work.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        });
    }
    Ok(())
}

fn no_server(zone: &Name, detail: &str) -> ResolveError {
    ResolveError::NoUsableServer {
        zone: zone.to_string(),
        detail: detail.to_string(),
    }
}

fn conclusion(rcode: ResponseCode, answers: Vec<Record>, soa: Option<Record>) -> Conclusion {
    Conclusion {
        rcode,
        answers,
        authorities: soa.into_iter().collect(),
    }
}

/// A downward referral: no answer, NS records for a zone strictly below `zone` that encloses
/// the name asked. Returns the cut and its NS names.
fn referral(message: &Message, zone: &Name, asked: &Name) -> Option<(Name, Vec<Name>)> {
    if !message.answers.is_empty() || message.metadata.response_code != ResponseCode::NoError {
        return None;
    }
    let mut cut: Option<Name> = None;
    let mut servers = Vec::new();
    for record in &message.authorities {
        let RData::NS(ns) = &record.data else {
            continue;
        };
        let owner = record.name.to_lowercase();
        if owner == *zone || !zone.zone_of(&owner) || !owner.zone_of(asked) {
            continue;
        }
        match &cut {
            Some(existing) if *existing != owner => continue,
            Some(_) => {}
            None => cut = Some(owner),
        }
        let target = ns.0.to_lowercase();
        if !servers.contains(&target) {
            servers.push(target);
        }
    }
    cut.map(|cut| (cut, servers))
}

/// Why a scrubbed reply shows the server is not really authoritative for `zone`, if it does.
fn lameness(message: &Message, zone: &Name) -> Option<String> {
    let has_soa = message
        .authorities
        .iter()
        .any(|r| r.record_type() == RecordType::SOA);
    if !message.answers.is_empty() && !message.metadata.authoritative {
        return Some("answer without the AA flag".into());
    }
    if message.answers.is_empty()
        && !has_soa
        && message
            .authorities
            .iter()
            .any(|r| r.record_type() == RecordType::NS && r.name == *zone)
    {
        return Some(format!("referral to {zone} itself"));
    }
    if message.answers.is_empty()
        && message.authorities.is_empty()
        && !message.metadata.authoritative
    {
        return Some("empty non-authoritative reply (upward referral?)".into());
    }
    None
}

/// Split records into RRsets by (name, type), keeping order.
fn group_rrsets(records: &[Record]) -> Vec<Vec<Record>> {
    let mut groups: Vec<Vec<Record>> = Vec::new();
    for record in records {
        match groups.iter_mut().find(|group| {
            group[0].name == record.name && group[0].record_type() == record.record_type()
        }) {
            Some(group) => group.push(record.clone()),
            None => groups.push(vec![record.clone()]),
        }
    }
    groups
}
