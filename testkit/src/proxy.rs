//! A TCP proxy on loopback that a test can cut, stall or block, to play a flaky network link.

use std::{
    io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};

/// A TCP proxy that forwards `listen_addr()` to a target and injects faults on command.
///
/// - [`cut`](Self::cut) drops every open connection mid-stream (the peers see a reset or EOF);
/// - [`set_blocked`](Self::set_blocked) makes new connections close at once, as a partition would;
/// - [`set_stalled`](Self::set_stalled) keeps connections open but forwards nothing, as a stuck
///   link would, until unstalled.
///
/// Dropping the proxy stops it and closes every connection.
#[derive(Debug)]
pub struct FaultProxy {
    listen_addr: SocketAddr,
    state: Arc<State>,
    accept_task: JoinHandle<()>,
}

#[derive(Debug)]
struct State {
    target: SocketAddr,
    blocked: AtomicBool,
    stalled: watch::Sender<bool>,
    /// Bumped by `cut`; each connection exits when the generation it started in is gone.
    generation: watch::Sender<u64>,
    connections: AtomicU64,
}

impl FaultProxy {
    /// Start a proxy on `127.0.0.1:0` forwarding to `target`. Needs a running tokio runtime.
    pub async fn start(target: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let listen_addr = listener.local_addr()?;
        let state = Arc::new(State {
            target,
            blocked: AtomicBool::new(false),
            stalled: watch::channel(false).0,
            generation: watch::channel(0).0,
            connections: AtomicU64::new(0),
        });
        let accept_state = Arc::clone(&state);
        let accept_task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if accept_state.blocked.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                accept_state.connections.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(forward(client, Arc::clone(&accept_state)));
            }
        });
        Ok(Self {
            listen_addr,
            state,
            accept_task,
        })
    }

    /// The address clients should connect to instead of the target.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen_addr
    }

    /// Drop every open connection now. New connections are still accepted unless blocked.
    pub fn cut(&self) {
        self.state
            .generation
            .send_modify(|generation| *generation += 1);
    }

    /// While blocked, new connections are closed as soon as they are accepted.
    pub fn set_blocked(&self, blocked: bool) {
        self.state.blocked.store(blocked, Ordering::SeqCst);
    }

    /// While stalled, open connections stay open but no bytes move in either direction.
    pub fn set_stalled(&self, stalled: bool) {
        self.state.stalled.send_replace(stalled);
    }

    /// How many connections the proxy has accepted and forwarded so far.
    pub fn connections_accepted(&self) -> u64 {
        self.state.connections.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept_task.abort();
        self.cut();
    }
}

async fn forward(client: TcpStream, state: Arc<State>) {
    let mut generation = state.generation.subscribe();
    let started_in = *generation.borrow_and_update();
    let Ok(server) = TcpStream::connect(state.target).await else {
        return;
    };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let upstream = pump(client_read, server_write, state.stalled.subscribe());
    let downstream = pump(server_read, client_write, state.stalled.subscribe());
    let cut = async move {
        while generation.changed().await.is_ok() {
            if *generation.borrow() != started_in {
                return;
            }
        }
    };
    tokio::select! {
        _ = async { tokio::join!(upstream, downstream) } => {}
        () = cut => {}
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut stalled: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        while *stalled.borrow_and_update() {
            if stalled.changed().await.is_err() {
                return;
            }
        }
        let n = match tokio::time::timeout(Duration::from_millis(50), from.read(&mut buf)).await {
            // Re-check the stall flag regularly, so a stall takes effect on a busy link too.
            Err(_elapsed) => continue,
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => n,
        };
        while *stalled.borrow_and_update() {
            if stalled.changed().await.is_err() {
                return;
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = conn.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        addr
    }

    async fn round_trip(conn: &mut TcpStream, msg: &[u8]) -> io::Result<Vec<u8>> {
        conn.write_all(msg).await?;
        let mut back = vec![0u8; msg.len()];
        conn.read_exact(&mut back).await?;
        Ok(back)
    }

    #[tokio::test]
    async fn forwards_then_cut_closes_then_blocked_refuses() {
        let proxy = FaultProxy::start(echo_server().await).await.unwrap();
        let mut conn = TcpStream::connect(proxy.listen_addr()).await.unwrap();
        assert_eq!(round_trip(&mut conn, b"hello").await.unwrap(), b"hello");

        proxy.cut();
        let after_cut =
            tokio::time::timeout(Duration::from_secs(5), round_trip(&mut conn, b"x")).await;
        assert!(
            matches!(after_cut, Ok(Err(_))),
            "a cut connection must fail, got {after_cut:?}"
        );

        proxy.set_blocked(true);
        let mut blocked = TcpStream::connect(proxy.listen_addr()).await.unwrap();
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), blocked.read(&mut byte)).await;
        assert!(
            matches!(read, Ok(Ok(0) | Err(_))),
            "a blocked proxy must close at once, got {read:?}"
        );

        proxy.set_blocked(false);
        let mut fresh = TcpStream::connect(proxy.listen_addr()).await.unwrap();
        assert_eq!(round_trip(&mut fresh, b"again").await.unwrap(), b"again");
        assert_eq!(proxy.connections_accepted(), 2);
    }

    #[tokio::test]
    async fn stall_holds_bytes_until_released() {
        let proxy = FaultProxy::start(echo_server().await).await.unwrap();
        let mut conn = TcpStream::connect(proxy.listen_addr()).await.unwrap();
        assert_eq!(round_trip(&mut conn, b"warm").await.unwrap(), b"warm");

        proxy.set_stalled(true);
        let stalled =
            tokio::time::timeout(Duration::from_millis(300), round_trip(&mut conn, b"held")).await;
        assert!(stalled.is_err(), "no bytes may pass while stalled");

        proxy.set_stalled(false);
        let mut rest = vec![0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), conn.read_exact(&mut rest))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rest, b"held");
    }
}
