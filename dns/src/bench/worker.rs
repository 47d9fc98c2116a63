//! One socket (UDP) or one connection (TCP), driven by one thread: send while the window or the
//! rate allows, match replies to queries by ID, and expire what has waited too long.

use std::{
    collections::VecDeque,
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;

use super::{BenchConfig, BenchError, BenchQuery, LiveStats, Transport};

/// How long a blocking receive waits before the loop looks at the clock again. Short enough that
/// timeouts and paced sends stay accurate; long enough not to spin.
const CLOSED_LOOP_TICK: Duration = Duration::from_millis(10);
const OPEN_LOOP_TICK: Duration = Duration::from_millis(1);
/// Never have more queries outstanding on one socket than there are IDs to tell them apart.
const MAX_OUTSTANDING_PER_SOCKET: usize = 60_000;
/// Latency range the histogram can hold: 1 µs to 60 s at 3 significant digits.
const MAX_LATENCY_MICROS: u64 = 60_000_000;

/// State every worker shares.
#[derive(Debug)]
pub(super) struct Shared<'a> {
    pub(super) config: &'a BenchConfig,
    pub(super) queries: &'a [BenchQuery],
    pub(super) live: &'a LiveStats,
    pub(super) tickets: AtomicU64,
    pub(super) deadline: Option<Instant>,
}

impl Shared<'_> {
    /// The next query to send, or `None` once the run has sent enough or run long enough.
    fn next_query(&self, now: Instant) -> Option<&BenchQuery> {
        if self.deadline.is_some_and(|deadline| now >= deadline) {
            return None;
        }
        let ticket = self.tickets.fetch_add(1, Ordering::Relaxed);
        if let super::Stop::Count(limit) = self.config.stop
            && ticket >= limit
        {
            return None;
        }
        let index = (ticket % self.queries.len() as u64) as usize;
        self.queries.get(index)
    }
}

/// This worker's part of the load.
#[derive(Debug, Clone, Copy)]
pub(super) enum Share {
    /// Queries kept outstanding.
    Window(usize),
    /// Queries per second.
    Rate(f64),
}

/// What one worker saw; merged into the report.
#[derive(Debug, Clone)]
pub(super) struct WorkerStats {
    pub(super) sent: u64,
    pub(super) answered: u64,
    pub(super) lost: u64,
    pub(super) late_replies: u64,
    pub(super) rcodes: [u64; 16],
    pub(super) latency_micros: Histogram<u64>,
    pub(super) last_answer: Option<Instant>,
}

impl WorkerStats {
    pub(super) fn new() -> Self {
        Self {
            sent: 0,
            answered: 0,
            lost: 0,
            late_replies: 0,
            rcodes: [0; 16],
            // The bounds are constants that hdrhistogram accepts (low >= 1, high >= 2 * low).
            latency_micros: Histogram::new_with_bounds(1, MAX_LATENCY_MICROS, 3)
                .unwrap_or_else(|_| unreachable!("constant histogram bounds are valid")),
            last_answer: None,
        }
    }

    pub(super) fn merge(&mut self, other: &Self) {
        self.sent += other.sent;
        self.answered += other.answered;
        self.lost += other.lost;
        self.late_replies += other.late_replies;
        for (mine, theirs) in self.rcodes.iter_mut().zip(other.rcodes) {
            *mine += theirs;
        }
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.latency_micros.add(&other.latency_micros);
        self.last_answer = self.last_answer.max(other.last_answer);
    }
}

/// A query waiting for its reply.
#[derive(Debug, Clone, Copy)]
struct Pending {
    sent_at: Instant,
    /// Distinguishes this query from an earlier one that used the same ID.
    sequence: u64,
}

/// Outstanding queries by ID, plus their send order so the oldest is found in O(1).
#[derive(Debug)]
struct Outstanding {
    by_id: Vec<Option<Pending>>,
    order: VecDeque<(u16, u64)>,
    count: usize,
    next_id: u16,
    next_sequence: u64,
}

impl Outstanding {
    fn new() -> Self {
        Self {
            by_id: vec![None; usize::from(u16::MAX) + 1],
            order: VecDeque::new(),
            count: 0,
            next_id: rand::random(),
            next_sequence: 0,
        }
    }

    /// Take a free ID for a query sent now. IDs cycle through all 65536 values, so a late reply
    /// to a lost query is very unlikely to meet a new query with the same ID.
    fn add(&mut self, sent_at: Instant) -> u16 {
        while self.by_id[usize::from(self.next_id)].is_some() {
            self.next_id = self.next_id.wrapping_add(1);
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        self.by_id[usize::from(id)] = Some(Pending { sent_at, sequence });
        self.order.push_back((id, sequence));
        self.count += 1;
        id
    }

    /// The query with this ID, if one is waiting; it stops waiting.
    fn take(&mut self, id: u16) -> Option<Pending> {
        let pending = self.by_id[usize::from(id)].take()?;
        self.count -= 1;
        Some(pending)
    }

    /// Give up on queries sent before `cutoff`; returns how many.
    fn expire(&mut self, cutoff: Instant) -> u64 {
        let mut expired = 0;
        while let Some(&(id, sequence)) = self.order.front() {
            match self.by_id[usize::from(id)] {
                Some(pending) if pending.sequence == sequence => {
                    if pending.sent_at > cutoff {
                        break;
                    }
                    self.by_id[usize::from(id)] = None;
                    self.count -= 1;
                    expired += 1;
                }
                // Answered already, or the ID now belongs to a newer query.
                _ => {}
            }
            self.order.pop_front();
        }
        expired
    }

    /// Give up on everything (the TCP connection went away).
    fn expire_all(&mut self) -> u64 {
        let expired = self.count as u64;
        self.by_id.iter_mut().for_each(|slot| *slot = None);
        self.order.clear();
        self.count = 0;
        expired
    }
}

/// The two transports behind one interface: send a query, receive the next reply.
enum Link {
    Udp(UdpSocket),
    Tcp {
        stream: TcpStream,
        read_buffer: Vec<u8>,
        /// How much of `read_buffer` holds bytes received but not yet consumed.
        filled: usize,
        /// Where the next unread frame starts.
        consumed: usize,
    },
}

/// What a receive attempt produced.
enum Received {
    /// A whole DNS message of this length, at the start of the message buffer.
    Message(usize),
    /// Nothing before the tick ended.
    Nothing,
    /// The TCP peer closed the connection or broke framing.
    Closed,
}

impl Link {
    fn open(server: SocketAddr, transport: Transport, tick: Duration) -> Result<Self, BenchError> {
        let connect_error = |transport: &'static str| {
            move |source| BenchError::Connect {
                server,
                transport,
                source,
            }
        };
        match transport {
            Transport::Udp => {
                let local: SocketAddr = if server.is_ipv4() {
                    (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
                } else {
                    (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                };
                let socket = UdpSocket::bind(local).map_err(connect_error("UDP"))?;
                socket.connect(server).map_err(connect_error("UDP"))?;
                socket
                    .set_read_timeout(Some(tick))
                    .map_err(connect_error("UDP"))?;
                Ok(Self::Udp(socket))
            }
            Transport::Tcp => {
                let stream = TcpStream::connect_timeout(&server, Duration::from_secs(5))
                    .map_err(connect_error("TCP"))?;
                stream.set_nodelay(true).map_err(connect_error("TCP"))?;
                stream
                    .set_read_timeout(Some(tick))
                    .map_err(connect_error("TCP"))?;
                Ok(Self::Tcp {
                    stream,
                    read_buffer: vec![0; 2 * (usize::from(u16::MAX) + 2)],
                    filled: 0,
                    consumed: 0,
                })
            }
        }
    }

    /// Queue one query; TCP writes are batched by `flush`.
    fn send(&mut self, wire: &[u8], write_buffer: &mut Vec<u8>) -> io::Result<()> {
        match self {
            Self::Udp(socket) => socket.send(wire).map(drop),
            Self::Tcp { .. } => {
                // Queries come from our own encoder and are far below 64 KiB.
                let length = u16::try_from(wire.len()).unwrap_or(u16::MAX);
                write_buffer.extend_from_slice(&length.to_be_bytes());
                write_buffer.extend_from_slice(wire);
                Ok(())
            }
        }
    }

    /// Write the queued TCP queries in one go (pipelining).
    fn flush(&mut self, write_buffer: &mut Vec<u8>) -> io::Result<()> {
        if let Self::Tcp { stream, .. } = self
            && !write_buffer.is_empty()
        {
            stream.write_all(write_buffer)?;
        }
        write_buffer.clear();
        Ok(())
    }

    /// Receive into `message`, which holds the largest DNS message (64 KiB).
    fn receive(&mut self, message: &mut [u8]) -> io::Result<Received> {
        match self {
            Self::Udp(socket) => match socket.recv(message) {
                Ok(length) => Ok(Received::Message(length)),
                Err(err) if is_quiet(&err) => Ok(Received::Nothing),
                Err(err) => Err(err),
            },
            Self::Tcp {
                stream,
                read_buffer,
                filled,
                consumed,
            } => loop {
                let available = &read_buffer[*consumed..*filled];
                if available.len() >= 2 {
                    let length = usize::from(u16::from_be_bytes([available[0], available[1]]));
                    if available.len() >= 2 + length {
                        message[..length].copy_from_slice(&available[2..2 + length]);
                        *consumed += 2 + length;
                        return Ok(Received::Message(length));
                    }
                }
                // Move the partial frame to the front so a whole frame always fits.
                read_buffer.copy_within(*consumed..*filled, 0);
                *filled -= *consumed;
                *consumed = 0;
                match stream.read(&mut read_buffer[*filled..]) {
                    Ok(0) => return Ok(Received::Closed),
                    Ok(read) => *filled += read,
                    Err(err) if is_quiet(&err) => return Ok(Received::Nothing),
                    Err(err) if is_disconnect(&err) => return Ok(Received::Closed),
                    Err(err) => return Err(err),
                }
            },
        }
    }
}

/// Errors that only mean "nothing arrived in time" or "the last datagram bounced".
fn is_quiet(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock
            | io::ErrorKind::TimedOut
            | io::ErrorKind::Interrupted
            | io::ErrorKind::ConnectionRefused
    )
}

fn is_disconnect(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
    )
}

pub(super) fn run(shared: &Shared<'_>, share: Share) -> Result<WorkerStats, BenchError> {
    let config = shared.config;
    let tick = match share {
        Share::Window(_) => CLOSED_LOOP_TICK,
        Share::Rate(_) => OPEN_LOOP_TICK,
    };
    let mut link = Link::open(config.server, config.transport, tick)?;
    let mut stats = WorkerStats::new();
    let mut outstanding = Outstanding::new();
    let mut query_buffer = Vec::with_capacity(512);
    let mut write_buffer = Vec::new();
    let mut message = vec![0u8; usize::from(u16::MAX)];
    let mut done_sending = false;
    let start = Instant::now();
    let mut paced_sends: u64 = 0;
    let io_error = |source| BenchError::Io {
        server: config.server,
        source,
    };

    loop {
        let now = Instant::now();
        if let Some(cutoff) = now.checked_sub(config.timeout) {
            let expired = outstanding.expire(cutoff);
            record_lost(&mut stats, shared.live, expired);
        }

        if !done_sending {
            let mut allowed = match share {
                Share::Window(window) => window
                    .min(MAX_OUTSTANDING_PER_SOCKET)
                    .saturating_sub(outstanding.count),
                Share::Rate(rate) => {
                    // Sends owed by now on a fixed schedule, so a slow loop catches up.
                    let owed = (now.duration_since(start).as_secs_f64() * rate) as u64 + 1;
                    let due = owed.saturating_sub(paced_sends) as usize;
                    due.min(MAX_OUTSTANDING_PER_SOCKET.saturating_sub(outstanding.count))
                }
            };
            while allowed > 0 {
                let Some(query) = shared.next_query(now) else {
                    done_sending = true;
                    break;
                };
                allowed -= 1;
                paced_sends += 1;
                let id = outstanding.add(Instant::now());
                query_buffer.clear();
                query_buffer.extend_from_slice(&query.wire);
                query_buffer[..2].copy_from_slice(&id.to_be_bytes());
                stats.sent += 1;
                shared.live.sent.fetch_add(1, Ordering::Relaxed);
                if let Err(err) = link.send(&query_buffer, &mut write_buffer) {
                    // A refused or dropped datagram is a lost query, not a failed run.
                    tracing::debug!(error = %err, "send failed; counting the query as lost");
                    outstanding.take(id);
                    record_lost(&mut stats, shared.live, 1);
                }
            }
            if let Err(err) = link.flush(&mut write_buffer) {
                if !is_disconnect(&err) {
                    return Err(io_error(err));
                }
                let expired = outstanding.expire_all();
                record_lost(&mut stats, shared.live, expired);
                link = reconnect(config, tick)?;
            }
        }

        if done_sending && outstanding.count == 0 {
            return Ok(stats);
        }

        match link.receive(&mut message).map_err(io_error)? {
            Received::Nothing => {}
            Received::Closed => {
                let expired = outstanding.expire_all();
                record_lost(&mut stats, shared.live, expired);
                if done_sending {
                    return Ok(stats);
                }
                link = reconnect(config, tick)?;
            }
            Received::Message(length) => {
                let message = &message[..length];
                // Not a reply (too short, or the QR bit unset): ignore it like a stray datagram.
                if message.len() < 12 || message[2] & 0x80 == 0 {
                    continue;
                }
                let id = u16::from_be_bytes([message[0], message[1]]);
                match outstanding.take(id) {
                    Some(pending) => {
                        let answered_at = Instant::now();
                        let micros = answered_at.duration_since(pending.sent_at).as_micros();
                        let micros = u64::try_from(micros).unwrap_or(MAX_LATENCY_MICROS).max(1);
                        stats.latency_micros.saturating_record(micros);
                        stats.rcodes[usize::from(message[3] & 0x0F)] += 1;
                        stats.answered += 1;
                        stats.last_answer = Some(answered_at);
                        shared.live.answered.fetch_add(1, Ordering::Relaxed);
                    }
                    None => stats.late_replies += 1,
                }
            }
        }
    }
}

fn reconnect(config: &BenchConfig, tick: Duration) -> Result<Link, BenchError> {
    tracing::debug!(server = %config.server, "connection closed by the server; reconnecting");
    Link::open(config.server, config.transport, tick)
}

fn record_lost(stats: &mut WorkerStats, live: &LiveStats, lost: u64) {
    if lost > 0 {
        stats.lost += lost;
        live.lost.fetch_add(lost, Ordering::Relaxed);
    }
}
