//! An in-process authoritative server on one 127.0.0.x address, UDP and TCP, serving zones and
//! misbehaving on request.

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, ResponseCode},
    rr::{Name, RData, Record, RecordType, rdata::NS},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    task::JoinHandle,
};

use super::zone::Zone;

/// Ways a server can misbehave. Change them at any time with [`AuthServer::set_behaviour`].
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// Never reply (a dead server).
    pub drop: bool,
    /// Wait this long before replying.
    pub delay: Option<Duration>,
    /// Reply over UDP with an empty, truncated (TC) message; TCP works.
    pub truncate_udp: bool,
    /// Reply REFUSED to everything.
    pub refuse: bool,
    /// Be lame: reply non-authoritatively with a referral up to the root.
    pub lame: bool,
    /// Lie: replace the answer section of every positive answer with these records.
    pub lie: Option<Vec<Record>>,
    /// Before the real reply, send a forged one with a wrong ID carrying these answers.
    pub wrong_id_reply: Option<Vec<Record>>,
    /// Add these records (typically out of bailiwick) to the additional section.
    pub extra_additionals: Vec<Record>,
    /// Add these records (typically out of bailiwick) to the answer section.
    pub extra_answers: Vec<Record>,
}

/// One question a server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedQuery {
    /// The name, with the case it was sent in.
    pub name: Name,
    /// The type.
    pub record_type: RecordType,
    /// Whether it came over TCP.
    pub tcp: bool,
}

#[derive(Debug, Default)]
struct Shared {
    behaviour: Mutex<Behaviour>,
    log: Mutex<Vec<LoggedQuery>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A running authoritative server. Dropping it stops it.
#[derive(Debug)]
pub struct AuthServer {
    name: Name,
    address: SocketAddr,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for AuthServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl AuthServer {
    /// Serve `zones` on `ip:port` over UDP and TCP. Must run inside a tokio runtime.
    pub async fn start(
        name: Name,
        ip: Ipv4Addr,
        port: u16,
        zones: Vec<Zone>,
    ) -> std::io::Result<Self> {
        let udp = UdpSocket::bind((ip, port)).await?;
        let address = udp.local_addr()?;
        let tcp = TcpListener::bind(address).await?;
        let shared = Arc::new(Shared::default());
        let zones = Arc::new(zones);
        let udp_task = tokio::spawn(serve_udp(udp, zones.clone(), shared.clone()));
        let tcp_task = tokio::spawn(serve_tcp(tcp, zones, shared.clone()));
        Ok(Self {
            name,
            address,
            shared,
            tasks: vec![udp_task, tcp_task],
        })
    }

    /// The server's name (as it appears in NS records).
    pub fn name(&self) -> &Name {
        &self.name
    }

    /// Where it listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Replace its behaviour.
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        *lock(&self.shared.behaviour) = behaviour;
    }

    /// Every question received so far, in order.
    pub fn queries(&self) -> Vec<LoggedQuery> {
        lock(&self.shared.log).clone()
    }

    /// Forget the questions received so far.
    pub fn clear_queries(&self) {
        lock(&self.shared.log).clear();
    }
}

async fn serve_udp(socket: UdpSocket, zones: Arc<Vec<Zone>>, shared: Arc<Shared>) {
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; 65_535];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let Ok(query) = Message::from_vec(&buf[..len]) else {
            continue;
        };
        let socket = socket.clone();
        let zones = zones.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let behaviour = lock(&shared.behaviour).clone();
            log_query(&shared, &query, false);
            if behaviour.drop {
                return;
            }
            if let Some(delay) = behaviour.delay {
                tokio::time::sleep(delay).await;
            }
            if let Some(forged) = &behaviour.wrong_id_reply {
                let mut fake = respond(&zones, &behaviour, &query);
                fake.metadata.id = query.metadata.id.wrapping_add(1);
                fake.answers = forged.clone();
                if let Ok(bytes) = fake.to_vec() {
                    let _ = socket.send_to(&bytes, peer).await;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let mut reply = respond(&zones, &behaviour, &query);
            let limit = query
                .edns
                .as_ref()
                .map_or(512, |edns| edns.max_payload().max(512));
            let mut bytes = reply.to_vec().unwrap_or_default();
            if behaviour.truncate_udp || bytes.len() > usize::from(limit) {
                reply = reply.truncate();
                bytes = reply.to_vec().unwrap_or_default();
            }
            let _ = socket.send_to(&bytes, peer).await;
        });
    }
}

async fn serve_tcp(listener: TcpListener, zones: Arc<Vec<Zone>>, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(serve_tcp_connection(stream, zones.clone(), shared.clone()));
    }
}

async fn serve_tcp_connection(mut stream: TcpStream, zones: Arc<Vec<Zone>>, shared: Arc<Shared>) {
    loop {
        let Ok(len) = stream.read_u16().await else {
            return;
        };
        let mut body = vec![0u8; usize::from(len)];
        if stream.read_exact(&mut body).await.is_err() {
            return;
        }
        let Ok(query) = Message::from_vec(&body) else {
            return;
        };
        let behaviour = lock(&shared.behaviour).clone();
        log_query(&shared, &query, true);
        if behaviour.drop {
            return;
        }
        if let Some(delay) = behaviour.delay {
            tokio::time::sleep(delay).await;
        }
        let Ok(bytes) = respond(&zones, &behaviour, &query).to_vec() else {
            return;
        };
        let Ok(len) = u16::try_from(bytes.len()) else {
            return;
        };
        let mut framed = len.to_be_bytes().to_vec();
        framed.extend(bytes);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

fn log_query(shared: &Shared, query: &Message, tcp: bool) {
    if let Some(question) = query.queries.first() {
        lock(&shared.log).push(LoggedQuery {
            name: question.name().clone(),
            record_type: question.query_type(),
            tcp,
        });
    }
}

fn respond(zones: &[Zone], behaviour: &Behaviour, query: &Message) -> Message {
    let mut reply = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
    reply.add_queries(query.queries.iter().cloned());
    if query.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        reply.set_edns(edns);
    }
    let Some(question) = query.queries.first() else {
        reply.metadata.response_code = ResponseCode::FormErr;
        return reply;
    };
    if behaviour.refuse {
        reply.metadata.response_code = ResponseCode::Refused;
        return reply;
    }
    if behaviour.lame {
        reply.add_authority(Record::from_rdata(
            Name::root(),
            3600,
            RData::NS(NS(
                Name::from_ascii("a.root-servers.net.").unwrap_or_default()
            )),
        ));
        return reply;
    }
    let zone = zones
        .iter()
        .filter(|zone| zone.origin().zone_of(question.name()))
        .max_by_key(|zone| zone.origin().num_labels());
    let Some(zone) = zone else {
        reply.metadata.response_code = ResponseCode::Refused;
        return reply;
    };
    let answer = zone.answer(question.name(), question.query_type());
    reply.metadata.authoritative = answer.authoritative;
    if answer.nxdomain {
        reply.metadata.response_code = ResponseCode::NXDomain;
    }
    let mut answers = answer.answers;
    if let Some(lie) = &behaviour.lie
        && !answers.is_empty()
    {
        answers = lie.clone();
    }
    answers.extend(behaviour.extra_answers.iter().cloned());
    reply.add_answers(answers);
    reply.add_authorities(answer.authorities);
    reply.add_additionals(answer.additionals);
    reply.add_additionals(behaviour.extra_additionals.iter().cloned());
    reply
}
