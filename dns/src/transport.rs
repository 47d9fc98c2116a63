//! One upstream exchange: a fresh UDP socket (random source port) and a random ID per query,
//! strict validation of whatever comes back, and a TCP retry when the reply is truncated.

use std::{
    io,
    net::SocketAddr,
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Message, MessageType},
    rr::{Name, RecordType},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
};

use crate::{
    stats::Stats,
    wire::{self, MAX_MESSAGE_LEN},
};

/// What one exchange with one server produced.
#[derive(Debug, Clone)]
pub(crate) struct Exchange {
    pub(crate) message: Message,
    pub(crate) rtt: Duration,
    pub(crate) over_tcp: bool,
}

/// Why an exchange with one server failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExchangeError {
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    #[error("network error: {0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Wire(#[from] wire::WireError),
    /// The identical query another resolution sent failed this way.
    #[error("{0} (shared with an identical query in flight)")]
    Shared(String),
}

/// Ask `server` for `name`/`record_type` once (UDP, then TCP if the reply is truncated). The UDP
/// attempt waits `timeout`; the TCP one `tcp_timeout`, since it needs a handshake round trip
/// more than the UDP exchange that sized `timeout`.
pub(crate) async fn exchange(
    server: SocketAddr,
    name: &Name,
    record_type: RecordType,
    edns_buffer_size: u16,
    timeout: Duration,
    tcp_timeout: Duration,
    stats: &Stats,
) -> Result<Exchange, ExchangeError> {
    let started = Instant::now();
    let deadline = started + timeout;
    let message =
        udp_exchange(server, name, record_type, edns_buffer_size, deadline, stats).await?;
    if !message.metadata.truncation {
        return Ok(Exchange {
            message,
            rtt: started.elapsed(),
            over_tcp: false,
        });
    }
    stats.add_tcp_retry();
    // The TCP attempt gets its own full timeout: the UDP part proved the server is alive.
    let deadline = Instant::now() + tcp_timeout;
    let message =
        tcp_exchange(server, name, record_type, edns_buffer_size, deadline, stats).await?;
    Ok(Exchange {
        message,
        rtt: started.elapsed(),
        over_tcp: true,
    })
}

async fn udp_exchange(
    server: SocketAddr,
    name: &Name,
    record_type: RecordType,
    edns_buffer_size: u16,
    deadline: Instant,
    stats: &Stats,
) -> Result<Message, ExchangeError> {
    let id: u16 = rand::random();
    let query = wire::build_query(id, name, record_type, edns_buffer_size)?;
    let socket = send_udp_query(server, &query).await?;
    // Room for the largest message, but not zeroed: `recv_buf` writes into spare capacity, and
    // clearing 64 KiB per upstream query was a tenth of the resolver's CPU on a cold cache.
    let mut buf: Vec<u8> = Vec::with_capacity(MAX_MESSAGE_LEN);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        buf.clear();
        let received = tokio::time::timeout(remaining, socket.recv_buf_from(&mut buf)).await;
        let Ok(received) = received else {
            return Err(ExchangeError::Timeout(remaining));
        };
        let (len, from) = received?;
        if from != server {
            stats.add_dropped_reply();
            tracing::debug!(%from, expected = %server, "dropped reply from unexpected address");
            continue;
        }
        match wire::parse_message(&buf[..len]) {
            Ok(reply) if matches_query(&reply, id, name, record_type) => return Ok(reply),
            Ok(reply) => {
                stats.add_dropped_reply();
                tracing::debug!(%server, id = reply.metadata.id, expected = id, "dropped mismatched reply");
            }
            Err(err) => {
                stats.add_dropped_reply();
                tracing::debug!(%server, %err, "dropped malformed reply");
            }
        }
    }
}

/// A fresh socket per query, so the kernel picks a random ephemeral source port (RFC 5452),
/// with `query` sent on it.
///
/// Connected, as Unbound's `udp-connect` does: the kernel routes once instead of per send,
/// drops datagrams from any other address before they wake us, and reports an ICMP "port
/// unreachable" as an error at once instead of letting the query time out. Connecting binds
/// the random port, so there is no separate `bind`. The query is sent before the socket is
/// handed to the runtime: tokio's `send` on a socket it has just registered first waits for
/// the reactor to report it writable, one more `epoll_wait` (and often a wake-up) per
/// upstream query, while a fresh UDP socket can always take one datagram.
async fn send_udp_query(server: SocketAddr, query: &[u8]) -> io::Result<UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(server),
        socket2::Type::DGRAM.nonblocking(),
        Some(socket2::Protocol::UDP),
    )?;
    socket.connect(&server.into())?;
    let sent = match socket.send(query) {
        Ok(_) => true,
        Err(error) if error.kind() == io::ErrorKind::WouldBlock => false,
        Err(error) => return Err(error),
    };
    let socket = UdpSocket::from_std(socket.into())?;
    if !sent {
        socket.send(query).await?;
    }
    Ok(socket)
}

async fn tcp_exchange(
    server: SocketAddr,
    name: &Name,
    record_type: RecordType,
    edns_buffer_size: u16,
    deadline: Instant,
    stats: &Stats,
) -> Result<Message, ExchangeError> {
    let remaining = deadline.saturating_duration_since(Instant::now());
    let work = async {
        let id: u16 = rand::random();
        let query = wire::frame_tcp(&wire::build_query(id, name, record_type, edns_buffer_size)?)?;
        let mut stream = TcpStream::connect(server).await?;
        stream.write_all(&query).await?;
        let len = usize::from(stream.read_u16().await?);
        let mut body = vec![0u8; len];
        stream.read_exact(&mut body).await?;
        let reply = wire::parse_message(&body)?;
        if matches_query(&reply, id, name, record_type) {
            Ok(reply)
        } else {
            stats.add_dropped_reply();
            Err(ExchangeError::Wire(wire::WireError::Malformed(
                "TCP reply does not match the query".into(),
            )))
        }
    };
    tokio::time::timeout(remaining, work)
        .await
        .unwrap_or(Err(ExchangeError::Timeout(remaining)))
}

/// A reply is ours only if it is a response with our ID and exactly our question, case included
/// (the case check is what makes 0x20 randomisation work).
fn matches_query(reply: &Message, id: u16, name: &Name, record_type: RecordType) -> bool {
    reply.metadata.id == id
        && reply.metadata.message_type == MessageType::Response
        && reply.queries.len() == 1
        && reply.queries[0].query_type() == record_type
        && reply.queries[0].name().eq_case(name)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use hickory_proto::op::{Message, MessageType, OpCode};

    use super::*;

    /// RFC 5452: every query gets its own random ID and its own source port.
    #[tokio::test]
    async fn each_query_uses_a_fresh_id_and_source_port() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let server_addr = server.local_addr().unwrap();
        let responder = tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut buf = vec![0u8; 2048];
            for _ in 0..20 {
                let (len, peer) = server.recv_from(&mut buf).await.unwrap();
                let query = Message::from_vec(&buf[..len]).unwrap();
                seen.push((peer.port(), query.metadata.id));
                let mut reply =
                    Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
                reply.add_queries(query.queries.clone());
                server
                    .send_to(&reply.to_vec().unwrap(), peer)
                    .await
                    .unwrap();
            }
            seen
        });
        let stats = Stats::default();
        let name = Name::from_ascii("www.example.test.").unwrap();
        for _ in 0..20 {
            exchange(
                server_addr,
                &name,
                RecordType::A,
                1232,
                Duration::from_secs(2),
                Duration::from_secs(2),
                &stats,
            )
            .await
            .unwrap();
        }
        let seen = responder.await.unwrap();
        let ports: HashSet<u16> = seen.iter().map(|(port, _)| *port).collect();
        let ids: HashSet<u16> = seen.iter().map(|(_, id)| *id).collect();
        assert!(ports.len() >= 15, "source ports reused: {seen:?}");
        assert!(ids.len() >= 15, "IDs reused: {seen:?}");
        assert_eq!(stats.snapshot().dropped_replies, 0);
    }

    /// A reply from the right address but for another question is dropped and counted.
    #[tokio::test]
    async fn reply_with_another_question_is_dropped() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let server_addr = server.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            let (len, peer) = server.recv_from(&mut buf).await.unwrap();
            let query = Message::from_vec(&buf[..len]).unwrap();
            let mut wrong = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
            wrong.add_query(hickory_proto::op::Query::query(
                Name::from_ascii("WWW.example.test.").unwrap(),
                RecordType::A,
            ));
            server
                .send_to(&wrong.to_vec().unwrap(), peer)
                .await
                .unwrap();
            server.send_to(b"garbage", peer).await.unwrap();
        });
        let stats = Stats::default();
        let name = Name::from_ascii("www.example.test.").unwrap();
        let err = exchange(
            server_addr,
            &name,
            RecordType::A,
            1232,
            Duration::from_millis(300),
            Duration::from_millis(300),
            &stats,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, ExchangeError::Timeout(_)), "{err}");
        assert_eq!(
            stats.snapshot().dropped_replies,
            2,
            "wrong case and garbage both counted"
        );
    }
}
