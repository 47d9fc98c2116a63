//! One socket (UDP, a sender and a receiver thread) or one connection (TCP, one thread): send
//! while the window or the rate allows, match replies to queries by ID, and expire what has
//! waited too long.

use std::{
    collections::VecDeque,
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    sync::{
        Barrier, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;

use super::{AnsweredQuery, BenchConfig, BenchError, BenchQuery, LiveStats, Transport};
use crate::packet_cache::{HEADER_LEN, question_name_end};

/// How long a worker waits for a reply (or a UDP sender for a free slot) before it looks at the
/// clock again. Short enough that timeouts and paced sends stay accurate; long enough not to
/// spin.
const CLOSED_LOOP_TICK: Duration = Duration::from_millis(10);
const OPEN_LOOP_TICK: Duration = Duration::from_millis(1);
/// Never have more queries outstanding on one socket than there are IDs to tell them apart.
pub(super) const MAX_OUTSTANDING_PER_SOCKET: usize = 60_000;
/// Latency range the histogram can hold: 1 µs to 60 s at 3 significant digits.
const MAX_LATENCY_MICROS: u64 = 60_000_000;

/// State every worker shares.
#[derive(Debug)]
pub(super) struct Shared<'a> {
    pub(super) config: &'a BenchConfig,
    pub(super) queries: &'a [BenchQuery],
    pub(super) live: &'a LiveStats,
    pub(super) tickets: AtomicU64,
    /// Every worker waits here once its socket is open and its memory touched, so the clock
    /// starts when all of them can send, not while some are still setting up.
    pub(super) ready: Barrier,
    /// When the run started: the moment the workers left `ready`.
    pub(super) started: OnceLock<Instant>,
}

/// Tickets (query numbers) a worker claims at once: one shared atomic add per this many
/// queries instead of one per query, so the workers do not contend on a cache line.
const TICKET_CHUNK: u64 = 16;
/// How often a worker adds its counts to the live progress counters.
const PUBLISH_EVERY: Duration = Duration::from_millis(20);
/// Replies read per `recvmmsg` call (UDP).
pub(super) const RECEIVE_BATCH: usize = 32;
/// Bytes kept of each reply: the header is all the generator reads, and a longer datagram is
/// still one whole (if cut) reply.
const REPLY_SLOT: usize = 4096;

impl Shared<'_> {
    /// The run's start, fixed by the first worker to ask after leaving `ready`.
    fn start(&self) -> Instant {
        *self.started.get_or_init(Instant::now)
    }

    /// Whether a `--duration` run has reached the time it stops sending.
    fn past_deadline(&self, now: Instant) -> bool {
        match self.config.stop {
            super::Stop::Duration(duration) => now >= self.start() + duration,
            super::Stop::Count(_) => false,
        }
    }

    /// Claim the next `chunk` tickets, or `None` once the run has sent enough or run long
    /// enough.
    fn claim(&self, now: Instant, chunk: u64) -> Option<std::ops::Range<u64>> {
        if self.past_deadline(now) {
            return None;
        }
        let start = self.tickets.fetch_add(chunk, Ordering::Relaxed);
        let end = match self.config.stop {
            super::Stop::Count(limit) if start >= limit => return None,
            super::Stop::Count(limit) => (start + chunk).min(limit),
            super::Stop::Duration(_) => start + chunk,
        };
        Some(start..end)
    }

    /// The query a ticket stands for, with its index in the query file.
    fn query(&self, ticket: u64) -> Option<(usize, &BenchQuery)> {
        let index = (ticket % self.queries.len() as u64) as usize;
        Some((index, self.queries.get(index)?))
    }
}

/// A worker's tickets and its counts not yet added to the live progress counters.
#[derive(Debug)]
struct Local {
    tickets: std::ops::Range<u64>,
    /// Tickets claimed at once: [`TICKET_CHUNK`] in a closed loop; one at an open loop's rate,
    /// where each ticket is also a time to send at, so the sockets take them in turn and
    /// together keep the whole rate however few queries there are.
    chunk: u64,
    unpublished_sent: u64,
    unpublished_answered: u64,
    published_at: Instant,
}

impl Local {
    fn new(start: Instant, share: Share) -> Self {
        Self {
            tickets: 0..0,
            chunk: match share {
                Share::Window(_) => TICKET_CHUNK,
                Share::Rate(_) => 1,
            },
            unpublished_sent: 0,
            unpublished_answered: 0,
            published_at: start,
        }
    }

    /// Publish if the last time was [`PUBLISH_EVERY`] ago.
    fn publish_every(&mut self, live: &LiveStats, now: Instant) {
        if now.duration_since(self.published_at) >= PUBLISH_EVERY {
            self.publish(live);
            self.published_at = now;
        }
    }

    /// The ticket of the next query to send, claimed if this worker holds none, without
    /// taking it; `None` once the run is over.
    fn next_ticket(&mut self, shared: &Shared<'_>, now: Instant) -> Option<u64> {
        if shared.past_deadline(now) {
            return None;
        }
        if self.tickets.is_empty() {
            self.tickets = shared.claim(now, self.chunk)?;
        }
        Some(self.tickets.start)
    }

    /// Whether the next query is due: at once in a closed loop; at an open loop's `rate`, when
    /// its ticket's time on the run's one schedule has come (ticket `k` at `k / rate` seconds
    /// after the start). `None` once the run is over.
    fn next_due(&mut self, shared: &Shared<'_>, share: Share, now: Instant) -> Option<Due> {
        let ticket = self.next_ticket(shared, now)?;
        Some(match share {
            Share::Rate(rate) => {
                let due = shared.start() + Duration::from_secs_f64(ticket as f64 / rate);
                if due > now { Due::At(due) } else { Due::Now }
            }
            Share::Window(_) => Due::Now,
        })
    }

    /// The next query to send, or `None` once the run is over.
    fn next_query<'q>(
        &mut self,
        shared: &'q Shared<'_>,
        now: Instant,
    ) -> Option<(usize, &'q BenchQuery)> {
        let ticket = self.next_ticket(shared, now)?;
        self.tickets.start += 1;
        shared.query(ticket)
    }

    fn publish(&mut self, live: &LiveStats) {
        if self.unpublished_sent > 0 {
            live.sent
                .fetch_add(self.unpublished_sent, Ordering::Relaxed);
        }
        if self.unpublished_answered > 0 {
            live.answered
                .fetch_add(self.unpublished_answered, Ordering::Relaxed);
        }
        self.unpublished_sent = 0;
        self.unpublished_answered = 0;
    }
}

/// This worker's part of the load.
#[derive(Debug, Clone, Copy)]
pub(super) enum Share {
    /// Queries kept outstanding by this worker.
    Window(usize),
    /// The whole run's queries per second: every worker paces the tickets it claims on one
    /// schedule.
    Rate(f64),
}

impl Share {
    /// Queries the worker may have outstanding at once: its window, or at a rate as many as
    /// its socket's IDs can tell apart.
    fn room(self) -> usize {
        match self {
            Self::Window(window) => window.min(MAX_OUTSTANDING_PER_SOCKET),
            Self::Rate(_) => MAX_OUTSTANDING_PER_SOCKET,
        }
    }
}

/// When the next query may go.
enum Due {
    Now,
    At(Instant),
}

/// What one worker saw; merged into the report.
#[derive(Debug, Clone)]
pub(super) struct WorkerStats {
    pub(super) sent: u64,
    pub(super) answered: u64,
    pub(super) lost: u64,
    pub(super) late_replies: u64,
    pub(super) other_question_replies: u64,
    pub(super) rcodes: [u64; 16],
    pub(super) latency_micros: Histogram<u64>,
    pub(super) last_answer: Option<Instant>,
    /// The answered queries kept for the report's log, in the order answered.
    pub(super) answers: Vec<AnsweredQuery>,
    /// Answers not kept because the log was full.
    pub(super) answers_not_logged: u64,
}

impl WorkerStats {
    pub(super) fn new() -> Self {
        Self {
            sent: 0,
            answered: 0,
            lost: 0,
            late_replies: 0,
            other_question_replies: 0,
            rcodes: [0; 16],
            // The bounds are constants that hdrhistogram accepts (low >= 1, high >= 2 * low).
            latency_micros: Histogram::new_with_bounds(1, MAX_LATENCY_MICROS, 3)
                .unwrap_or_else(|_| unreachable!("constant histogram bounds are valid")),
            last_answer: None,
            answers: Vec::new(),
            answers_not_logged: 0,
        }
    }

    pub(super) fn merge(&mut self, mut other: Self) {
        self.sent += other.sent;
        self.answered += other.answered;
        self.lost += other.lost;
        self.late_replies += other.late_replies;
        self.other_question_replies += other.other_question_replies;
        for (mine, theirs) in self.rcodes.iter_mut().zip(other.rcodes) {
            *mine += theirs;
        }
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.latency_micros.add(&other.latency_micros);
        self.last_answer = self.last_answer.max(other.last_answer);
        // Moved, not copied: the logs may hold millions of answers.
        self.answers.append(&mut other.answers);
        self.answers_not_logged += other.answers_not_logged;
    }
}

/// A query waiting for its reply.
#[derive(Debug, Clone, Copy)]
struct Pending {
    sent_at: Instant,
    /// Distinguishes this query from an earlier one that used the same ID.
    sequence: u64,
    /// Its index in the query file.
    query: usize,
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
        let mut by_id = vec![None; usize::from(u16::MAX) + 1];
        // Written through once more, so every page of the table (2 MiB) is faulted in now,
        // before the clock starts, whatever bytes `None` happens to be.
        std::hint::black_box(&mut by_id).fill(None);
        Self {
            by_id,
            order: VecDeque::new(),
            count: 0,
            next_id: rand::random(),
            next_sequence: 0,
        }
    }

    /// Take a free ID for a query sent now. IDs cycle through all 65536 values, so a late reply
    /// to a lost query is very unlikely to meet a new query with the same ID.
    fn add(&mut self, sent_at: Instant, query: usize) -> u16 {
        while self.by_id[usize::from(self.next_id)].is_some() {
            self.next_id = self.next_id.wrapping_add(1);
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        self.by_id[usize::from(id)] = Some(Pending {
            sent_at,
            sequence,
            query,
        });
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

    /// The query `reply` (whose ID is `id`) answers: the one waiting under that ID, if the
    /// reply carries its question; it stops waiting. A reply that arrives after its query was
    /// given up on may meet a newer query that has been given the same ID, and is told from
    /// that query's own reply by the question.
    fn take_reply(&mut self, id: u16, reply: &[u8], queries: &[BenchQuery]) -> Matched {
        let Some(pending) = self.by_id[usize::from(id)] else {
            return Matched::Late;
        };
        let asked = queries
            .get(pending.query)
            .map_or(&[][..], |query| &query.wire);
        if !same_question(reply, asked) {
            return Matched::OtherQuestion;
        }
        self.take(id).map_or(Matched::Late, Matched::Answer)
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

/// Match each reply in `batch` to its waiting query, hand the answers to `answered` with their
/// rcode, and count the late replies and those to another question in `stats`. Datagrams that
/// are not DNS replies are ignored.
fn match_replies(
    batch: &ReplyBatch,
    outstanding: &mut Outstanding,
    queries: &[BenchQuery],
    stats: &mut WorkerStats,
    mut answered: impl FnMut(&mut WorkerStats, Pending, u8),
) {
    for reply in batch.replies() {
        let Some((id, rcode)) = reply_header(reply) else {
            continue;
        };
        match outstanding.take_reply(id, reply, queries) {
            Matched::Answer(pending) => answered(stats, pending, rcode),
            Matched::Late => stats.late_replies += 1,
            Matched::OtherQuestion => stats.other_question_replies += 1,
        }
    }
}

/// What a reply with a known ID turned out to be.
enum Matched {
    /// The reply to a waiting query.
    Answer(Pending),
    /// No query waits under its ID: it came after its query was counted lost.
    Late,
    /// A query waits under its ID, but asked another question.
    OtherQuestion,
}

/// Whether `reply` carries the question of `query`: the same name, in any case (a server may
/// echo it in the case it has it in, or mix the case of its own queries), the same type and
/// class. A reply with no question, as some servers send with an error rcode, matches by ID
/// alone, and so does a `query` without a whole question (only a hand-built [`BenchQuery`]).
fn same_question(reply: &[u8], query: &[u8]) -> bool {
    let Ok(name_end) = question_name_end(query, HEADER_LEN) else {
        return true;
    };
    let Some(asked) = query.get(HEADER_LEN..name_end + 4) else {
        return true;
    };
    if reply.get(4..6) == Some(&[0, 0]) {
        return true;
    }
    let Some(echoed) = reply.get(HEADER_LEN..name_end + 4) else {
        return false;
    };
    let name_len = name_end - HEADER_LEN;
    // Label lengths are below 64, so only the labels' letters are compared without case.
    echoed[..name_len].eq_ignore_ascii_case(&asked[..name_len])
        && echoed[name_len..] == asked[name_len..]
}

/// Replies received by one receive call, each cut to [`REPLY_SLOT`] bytes.
struct ReplyBatch {
    slots: Vec<[u8; REPLY_SLOT]>,
    lengths: [usize; RECEIVE_BATCH],
    count: usize,
}

impl ReplyBatch {
    fn new() -> Self {
        let mut slots = vec![[0; REPLY_SLOT]; RECEIVE_BATCH];
        // Zeroed memory comes from the kernel untouched; writing it faults it in now, not on
        // the first replies.
        for slot in std::hint::black_box(&mut slots).iter_mut() {
            slot.fill(0);
        }
        Self {
            slots,
            lengths: [0; RECEIVE_BATCH],
            count: 0,
        }
    }

    fn replies(&self) -> impl Iterator<Item = &[u8]> {
        self.slots
            .iter()
            .zip(self.lengths)
            .take(self.count)
            .map(|(slot, length)| &slot[..length.min(REPLY_SLOT)])
    }

    fn push(&mut self, message: &[u8]) {
        let kept = message.len().min(REPLY_SLOT);
        self.slots[self.count][..kept].copy_from_slice(&message[..kept]);
        self.lengths[self.count] = kept;
        self.count += 1;
    }
}

/// Take up to `most` (at most [`RECEIVE_BATCH`]) datagrams already queued on a connected
/// socket, in one system call, without waiting; none queued is `Ok(0)`.
fn receive_queued_datagrams(
    socket: &UdpSocket,
    batch: &mut ReplyBatch,
    most: usize,
) -> io::Result<usize> {
    batch.count = 0;
    let mut iovecs: [libc::iovec; RECEIVE_BATCH] = std::array::from_fn(|_| libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    });
    for (iovec, slot) in iovecs.iter_mut().zip(&mut batch.slots) {
        iovec.iov_base = slot.as_mut_ptr().cast();
        iovec.iov_len = REPLY_SLOT;
    }
    // SAFETY: mmsghdr is plain old data; all-zero is valid (null name and control pointers).
    let mut headers: [libc::mmsghdr; RECEIVE_BATCH] = unsafe { std::mem::zeroed() };
    for (header, iovec) in headers.iter_mut().zip(&mut iovecs) {
        header.msg_hdr.msg_iov = iovec;
        header.msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: every header points at one iovec, which points at a live REPLY_SLOT-byte slot of
    // `batch`; none of them moves during the call, and the kernel writes at most those lengths.
    let received = unsafe {
        libc::recvmmsg(
            std::os::fd::AsRawFd::as_raw_fd(socket),
            headers.as_mut_ptr(),
            most.clamp(1, RECEIVE_BATCH) as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    let Ok(received) = usize::try_from(received) else {
        let err = io::Error::last_os_error();
        return if is_quiet(&err) || is_bounce(&err) {
            Ok(0)
        } else {
            Err(err)
        };
    };
    for (length, header) in batch.lengths.iter_mut().zip(&headers).take(received) {
        *length = header.msg_len as usize;
    }
    batch.count = received;
    Ok(received)
}

/// Sleep until a datagram is queued on `socket` or `tick` has passed.
fn wait_readable(socket: &UdpSocket, tick: Duration) {
    let mut poll = libc::pollfd {
        fd: std::os::fd::AsRawFd::as_raw_fd(socket),
        events: libc::POLLIN,
        revents: 0,
    };
    let millis = libc::c_int::try_from(tick.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd, alive for the duration of the call. An error (EINTR) or a
    // timeout only sends the caller round its loop again.
    unsafe { libc::poll(&mut poll, 1, millis) };
}

/// What a receive attempt produced.
enum Received {
    /// Whole DNS messages, in the reply batch.
    Messages,
    /// Nothing before the tick ended.
    Nothing,
    /// The TCP peer closed the connection or broke framing.
    Closed,
}

/// One TCP connection: queries framed by a 2-byte length and written in bursts (pipelining),
/// replies read into a buffer and cut into frames.
struct TcpLink {
    stream: TcpStream,
    read_buffer: Vec<u8>,
    /// How much of `read_buffer` holds bytes received but not yet consumed.
    filled: usize,
    /// Where the next unread frame starts.
    consumed: usize,
}

impl TcpLink {
    fn open(
        server: SocketAddr,
        tick: Duration,
        connect_timeout: Duration,
    ) -> Result<Self, BenchError> {
        let connect_error = |source| BenchError::Connect {
            server,
            transport: "TCP",
            source,
        };
        let stream = TcpStream::connect_timeout(&server, connect_timeout).map_err(connect_error)?;
        stream.set_nodelay(true).map_err(connect_error)?;
        stream.set_read_timeout(Some(tick)).map_err(connect_error)?;
        // So a server that stops reading cannot hold the worker in a write past its deadline
        // and its queries' timeouts.
        stream
            .set_write_timeout(Some(tick))
            .map_err(connect_error)?;
        Ok(Self {
            stream,
            read_buffer: vec![0; 2 * (usize::from(u16::MAX) + 2)],
            filled: 0,
            consumed: 0,
        })
    }

    /// Queue one query under `id`; `flush` writes the queued ones together.
    fn queue(wire: &[u8], id: u16, write_buffer: &mut Vec<u8>) {
        // Queries come from our own encoder and are far below 64 KiB.
        let length = u16::try_from(wire.len()).unwrap_or(u16::MAX);
        write_buffer.extend_from_slice(&length.to_be_bytes());
        append_with_id(write_buffer, wire, id);
    }

    /// Write the queued queries in one go (pipelining), as far as the connection takes them
    /// within about `tick` (each write call times out after a tick, and no new call starts
    /// after one); what it does not take stays queued for the next call. Returns how many
    /// bytes it took.
    fn flush(&mut self, write_buffer: &mut Vec<u8>, tick: Duration) -> io::Result<usize> {
        let started = Instant::now();
        let mut written = 0;
        let mut outcome = Ok(());
        while written < write_buffer.len() && (written == 0 || started.elapsed() < tick) {
            match self.stream.write(&write_buffer[written..]) {
                Ok(0) => {
                    outcome = Err(io::ErrorKind::WriteZero.into());
                    break;
                }
                Ok(count) => written += count,
                Err(err) if is_quiet(&err) => break,
                Err(err) => {
                    outcome = Err(err);
                    break;
                }
            }
        }
        write_buffer.drain(..written);
        outcome.map(|()| written)
    }

    /// Receive one or more replies into `batch`, waiting up to the read timeout.
    fn receive(&mut self, batch: &mut ReplyBatch) -> io::Result<Received> {
        batch.count = 0;
        loop {
            // Every whole frame already read, up to a batch.
            while batch.count < RECEIVE_BATCH {
                let available = &self.read_buffer[self.consumed..self.filled];
                if available.len() < 2 {
                    break;
                }
                let length = usize::from(u16::from_be_bytes([available[0], available[1]]));
                if available.len() < 2 + length {
                    break;
                }
                batch.push(&available[2..2 + length]);
                self.consumed += 2 + length;
            }
            if batch.count > 0 {
                return Ok(Received::Messages);
            }
            // Move the partial frame to the front so a whole frame always fits.
            self.read_buffer.copy_within(self.consumed..self.filled, 0);
            self.filled -= self.consumed;
            self.consumed = 0;
            match self.stream.read(&mut self.read_buffer[self.filled..]) {
                Ok(0) => return Ok(Received::Closed),
                Ok(read) => self.filled += read,
                Err(err) if is_quiet(&err) => return Ok(Received::Nothing),
                Err(err) if is_disconnect(&err) => return Ok(Received::Closed),
                Err(err) => return Err(err),
            }
        }
    }
}

/// Errors that only mean "nothing happened in time".
fn is_quiet(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Errors an ICMP message about an earlier datagram leaves on a connected UDP socket: that
/// datagram's query is lost, and the socket is as good as before.
fn is_bounce(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
    )
}

/// Errors that end a TCP connection but not the run: the worker reconnects.
fn is_disconnect(err: &io::Error) -> bool {
    is_bounce(err)
        || matches!(
            err.kind(),
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof
                | io::ErrorKind::WriteZero
        )
}

/// Run one worker: set up, wait for the others at `shared.ready`, then send and receive until
/// the run is over.
///
/// Set-up stays outside the measured time: opening the socket and faulting in the worker's
/// memory (about 2 MiB: the ID table, the reply buffers, the histogram) used to fall inside it,
/// and made a 1350-question cold batch read 7-15 ms (10-20%) longer than the queries took
/// (docs/benchmarks.md, session 8).
///
/// `answer_log_limit` is this worker's share of [`super::BenchConfig::answer_log_limit`]: it
/// keeps the first that many answers it sees.
pub(super) fn run(
    shared: &Shared<'_>,
    share: Share,
    answer_log_limit: usize,
) -> Result<WorkerStats, BenchError> {
    match shared.config.transport {
        Transport::Udp => run_udp(shared, share, answer_log_limit),
        Transport::Tcp => run_tcp(shared, share, answer_log_limit),
    }
}

/// How long a worker waits for replies before it looks at the clock again.
fn tick_for(share: Share) -> Duration {
    match share {
        Share::Window(_) => CLOSED_LOOP_TICK,
        Share::Rate(_) => OPEN_LOOP_TICK,
    }
}

/// Empty stats for one worker, with their memory faulted in before the clock starts.
fn prepared_stats(config: &BenchConfig, answer_log_limit: usize) -> WorkerStats {
    let mut stats = WorkerStats::new();
    // Clearing writes every count, so the histogram's pages (about 150 KiB) are faulted in now.
    std::hint::black_box(&mut stats.latency_micros).reset();
    if answer_log_limit > 0 {
        // Address space for as many answers as this worker could keep, so the log is never
        // copied to a larger buffer mid-run (how a run spreads over the workers is not known in
        // advance). Only the pages the answers fill get memory, as they arrive.
        let most = match config.stop {
            super::Stop::Count(count) => usize::try_from(count).unwrap_or(usize::MAX),
            super::Stop::Duration(_) => usize::MAX,
        };
        stats.answers.reserve(most.min(answer_log_limit));
    }
    stats
}

/// A reply matched to its query: count its rcode and latency, and log it if there is room.
fn record_answer(
    stats: &mut WorkerStats,
    pending: Pending,
    rcode: u8,
    answered_at: Instant,
    start: Instant,
    answer_log_limit: usize,
) {
    let micros = answered_at.duration_since(pending.sent_at).as_micros();
    let micros = u64::try_from(micros).unwrap_or(MAX_LATENCY_MICROS).max(1);
    stats.latency_micros.saturating_record(micros);
    stats.rcodes[usize::from(rcode & 0x0F)] += 1;
    if stats.answers.len() < answer_log_limit {
        let sent = pending.sent_at.duration_since(start).as_micros();
        stats.answers.push(AnsweredQuery {
            sent_micros: u64::try_from(sent).unwrap_or(u64::MAX),
            latency_micros: micros,
            rcode,
            query: pending.query,
        });
    } else if answer_log_limit > 0 {
        stats.answers_not_logged += 1;
    }
    stats.answered += 1;
    stats.last_answer = Some(answered_at);
}

/// Append the query `wire` to `buffer` with its ID replaced by `id`. A `wire` too short to
/// hold an ID (only a hand-built [`BenchQuery`] can be) goes out as it is.
fn append_with_id(buffer: &mut Vec<u8>, wire: &[u8], id: u16) {
    let at = buffer.len();
    buffer.extend_from_slice(wire);
    if let Some(id_bytes) = buffer.get_mut(at..at + 2) {
        id_bytes.copy_from_slice(&id.to_be_bytes());
    }
}

/// The ID and rcode of a DNS reply, or `None` for anything else (too short, or the QR bit
/// unset), which is ignored like a stray datagram.
fn reply_header(message: &[u8]) -> Option<(u16, u8)> {
    if message.len() < HEADER_LEN || message[2] & 0x80 == 0 {
        return None;
    }
    Some((
        u16::from_be_bytes([message[0], message[1]]),
        message[3] & 0x0F,
    ))
}

/// What a UDP worker's sender and receiver share.
struct UdpState {
    outstanding: Outstanding,
    /// Set once the sender will send no more: it has sent its last query, or the receiver has
    /// stopped (failed).
    done_sending: bool,
}

/// Marks the sending done when dropped, and wakes the sender to see it: each half of a UDP
/// worker holds one, so that however one half ends, even by a panic, the other does not wait
/// for it for ever.
struct MarkDoneOnDrop<'a> {
    state: &'a parking_lot::Mutex<UdpState>,
    slot_freed: &'a parking_lot::Condvar,
}

impl Drop for MarkDoneOnDrop<'_> {
    fn drop(&mut self) {
        self.state.lock().done_sending = true;
        self.slot_freed.notify_one();
    }
}

/// One UDP socket, driven the way dnsperf drives each of its sockets: a sender thread fills the
/// window (or keeps the rate) and waits; a receiver thread takes the replies queued on the
/// socket, up to `receive_batch` at a time, frees their slots, wakes the sender, and sleeps in
/// `poll` once the socket is empty.
///
/// One thread doing both answered each reply with the next query before it looked for more
/// replies, so it was still busy when the server's next replies arrived and rarely slept. A
/// server that reads and answers in batches then never had to wake it, and read 5-20% faster
/// under this generator than under dnsperf, whose receiver sleeps whenever its socket is empty
/// (docs/benchmarks.md, session 11). With the same two-thread shape, the server sleeps and
/// wakes the client as often under either generator, and they read the same qps.
fn run_udp(
    shared: &Shared<'_>,
    share: Share,
    answer_log_limit: usize,
) -> Result<WorkerStats, BenchError> {
    let config = shared.config;
    let tick = tick_for(share);
    // Every worker reaches the barrier, even one whose socket failed, or the others would wait
    // for it for ever; the error is returned after.
    let (socket, open_error) = match open_udp(config.server) {
        Ok(socket) => (Some(socket), None),
        Err(err) => (None, Some(err)),
    };
    let mut stats = prepared_stats(config, answer_log_limit);
    let state = parking_lot::Mutex::new(UdpState {
        outstanding: Outstanding::new(),
        done_sending: false,
    });
    let slot_freed = parking_lot::Condvar::new();
    let mut batch = ReplyBatch::new();
    // The sender starts before the clock, like the rest of the set-up, and waits here until
    // every worker is ready.
    let go = Barrier::new(2);

    std::thread::scope(|scope| {
        let sender = socket.as_ref().map(|socket| {
            std::thread::Builder::new()
                .name("bench-udp-send".into())
                .spawn_scoped(scope, || {
                    go.wait();
                    send_udp(shared, share, socket, &state, &slot_freed)
                })
        });
        shared.ready.wait();
        let (socket, sender) = match (socket.as_ref(), sender) {
            (Some(socket), Some(Ok(sender))) => (socket, sender),
            (_, Some(Err(err))) => return Err(BenchError::Thread(err)),
            _ => return Err(open_error.unwrap_or_else(|| unreachable!("no socket, no error"))),
        };
        go.wait();
        let start = shared.start();
        let mut receiver = Local::new(start, share);
        let mut matched: Vec<(Pending, u8)> = Vec::with_capacity(RECEIVE_BATCH);
        let outcome = {
            // Stops the sender if this loop ends early (an error, or a panic).
            let _stop_sender = MarkDoneOnDrop {
                state: &state,
                slot_freed: &slot_freed,
            };
            loop {
                let now = Instant::now();
                receiver.publish_every(shared.live, now);
                let received =
                    match receive_queued_datagrams(socket, &mut batch, config.receive_batch) {
                        Ok(received) => received,
                        Err(source) => {
                            break Err(BenchError::Io {
                                server: config.server,
                                source,
                            });
                        }
                    };
                let answered_at = Instant::now();
                matched.clear();
                let (expired, finished) = {
                    let mut state = state.lock();
                    let expired = now
                        .checked_sub(config.timeout)
                        .map_or(0, |cutoff| state.outstanding.expire(cutoff));
                    match_replies(
                        &batch,
                        &mut state.outstanding,
                        shared.queries,
                        &mut stats,
                        |_, pending, rcode| matched.push((pending, rcode)),
                    );
                    (expired, state.done_sending && state.outstanding.count == 0)
                };
                if expired > 0 || !matched.is_empty() {
                    slot_freed.notify_one();
                }
                record_lost(&mut stats, shared.live, expired);
                for &(pending, rcode) in &matched {
                    record_answer(
                        &mut stats,
                        pending,
                        rcode,
                        answered_at,
                        start,
                        answer_log_limit,
                    );
                }
                receiver.unpublished_answered += matched.len() as u64;
                if finished {
                    break Ok(());
                }
                if received < config.receive_batch {
                    wait_readable(socket, tick);
                }
            }
        };
        receiver.publish(shared.live);
        let sent = sender
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        outcome?;
        stats.sent += sent.sent;
        // Already added to the live counters by the sender.
        stats.lost += sent.lost;
        Ok(stats)
    })
}

fn open_udp(server: SocketAddr) -> Result<UdpSocket, BenchError> {
    let connect_error = |source| BenchError::Connect {
        server,
        transport: "UDP",
        source,
    };
    let local: SocketAddr = if server.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).map_err(connect_error)?;
    socket.connect(server).map_err(connect_error)?;
    Ok(socket)
}

/// What a UDP sender did.
struct Sent {
    sent: u64,
    /// Queries the socket refused to send.
    lost: u64,
}

/// The sender half of [`run_udp`]: one query per free slot in the window, or per tick of the
/// rate, until the run is over.
fn send_udp(
    shared: &Shared<'_>,
    share: Share,
    socket: &UdpSocket,
    state: &parking_lot::Mutex<UdpState>,
    slot_freed: &parking_lot::Condvar,
) -> Sent {
    // Tells the receiver there is nothing more to wait for, however this ends.
    let _done = MarkDoneOnDrop { state, slot_freed };
    let start = shared.start();
    let tick = tick_for(share);
    let mut local = Local::new(start, share);
    let mut query_buffer = Vec::with_capacity(512);
    let mut sent = Sent { sent: 0, lost: 0 };
    let window = share.room();
    loop {
        let now = Instant::now();
        local.publish_every(shared.live, now);
        // Asked before waiting for a slot, so that once there is nothing more to send the
        // receiver hears so at once and can finish on the last reply.
        match local.next_due(shared, share, now) {
            None => break,
            Some(Due::At(due)) => {
                // At most a closed-loop tick, so a slow rate still sees the deadline in time.
                std::thread::sleep(due.saturating_duration_since(now).min(CLOSED_LOOP_TICK));
                continue;
            }
            Some(Due::Now) => {}
        }
        let mut guard = state.lock();
        if guard.done_sending {
            // The receiver has stopped.
            break;
        }
        if guard.outstanding.count >= window {
            slot_freed.wait_for(&mut guard, tick);
            continue;
        }
        let Some((query_index, query)) = local.next_query(shared, now) else {
            break;
        };
        let id = guard.outstanding.add(now, query_index);
        drop(guard);
        query_buffer.clear();
        append_with_id(&mut query_buffer, &query.wire, id);
        sent.sent += 1;
        local.unpublished_sent += 1;
        if let Err(err) = socket.send(&query_buffer) {
            // A refused or dropped datagram is a lost query, not a failed run.
            tracing::debug!(error = %err, "send failed; counting the query as lost");
            let mut guard = state.lock();
            if guard.outstanding.take(id).is_some() {
                sent.lost += 1;
                shared.live.lost.fetch_add(1, Ordering::Relaxed);
            }
            // A send that fails at once frees its slot at once: without a pause, a socket that
            // keeps failing (no route, a firewall) would spin through the query file.
            slot_freed.wait_for(&mut guard, tick);
        }
    }
    local.publish(shared.live);
    sent
}

/// One TCP connection, driven by one thread: write as many queries as the window (or the
/// rate) allows in one burst, read what has come back, and again.
///
/// When the server closes the connection, or takes none of the queries written to it for a whole
/// query timeout, the queries waiting on it are lost and the worker connects again; while it
/// cannot, each attempt (one per [`RECONNECT_PAUSE`]) costs one query, counted sent and lost as
/// a UDP send that fails is, so a run against a server that has gone for good still ends. New
/// queries are queued only once the last burst is written, so a server that stops reading
/// does not make the worker buffer without bound.
fn run_tcp(
    shared: &Shared<'_>,
    share: Share,
    answer_log_limit: usize,
) -> Result<WorkerStats, BenchError> {
    let config = shared.config;
    let tick = tick_for(share);
    let first_link = TcpLink::open(config.server, tick, FIRST_CONNECT_TIMEOUT);
    let mut stats = prepared_stats(config, answer_log_limit);
    let mut outstanding = Outstanding::new();
    let mut write_buffer = Vec::new();
    let mut batch = ReplyBatch::new();
    shared.ready.wait();
    // Failing to connect at all is an error: there is nothing to measure.
    let mut link = Some(first_link?);
    let start = shared.start();
    let mut local = Local::new(start, share);
    let mut done_sending = false;
    let mut reconnect_at = start;
    // When the connection last took bytes, or had none to take.
    let mut last_write = start;
    let room = share.room();

    loop {
        let now = Instant::now();
        if let Some(cutoff) = now.checked_sub(config.timeout) {
            let expired = outstanding.expire(cutoff);
            record_lost(&mut stats, shared.live, expired);
        }
        local.publish_every(shared.live, now);
        if done_sending && outstanding.count == 0 {
            local.publish(shared.live);
            return Ok(stats);
        }

        if link.is_none() && !done_sending {
            match local.next_due(shared, share, now) {
                None => done_sending = true,
                // Not before a query is due: a failed attempt costs one, and at a rate it must
                // not be spent ahead of the schedule.
                Some(Due::At(due)) => reconnect_at = reconnect_at.max(due),
                Some(Due::Now) if now < reconnect_at => {}
                Some(Due::Now) => {
                    match TcpLink::open(config.server, tick, config.timeout.min(RECONNECT_TIMEOUT))
                    {
                        Ok(opened) => {
                            link = Some(opened);
                            last_write = now;
                        }
                        Err(err) => {
                            tracing::debug!(error = %err, "cannot reconnect; counting a query as lost");
                            reconnect_at = now + RECONNECT_PAUSE;
                            if local.next_query(shared, now).is_some() {
                                stats.sent += 1;
                                local.unpublished_sent += 1;
                                record_lost(&mut stats, shared.live, 1);
                            }
                        }
                    }
                }
            }
        }
        let Some(active) = link.as_mut() else {
            if done_sending {
                local.publish(shared.live);
                return Ok(stats);
            }
            std::thread::sleep(reconnect_at.saturating_duration_since(now).min(tick));
            continue;
        };

        if !done_sending && shared.past_deadline(now) {
            done_sending = true;
        }
        if !done_sending && write_buffer.is_empty() {
            while outstanding.count < room {
                match local.next_due(shared, share, now) {
                    None => {
                        done_sending = true;
                        break;
                    }
                    Some(Due::At(_)) => break,
                    Some(Due::Now) => {}
                }
                let Some((query_index, query)) = local.next_query(shared, now) else {
                    done_sending = true;
                    break;
                };
                // One clock read per burst: the writes of a burst leave together.
                let id = outstanding.add(now, query_index);
                stats.sent += 1;
                local.unpublished_sent += 1;
                TcpLink::queue(&query.wire, id, &mut write_buffer);
            }
        }
        // Whether to give the connection up after the replies already here are counted.
        let mut give_up = false;
        match active.flush(&mut write_buffer, tick) {
            Ok(written) if written > 0 || write_buffer.is_empty() => last_write = now,
            Ok(_) if now.duration_since(last_write) >= config.timeout => {
                tracing::debug!(server = %config.server, "the server has stopped reading");
                give_up = true;
            }
            Ok(_) => {}
            Err(err) if is_disconnect(&err) => {
                // Perhaps half a query went out: nothing more can follow it on this connection.
                tracing::debug!(server = %config.server, error = %err, "write failed");
                give_up = true;
            }
            Err(err) => return Err(io_error(config, err)),
        }

        match active
            .receive(&mut batch)
            .map_err(|err| io_error(config, err))?
        {
            Received::Nothing => {}
            Received::Closed => give_up = true,
            Received::Messages => {
                let answered_at = Instant::now();
                match_replies(
                    &batch,
                    &mut outstanding,
                    shared.queries,
                    &mut stats,
                    |stats, pending, rcode| {
                        record_answer(stats, pending, rcode, answered_at, start, answer_log_limit);
                        local.unpublished_answered += 1;
                    },
                );
            }
        }
        if give_up {
            // Its queries, sent or still queued, are lost with it; the next loop reconnects.
            let expired = outstanding.expire_all();
            record_lost(&mut stats, shared.live, expired);
            write_buffer.clear();
            link = None;
            reconnect_at = now;
        }
    }
}

/// How long a TCP worker waits for its first connection, before the clock starts.
const FIRST_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a TCP worker waits for a reconnection mid-run (or the query timeout, if shorter),
/// and between attempts.
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const RECONNECT_PAUSE: Duration = Duration::from_millis(10);

fn io_error(config: &BenchConfig, source: io::Error) -> BenchError {
    BenchError::Io {
        server: config.server,
        source,
    }
}

fn record_lost(stats: &mut WorkerStats, live: &LiveStats, lost: u64) {
    if lost > 0 {
        stats.lost += lost;
        live.lost.fetch_add(lost, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(text: &str) -> BenchQuery {
        super::super::parse_query_file(text)
            .unwrap()
            .into_iter()
            .next()
            .unwrap()
    }

    /// `query`'s bytes as a reply: QR set, with `edit` applied.
    fn reply(query: &BenchQuery, edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut reply = query.wire.clone();
        reply[2] |= 0x80;
        edit(&mut reply);
        reply
    }

    #[test]
    fn a_reply_matches_its_question_in_any_case_and_nothing_else() {
        let asked = query("www.Example.com A\n");
        assert!(same_question(&reply(&asked, |_| {}), &asked.wire));
        let shouted = reply(&asked, |reply| reply[13..].make_ascii_uppercase());
        assert!(same_question(&shouted, &asked.wire));
        let other_name = reply(&asked, |reply| reply[14] = b'x');
        assert!(!same_question(&other_name, &asked.wire));
        // Type 65 (HTTPS) is 0x41, an ASCII letter: the type is compared exactly.
        let https = query("www.example.com TYPE65\n");
        let type_97 = reply(&https, |reply| {
            let at = reply.len() - 3;
            reply[at] = 0x61;
        });
        assert!(!same_question(&type_97, &https.wire));
        let cut = reply(&asked, |reply| reply.truncate(20));
        assert!(!same_question(&cut, &asked.wire));
        // No question at all (as some servers send FORMERR): the ID decides.
        let bare = reply(&asked, |reply| {
            reply.truncate(HEADER_LEN);
            reply[5] = 0;
        });
        assert!(same_question(&bare, &asked.wire));
    }

    #[test]
    fn a_reply_to_another_question_leaves_the_query_waiting() {
        let queries = [query("a.example A\n"), query("b.example A\n")];
        let mut outstanding = Outstanding::new();
        let now = Instant::now();
        let id = outstanding.add(now, 1);
        let for_a = reply(&queries[0], |reply| {
            reply[..2].copy_from_slice(&id.to_be_bytes())
        });
        assert!(matches!(
            outstanding.take_reply(id, &for_a, &queries),
            Matched::OtherQuestion
        ));
        assert_eq!(outstanding.count, 1);
        let for_b = reply(&queries[1], |reply| {
            reply[..2].copy_from_slice(&id.to_be_bytes())
        });
        assert!(matches!(
            outstanding.take_reply(id, &for_b, &queries),
            Matched::Answer(Pending { query: 1, .. })
        ));
        assert!(matches!(
            outstanding.take_reply(id, &for_b, &queries),
            Matched::Late
        ));
        assert_eq!(outstanding.count, 0);
    }
}
