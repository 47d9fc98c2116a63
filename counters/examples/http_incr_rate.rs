//! Durable HTTP increments per second against one embedded counter node, from 50 keep-alive
//! connections (like `redis-benchmark -t incr`'s 50 clients, unpipelined), for 3 seconds.
//!
//! ```text
//! cargo run --release -p edgekit-counters --example http_incr_rate [CONNECTIONS] [SECONDS]
//! ```
//!
//! Every answered request is an increment journalled with fsync (group-committed).

use std::time::{Duration, Instant};

use edgekit_counters::{CounterNode, CounterNodeConfig, NodeId};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let connections: usize = args.next().map_or(Ok(50), |a| a.parse())?;
    let seconds: u64 = args.next().map_or(Ok(3), |a| a.parse())?;
    let dir = tempfile::tempdir()?;
    let mut config =
        CounterNodeConfig::new(NodeId::new("bench")?, "127.0.0.1:0".parse()?, dir.path());
    config.http = Some("127.0.0.1:0".parse()?);
    let node = CounterNode::start(config).await?;
    let http = node.http_addr().ok_or("no http address")?;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut clients = Vec::new();
    for connection in 0..connections {
        clients.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(http).await?;
            stream.set_nodelay(true)?;
            let request = format!(
                "POST /v1/counters/key-{}/incr?by=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
                connection % 8
            );
            let mut done = 0u64;
            let mut buffer = vec![0u8; 4096];
            while Instant::now() < deadline {
                stream.write_all(request.as_bytes()).await?;
                let mut filled = 0;
                loop {
                    let read = stream.read(&mut buffer[filled..]).await?;
                    if read == 0 {
                        return Err(std::io::Error::other("connection closed"));
                    }
                    filled += read;
                    let text = String::from_utf8_lossy(&buffer[..filled]);
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let length: usize = head
                            .lines()
                            .find_map(|line| line.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_owned))
                            .and_then(|value| value.trim().parse().ok())
                            .unwrap_or(0);
                        if body.len() >= length {
                            if !head.starts_with("HTTP/1.1 200") {
                                return Err(std::io::Error::other(head.to_owned()));
                            }
                            break;
                        }
                    }
                }
                done += 1;
            }
            Ok::<u64, std::io::Error>(done)
        }));
    }
    let started = Instant::now();
    let mut total = 0;
    for client in clients {
        total += client.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let sum: i64 = (0..8)
        .map(|i| node.counters().get(&format!("key-{i}")))
        .sum();
    println!(
        "{total} durable increments in {elapsed:.2} s from {connections} connections: {:.0}/s (counters read {sum})",
        total as f64 / elapsed
    );
    Ok(())
}
