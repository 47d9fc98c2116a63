//! The UDP hot path: one OS thread per SO_REUSEPORT socket, receiving and sending in batches,
//! and resolving its own misses.
//!
//! Each thread reads its own socket with `recvmmsg(2)` (up to [`BATCH`] datagrams per call),
//! answers every packet-cache hit into a reused buffer, and sends all the replies with one
//! `sendmmsg(2)`. When its own socket gives less than a full batch it also takes one batch from
//! each sibling socket before it sleeps: the kernel's SO_REUSEPORT hash often gives one socket
//! most of the clients (with 4 client sockets and 2 server sockets, a 3-1 split or worse half
//! the time), and a lightly loaded thread then takes over part of the busy socket's queue
//! instead of waiting beside it. Under load that is two system calls per batch instead of two
//! per query, with no async runtime between the socket and the cache. Counters are tallied in
//! the thread and added to the shared ones once per batch; the reloadable policy is re-read
//! only when its generation changes.
//!
//! Each thread drives a current-thread tokio runtime of its own, and a miss is resolved as a
//! task on it, the way Unbound's threads each run one event loop: the query, its upstream
//! exchanges and the reply stay on the thread that received it. Handing misses to a shared
//! multi-thread runtime cost two thread hand-offs per question (twice Unbound's context
//! switches on a cold cache, docs/benchmarks.md). The thread therefore sleeps in the runtime:
//! its own socket is registered with the runtime's reactor, so one wake-up serves a datagram
//! for the loop and an upstream reply for a task alike. Only the own socket wakes the thread
//! (watching the siblings too woke every thread for every datagram); an idle thread still
//! looks at its siblings at every [`TICK`]. Under load the loop yields to the runtime after each
//! full batch while it has misses outstanding.
//!
//! A miss's reply does not leave from its task: it is queued on the thread, and the queue goes
//! out with one `sendmmsg` per socket when the runtime's task queue runs dry (its park hook) or
//! the serving loop comes round, so the answers to all the upstream replies one wake-up brought
//! reach their clients together.
//!
//! `libc` is called directly: socket2 has no `recvmmsg`/`sendmmsg`, nix's wrappers allocate per
//! call, and quinn-udp batches only towards one destination (GSO), not to many clients.

use std::{
    cell::RefCell,
    io,
    mem::MaybeUninit,
    net::{SocketAddr, UdpSocket},
    os::fd::{AsRawFd, RawFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::io::{Interest, unix::AsyncFd};

use super::{Core, Fast, PolicyView, Tally};

/// Datagrams per `recvmmsg`/`sendmmsg` call.
pub(super) const BATCH: usize = 32;
/// Largest query read; a longer datagram (no real query is) is dropped.
const MAX_QUERY_LEN: usize = 4096;
/// How often an idle thread looks at the stop flag. The same timer keeps the runtime's next
/// wake-up at most this far ahead, and that matters for speed: tokio interrupts its reactor (an
/// `eventfd` write, then a spurious `epoll_wait` return) whenever a timer is registered that is
/// due before the reactor's next planned wake-up. With no timer of its own, or a fresh one per
/// wait, the thread paid that for each miss's resolution and upstream timeouts; every upstream
/// timeout is at least 50 ms, so a tick shorter than that never has to be interrupted.
const TICK: Duration = Duration::from_millis(25);

/// Reused per-thread storage for one batch.
struct Slots {
    packets: Vec<[u8; MAX_QUERY_LEN]>,
    peers: Vec<libc::sockaddr_storage>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
    replies: Vec<Vec<u8>>,
    /// Where each reply goes: the address the query came from, as the kernel wrote it.
    reply_peers: Vec<(libc::sockaddr_storage, libc::socklen_t)>,
}

impl Slots {
    fn new() -> Self {
        // SAFETY: sockaddr_storage is plain old data; all-zero is a valid (AF_UNSPEC) value.
        let zero_peer: libc::sockaddr_storage = unsafe { MaybeUninit::zeroed().assume_init() };
        Self {
            packets: vec![[0; MAX_QUERY_LEN]; BATCH],
            peers: vec![zero_peer; BATCH],
            iovecs: Vec::with_capacity(BATCH),
            headers: Vec::with_capacity(BATCH),
            replies: (0..BATCH).map(|_| Vec::with_capacity(1232)).collect(),
            reply_peers: vec![(zero_peer, 0); BATCH],
        }
    }

    /// Point every header at its packet buffer and address slot (the vectors never move after
    /// this, since their lengths do not change while the pointers are in use).
    fn arm_receive(&mut self) {
        self.iovecs.clear();
        for packet in &mut self.packets {
            self.iovecs.push(libc::iovec {
                iov_base: packet.as_mut_ptr().cast(),
                iov_len: MAX_QUERY_LEN,
            });
        }
        self.headers.clear();
        let room = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        self.headers.extend(
            self.iovecs
                .iter_mut()
                .zip(&mut self.peers)
                .map(|(iovec, peer)| datagram_header(std::ptr::from_mut(peer).cast(), room, iovec)),
        );
    }
}

/// The `mmsghdr` of one datagram held in `iovec`, to or from the address at `name` (`name_len`
/// bytes), with no control data.
fn datagram_header(
    name: *mut libc::c_void,
    name_len: libc::socklen_t,
    iovec: &mut libc::iovec,
) -> libc::mmsghdr {
    // SAFETY: mmsghdr is plain old data (integers and null pointers when zeroed).
    let mut header: libc::mmsghdr = unsafe { MaybeUninit::zeroed().assume_init() };
    header.msg_hdr.msg_name = name;
    header.msg_hdr.msg_namelen = name_len;
    header.msg_hdr.msg_iov = iovec;
    header.msg_hdr.msg_iovlen = 1;
    header
}

/// Receive up to [`BATCH`] datagrams already queued, without waiting. Returns how many headers
/// were filled.
fn receive_batch(socket: &UdpSocket, slots: &mut Slots) -> io::Result<usize> {
    slots.arm_receive();
    // SAFETY: `headers` holds BATCH initialised mmsghdr whose name and iovec pointers point into
    // `peers`, `iovecs` and `packets`, all live and unmoved for the duration of the call, with
    // the lengths given; the kernel writes at most those lengths. The timeout pointer is null.
    let received = unsafe {
        libc::recvmmsg(
            socket.as_raw_fd(),
            slots.headers.as_mut_ptr(),
            BATCH as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    usize::try_from(received).map_err(|_| io::Error::last_os_error())
}

/// Send every reply in `slots.replies[..count]` to `slots.reply_peers[..count]`; a reply the
/// kernel refuses is skipped (UDP: the client retries).
fn send_batch(socket: &UdpSocket, slots: &mut Slots, count: usize) {
    slots.iovecs.clear();
    for reply in &slots.replies[..count] {
        slots.iovecs.push(libc::iovec {
            iov_base: reply.as_ptr().cast_mut().cast(),
            iov_len: reply.len(),
        });
    }
    slots.headers.clear();
    slots
        .headers
        .extend(slots.iovecs.iter_mut().zip(&mut slots.reply_peers).map(
            |(iovec, (peer, peer_len))| {
                datagram_header(std::ptr::from_mut(peer).cast(), *peer_len, iovec)
            },
        ));
    send_all(socket.as_raw_fd(), &mut slots.headers, 0);
}

/// Hand every datagram `headers` describe to the kernel, as few `sendmmsg` calls as it takes. A
/// datagram the kernel refuses is skipped, and a full socket buffer drops the rest (UDP: the
/// client asks again).
fn send_all(fd: RawFd, headers: &mut [libc::mmsghdr], flags: libc::c_int) {
    let mut sent = 0;
    while sent < headers.len() {
        let pending = &mut headers[sent..];
        // SAFETY: the caller's headers point at buffers and peer addresses that stay alive and
        // unmodified for the call; the kernel only reads them.
        let result = unsafe {
            libc::sendmmsg(
                fd,
                pending.as_mut_ptr(),
                pending.len() as libc::c_uint,
                flags,
            )
        };
        match usize::try_from(result) {
            Ok(0) => break,
            Ok(count_sent) => sent += count_sent,
            Err(_) => {
                let error = io::Error::last_os_error();
                match error.kind() {
                    io::ErrorKind::Interrupted => continue,
                    // The socket buffer is full: the rest would fail the same way, one call each.
                    io::ErrorKind::WouldBlock => {
                        let dropped = headers.len() - sent;
                        tracing::debug!(dropped, "UDP socket buffer full; dropping replies");
                        break;
                    }
                    _ => {
                        tracing::debug!(%error, "UDP send failed; dropping one reply");
                        sent += 1;
                    }
                }
            }
        }
    }
}

/// Read the peer address the kernel wrote for a received datagram.
fn peer_of(storage: &libc::sockaddr_storage, length: libc::socklen_t) -> Option<SocketAddr> {
    let length = length as usize;
    match i32::from(storage.ss_family) {
        libc::AF_INET if length >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: sockaddr_storage is large and aligned enough for every sockaddr type, and
            // the family says the kernel wrote a sockaddr_in here.
            let address = unsafe { &*std::ptr::from_ref(storage).cast::<libc::sockaddr_in>() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(address.sin_addr.s_addr));
            Some(SocketAddr::from((ip, u16::from_be(address.sin_port))))
        }
        libc::AF_INET6 if length >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for a sockaddr_in6.
            let address = unsafe { &*std::ptr::from_ref(storage).cast::<libc::sockaddr_in6>() };
            let ip = std::net::Ipv6Addr::from(address.sin6_addr.s6_addr);
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                ip,
                u16::from_be(address.sin6_port),
                address.sin6_flowinfo,
                address.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// The worker's own socket, as the runtime's reactor watches it (`AsyncFd` needs an owner of the
/// descriptor; the socket itself stays shared with the sibling threads that drain it).
struct OwnSocket(Arc<UdpSocket>);

impl AsRawFd for OwnSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// The worker thread's loop for `sockets[own]` on `runtime` (its own, current-thread); returns
/// when `stop` is set and the misses it started have been answered (or could no longer be:
/// past the resolution timeout).
pub(super) fn serve(
    runtime: tokio::runtime::Runtime,
    core: Arc<Core>,
    sockets: Arc<[Arc<UdpSocket>]>,
    own: usize,
    stop: Arc<AtomicBool>,
    in_flight: Arc<()>,
) {
    runtime.block_on(serve_loop(core, sockets, own, stop, in_flight));
}

async fn serve_loop(
    core: Arc<Core>,
    sockets: Arc<[Arc<UdpSocket>]>,
    own: usize,
    stop: Arc<AtomicBool>,
    in_flight: Arc<()>,
) {
    let own_socket = OwnSocket(sockets[own].clone());
    // SAFETY: `OwnSocket` holds an `Arc` of the socket for the `AsyncFd`'s whole life, so the
    // descriptor stays open and refers to the same socket.
    let readiness = match unsafe { AsyncFd::register_with_interest(own_socket, Interest::READABLE) }
    {
        Ok(readiness) => readiness,
        Err(error) => {
            tracing::warn!(error = %io::Error::from(error), "cannot watch the UDP socket; stopping this worker");
            return;
        }
    };
    // One clone per miss task of this thread: its strong count tells how many are running.
    let local_misses = Arc::new(());
    let mut slots = Slots::new();
    let mut tally = Tally::default();
    let mut policy = core.policy_snapshot();
    let count = sockets.len();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = |socket: &Arc<UdpSocket>, slots: &mut Slots, tally: &mut Tally| -> usize {
        let received = match receive_batch(socket, slots) {
            Ok(received) => received,
            Err(error) => {
                if !matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) {
                    tracing::debug!(%error, "UDP receive failed");
                }
                return 0;
            }
        };
        if received > 0 {
            core.refresh_policy(&mut policy);
            let misses = Misses {
                local: &local_misses,
                in_flight: &in_flight,
            };
            answer_batch(&core, socket, slots, received, &policy, tally, misses);
        }
        received
    };
    while !stop.load(Ordering::Relaxed) {
        send_queued_replies();
        // Own socket first; the siblings only when it had less than a full batch, one batch each.
        let mut more = batch(&sockets[own], &mut slots, &mut tally) == BATCH;
        if !more {
            for step in 1..count {
                if batch(&sockets[(own + step) % count], &mut slots, &mut tally) == BATCH {
                    more = true;
                    break;
                }
            }
        }
        if more {
            // Misses' tasks (and the reactor delivering their upstream replies) run only when
            // this loop gives the thread up.
            if Arc::strong_count(&local_misses) > 1 {
                tokio::task::yield_now().await;
            }
            continue;
        }
        // Less than a full batch: sleep in the runtime (running the misses' tasks meanwhile)
        // until the own socket has a datagram or the tick comes. Only the own socket wakes this
        // thread: a sibling's datagram waking every thread was two context switches and four
        // wasted system calls per query on a cold cache; the siblings are drained above, and an
        // idle thread still gets to them at every tick. When datagrams keep arriving,
        // `readable()` is ready at once and the thread is not given up here, but tokio's
        // cooperative budget (every readiness poll spends from it) makes it return pending
        // after 128 polls, so the misses' tasks get their turn within a few hundred queries.
        tokio::select! {
            biased;
            ready = readiness.readable() => {
                if let Ok(mut guard) = ready {
                    // Before the socket is read again, so a datagram arriving in between wakes
                    // the next wait instead of being missed.
                    guard.clear_ready();
                }
            }
            _ = tick.tick() => {}
        }
    }
    // Every miss's resolution is cut off at `resolution_timeout`; a second more covers sending
    // its reply. Stopping therefore never cuts short an answer that could still be sent.
    let deadline = Instant::now() + core.resolution_timeout + Duration::from_secs(1);
    while Arc::strong_count(&local_misses) > 1 && Instant::now() < deadline {
        // The park hook does not run while tasks keep being ready.
        send_queued_replies();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    send_queued_replies();
}

/// What a miss's task holds while it runs: one guard counted by this thread, one by the server's
/// shutdown.
#[derive(Clone, Copy)]
struct Misses<'a> {
    local: &'a Arc<()>,
    in_flight: &'a Arc<()>,
}

/// Answer the `received` datagrams in `slots` and send the replies from `socket`.
fn answer_batch(
    core: &Arc<Core>,
    socket: &Arc<UdpSocket>,
    slots: &mut Slots,
    received: usize,
    policy: &PolicyView,
    tally: &mut Tally,
    misses: Misses<'_>,
) {
    let mut replies = 0;
    for index in 0..received {
        let header = &slots.headers[index];
        let length = header.msg_len as usize;
        let truncated = header.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        let Some(peer) = peer_of(&slots.peers[index], header.msg_hdr.msg_namelen) else {
            continue;
        };
        if truncated {
            tally.dropped += 1;
            tally.queries += 1;
            continue;
        }
        let packet = &slots.packets[index][..length.min(MAX_QUERY_LEN)];
        let out = &mut slots.replies[replies];
        match core.answer_fast(packet, peer.ip(), true, out, &policy.policy, tally) {
            Fast::Reply => {
                if !out.is_empty() {
                    tally.count_reply(out);
                    slots.reply_peers[replies] = (slots.peers[index], header.msg_hdr.msg_namelen);
                    replies += 1;
                }
            }
            Fast::Drop => {}
            Fast::Miss(query, max_len) => {
                // The miss may be answered before this batch ends; its query must already be
                // counted by then, as the comment on the flush below promises.
                core.flush(tally);
                core.spawn_udp_miss(
                    socket,
                    query,
                    max_len,
                    peer,
                    [misses.local.clone(), misses.in_flight.clone()],
                );
            }
        }
    }
    // Before the replies leave, so a client that reads the counters after its answer sees its
    // query counted.
    core.flush(tally);
    if replies > 0 {
        send_batch(socket, slots, replies);
        // The replies just woke their clients. A worker that goes straight on to the next batch
        // keeps the core, and on a machine where clients share the cores a woken client then
        // waits for the scheduler tick (4 ms): that was the whole p99. Yielding once per batch
        // (one cheap system call) lets it run now; measured p99 at 64 outstanding went from
        // 4.2-7.3 ms to 0.6-1.9 ms, and qps rose with it (docs/benchmarks.md).
        std::thread::yield_now();
    }
}

/// A miss's reply waiting for its thread's next `sendmmsg`, with the guards its task held (so
/// shutdown waits until the reply has left).
struct QueuedReply {
    socket: Arc<UdpSocket>,
    reply: Vec<u8>,
    peer: socket2::SockAddr,
    _guards: [Arc<()>; 2],
}

/// The miss replies of one worker thread not sent yet, and reused room for sending them.
#[derive(Default)]
struct ReplyQueue {
    replies: Vec<QueuedReply>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
}

thread_local! {
    static REPLY_QUEUE: RefCell<ReplyQueue> = RefCell::new(ReplyQueue::default());
}

/// Queue a miss's reply on this worker thread. It leaves with the others when the thread's
/// runtime finds no task left to run ([`send_queued_replies`] is its park hook), when the serving
/// loop next comes round, or at once when a batch is full. Under a stream of ready tasks the hook
/// may not run (tokio polls its reactor without parking every 61 tasks, and when a task yielded),
/// which is why the loop and the batch bound send too.
///
/// One system call for the replies of all the upstream answers one wake-up delivered is the
/// smaller gain. The larger: the client is woken once for them, not once per reply. Waking a
/// sleeping reader is the sender's cost (the loopback delivers in the sender's context), and on
/// a cold batch waking the client was 7% of this server's CPU, against 4% of Unbound's
/// (docs/benchmarks.md, session 14).
pub(super) fn queue_reply(
    socket: Arc<UdpSocket>,
    reply: Vec<u8>,
    peer: SocketAddr,
    guards: [Arc<()>; 2],
) {
    let full = REPLY_QUEUE.with_borrow_mut(|queue| {
        queue.replies.push(QueuedReply {
            socket,
            reply,
            peer: peer.into(),
            _guards: guards,
        });
        queue.replies.len() >= BATCH
    });
    if full {
        send_queued_replies();
    }
}

/// Send every reply queued on this thread: one `sendmmsg` per socket they leave from.
pub(super) fn send_queued_replies() {
    REPLY_QUEUE.with_borrow_mut(|queue| {
        let ReplyQueue {
            replies,
            iovecs,
            headers,
        } = queue;
        if replies.is_empty() {
            return;
        }
        // Stable: each socket's replies keep their order. A worker that drained a sibling's
        // socket can have queued replies for both, interleaved.
        replies.sort_by_key(|queued| Arc::as_ptr(&queued.socket) as usize);
        for run in replies.chunk_by(|a, b| Arc::ptr_eq(&a.socket, &b.socket)) {
            iovecs.clear();
            iovecs.extend(run.iter().map(|queued| libc::iovec {
                iov_base: queued.reply.as_ptr().cast_mut().cast(),
                iov_len: queued.reply.len(),
            }));
            headers.clear();
            headers.extend(run.iter().zip(iovecs.iter_mut()).map(|(queued, iovec)| {
                // The kernel only reads a destination address (`sendmmsg`).
                let name = queued.peer.as_ptr().cast_mut().cast();
                datagram_header(name, queued.peer.len(), iovec)
            }));
            // Never blocks the thread: a full socket buffer drops the reply, as it would any
            // datagram.
            send_all(run[0].socket.as_raw_fd(), headers, libc::MSG_DONTWAIT);
        }
        replies.clear();
    });
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn loopback_socket() -> Arc<UdpSocket> {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind loopback");
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("read timeout");
        Arc::new(socket)
    }

    fn receive_all(client: &UdpSocket, count: usize) -> Vec<(Vec<u8>, SocketAddr)> {
        let mut buffer = [0u8; 64];
        (0..count)
            .map(|_| {
                let (length, from) = client.recv_from(&mut buffer).expect("a queued reply");
                (buffer[..length].to_vec(), from)
            })
            .collect()
    }

    #[test]
    fn queued_replies_leave_together_from_their_own_sockets_and_then_release_their_guards() {
        let (first, second, client) = (loopback_socket(), loopback_socket(), loopback_socket());
        let client_address = client.local_addr().expect("address");
        let guard = Arc::new(());
        let queued = [(&first, b"one"), (&second, b"3rd"), (&first, b"two")];
        for (socket, reply) in queued {
            let guards = [guard.clone(), guard.clone()];
            queue_reply(socket.clone(), reply.to_vec(), client_address, guards);
        }
        client.set_nonblocking(true).expect("non-blocking");
        let mut buffer = [0u8; 64];
        let early = client.recv_from(&mut buffer).map_err(|error| error.kind());
        assert_eq!(
            early.err(),
            Some(io::ErrorKind::WouldBlock),
            "sent before the flush"
        );
        assert_eq!(Arc::strong_count(&guard), 7, "the queue holds its guards");

        send_queued_replies();
        client.set_nonblocking(false).expect("blocking");
        let first_address = first.local_addr().expect("address");
        let second_address = second.local_addr().expect("address");
        let received = receive_all(&client, 3);
        // Each socket's replies in the order queued; the two sockets' replies may interleave.
        let from = |address| -> Vec<Vec<u8>> {
            let replies = received.iter().filter(|(_, from)| *from == address);
            replies.map(|(reply, _)| reply.clone()).collect()
        };
        assert_eq!(from(first_address), [b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(from(second_address), [b"3rd".to_vec()]);
        assert_eq!(Arc::strong_count(&guard), 1, "guards released once sent");
    }

    #[test]
    fn a_full_batch_of_queued_replies_leaves_without_waiting_for_the_flush() {
        let (server, client) = (loopback_socket(), loopback_socket());
        let client_address = client.local_addr().expect("address");
        for index in 0..BATCH {
            let reply = vec![u8::try_from(index).expect("small index")];
            queue_reply(server.clone(), reply, client_address, Default::default());
        }
        let received = receive_all(&client, BATCH);
        let bytes: Vec<u8> = received.iter().map(|(reply, _)| reply[0]).collect();
        let expected: Vec<u8> = (0..BATCH)
            .map(|i| u8::try_from(i).expect("small"))
            .collect();
        assert_eq!(bytes, expected);
        REPLY_QUEUE.with_borrow(|queue| assert!(queue.replies.is_empty()));
    }
}
