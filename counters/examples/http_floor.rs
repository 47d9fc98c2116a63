//! The floor for HTTP/1.1 increments on this machine: servers that do no work at all, answering
//! every request with a fixed ~30-byte JSON body, to load with the same `wrk` settings as the
//! counter node (`benches/compare-redis.sh`). Whatever these reach bounds what any HTTP
//! endpoint can reach here.
//!
//! ```text
//! cargo run --release -p edgekit-counters --example http_floor [hyper|raw] [ADDR]
//! ```
//!
//! `hyper`: hyper 1.x's HTTP/1.1 server (as axum uses it) with a `service_fn` that returns a
//! fixed body. `raw`: no HTTP library; every `\r\n\r\n` read is answered with one fixed
//! response (correct only for body-less requests, such as wrk's). Prints `http listening on
//! ADDR` on stderr, then serves until killed.

use std::{convert::Infallible, io::Write};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, header, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

const BODY: &[u8] = br#"{"key":"bench","value":123456}"#;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "hyper".to_owned());
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let listener = TcpListener::bind(&addr).await?;
    let mut stderr = std::io::stderr().lock();
    writeln!(stderr, "http listening on {}", listener.local_addr()?)?;
    drop(stderr);
    loop {
        let (stream, _) = listener.accept().await?;
        match mode.as_str() {
            "raw" => tokio::spawn(raw(stream)),
            _ => tokio::spawn(hyper_connection(stream)),
        };
    }
}

async fn hyper_connection(stream: TcpStream) {
    let service = service_fn(|_request: Request<Incoming>| async {
        let mut response = Response::new(Full::new(Bytes::from_static(BODY)));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        Ok::<_, Infallible>(response)
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

async fn raw(mut stream: TcpStream) {
    let mut response = Vec::new();
    let _ = write!(
        response,
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         date: Sat, 28 Nov 2026 00:00:00 GMT\r\n\r\n",
        BODY.len()
    );
    response.extend_from_slice(BODY);
    let mut input = vec![0u8; 16 * 1024];
    let mut filled = 0;
    let mut output = Vec::new();
    loop {
        let read = match stream.read(&mut input[filled..]).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        filled += read;
        let mut start = 0;
        while let Some(end) = input[start..filled]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
        {
            output.extend_from_slice(&response);
            start += end + 4;
        }
        input.copy_within(start..filled, 0);
        filled -= start;
        if filled == input.len() {
            return;
        }
        if stream.write_all(&output).await.is_err() {
            return;
        }
        output.clear();
    }
}
