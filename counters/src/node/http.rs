//! The node's HTTP API: increments, reads, rate-limit decisions, status and metrics. Served by
//! hyper directly; the hot routes (see [`hot_routes`](super::hot_routes)) are answered without
//! axum's router, every other request goes through it.

use std::{
    collections::HashMap, convert::Infallible, future::Future, io::Write, pin::Pin, sync::Arc,
    time::Duration,
};

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::{rt::TokioIo, server::graceful::GracefulShutdown, service::TowerToHyperService};
use serde_json::json;
use tokio::{net::TcpListener, sync::watch};

use super::{
    MAX_KEY_LEN, NodeError, Shared,
    hot_routes::{HotRequest, recognise},
};
use crate::{NodeId, RateLimit, RateLimiter, RetireError};

/// Distinct (limit, window) pairs the rate-limit endpoint keeps limiters for.
const MAX_LIMITERS: usize = 1024;

type AppState = Arc<Shared>;

pub(super) async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    let router = router(Arc::clone(&shared));
    let connections = GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    accept_failed(err).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        // Answers are single small writes that should leave at once.
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(error = %err, "cannot set TCP_NODELAY on an HTTP connection");
        }
        let service = NodeService {
            shared: Arc::clone(&shared),
            router: TowerToHyperService::new(router.clone()),
        };
        let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
        let connection = connections.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::trace!(error = %err, "HTTP connection ended with an error");
            }
        });
    }
    // Stop accepting, let every connection finish the request in progress, then end (as
    // `axum::serve`'s graceful shutdown did).
    drop(listener);
    connections.shutdown().await;
}

/// As `axum::serve`: a connection that failed before it was accepted is the client's business;
/// anything else (out of file descriptors) is logged and retried after a pause.
async fn accept_failed(err: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        err.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %err, "HTTP accept failed");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Every route, as axum handlers: the answer to anything the hot path does not recognise.
fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/counters/{key}/incr", post(incr))
        .route("/v1/counters/{key}", get(read))
        .route("/v1/counters//incr", post(empty_key))
        .route("/v1/counters/", get(empty_key))
        .route("/v1/ratelimit/{key}", get(ratelimit))
        .route("/v1/ratelimit/", get(empty_key))
        .route("/v1/retire/{node}", post(retire))
        .route("/v1/status", get(status))
        .route("/v1/sync", post(sync))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

/// A hot answer's body (no boxing, no allocation beyond the bytes) or the router's.
type NodeBody = Either<Full<Bytes>, axum::body::Body>;

/// One connection's service: hot requests (see [`hot_routes`](super::hot_routes)) answered
/// here, everything else by the router.
#[derive(Clone)]
struct NodeService {
    shared: Arc<Shared>,
    router: TowerToHyperService<Router>,
}

impl hyper::service::Service<hyper::Request<Incoming>> for NodeService {
    type Response = hyper::Response<NodeBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: hyper::Request<Incoming>) -> Self::Future {
        let shared = Arc::clone(&self.shared);
        let router = self.router.clone();
        Box::pin(async move {
            let response = match recognise(request.method(), request.uri()) {
                Some(HotRequest::Incr { key, by }) => match shared.incr(key, by).await {
                    Ok(value) => json_response(key_value_json(key, value)),
                    Err(err) => unavailable(&err).map(Either::Right),
                },
                Some(HotRequest::Read { key }) => json_response(read_json(&shared, key)),
                None => router.call(request).await?.map(Either::Right),
            };
            Ok(response)
        })
    }
}

/// A 200 with a JSON body and the headers axum's `Json` answer has (`content-type`; hyper adds
/// `content-length` and `date`).
fn json_response(body: Bytes) -> hyper::Response<NodeBody> {
    let mut response = hyper::Response::new(Either::Left(Full::new(body)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn bad_request(message: impl Into<String>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "error": message.into() })),
    )
        .into_response()
}

/// Why a request is bad, for a 400 answer.
type BadInput = String;

fn check_key(key: &str) -> Result<(), BadInput> {
    if key.is_empty() {
        return Err("key is empty".into());
    }
    if key.len() > MAX_KEY_LEN {
        return Err(format!(
            "key is {} bytes, the limit is {MAX_KEY_LEN}",
            key.len()
        ));
    }
    Ok(())
}

fn parse_param<T: std::str::FromStr>(
    query: &HashMap<String, String>,
    name: &str,
    default: Option<T>,
) -> Result<T, BadInput> {
    parse_value(name, query.get(name).map(String::as_str), default)
}

/// Parameter `name`'s value `text`, or `default` when it was not given.
fn parse_value<T: std::str::FromStr>(
    name: &str,
    text: Option<&str>,
    default: Option<T>,
) -> Result<T, BadInput> {
    match text {
        Some(text) => text.parse().map_err(|_| {
            format!(
                "{name} = {text:?}: not a valid {}",
                std::any::type_name::<T>()
            )
        }),
        None => default.ok_or_else(|| format!("missing query parameter {name}")),
    }
}

async fn empty_key() -> Response {
    bad_request("key is empty")
}

/// The one parameter of an increment. A struct rather than a map: the hot path parses the
/// query without building a `HashMap` of owned strings.
#[derive(serde::Deserialize)]
struct IncrParams {
    by: Option<String>,
}

async fn incr(
    State(shared): State<AppState>,
    Path(key): Path<String>,
    Query(params): Query<IncrParams>,
) -> Response {
    if let Err(message) = check_key(&key) {
        return bad_request(message);
    }
    let by: i64 = match parse_value("by", params.by.as_deref(), Some(1)) {
        Ok(by) => by,
        Err(message) => return bad_request(message),
    };
    match shared.incr(&key, by).await {
        Ok(value) => (
            [(header::CONTENT_TYPE, "application/json")],
            key_value_json(&key, value),
        )
            .into_response(),
        Err(err) => unavailable(&err),
    }
}

fn unavailable(err: &NodeError) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({ "error": err.to_string() })),
    )
        .into_response()
}

/// `{"key":KEY,"value":VALUE}`, written straight into the body: the answer to every increment,
/// so it skips building a `serde_json::Value` tree.
fn key_value_json(key: &str, value: i64) -> Bytes {
    let mut body = Vec::with_capacity(key.len() + 40);
    body.extend_from_slice(b"{\"key\":");
    // Writing a string into a Vec cannot fail.
    if serde_json::to_writer(&mut body, key).is_err() {
        return Bytes::from(json!({ "key": key, "value": value }).to_string());
    }
    body.extend_from_slice(b",\"value\":");
    // Writing into a Vec cannot fail.
    let _ = write!(body, "{value}}}");
    Bytes::from(body)
}

async fn read(State(shared): State<AppState>, Path(key): Path<String>) -> Response {
    if let Err(message) = check_key(&key) {
        return bad_request(message);
    }
    (
        [(header::CONTENT_TYPE, "application/json")],
        read_json(&shared, &key),
    )
        .into_response()
}

/// `{"key":..,"value":..,"entries":{..}}`: the converged value and every node's entry, so
/// operators (and tests) can see where counts come from.
fn read_json(shared: &Shared, key: &str) -> Bytes {
    let value = shared.counters.get(key);
    let entries: serde_json::Map<String, serde_json::Value> = shared
        .counters
        .state(key)
        .entries()
        .iter()
        .map(|(node, count)| {
            (
                node.as_str().to_owned(),
                json!({ "increments": count.increments, "decrements": count.decrements }),
            )
        })
        .collect();
    Bytes::from(json!({ "key": key, "value": value, "entries": entries }).to_string())
}

async fn ratelimit(
    State(shared): State<AppState>,
    Path(key): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Err(message) = check_key(&key) {
        return bad_request(message);
    }
    let parsed = (|| {
        let limit: u64 = parse_param(&query, "limit", None)?;
        let window: u64 = parse_param(&query, "window", None)?;
        let cost: u64 = parse_param(&query, "cost", Some(1))?;
        Ok::<_, BadInput>((limit, window, cost))
    })();
    let (limit, window, cost) = match parsed {
        Ok(parsed) => parsed,
        Err(message) => return bad_request(message),
    };
    let rate = match RateLimit::new(limit, Duration::from_secs(window)) {
        Ok(rate) => rate,
        Err(err) => return bad_request(err.to_string()),
    };
    let limiter = {
        let mut limiters = shared.limiters.lock();
        if !limiters.contains_key(&(limit, window)) && limiters.len() >= MAX_LIMITERS {
            return bad_request(format!(
                "too many distinct (limit, window) pairs in use (at most {MAX_LIMITERS})"
            ));
        }
        limiters
            .entry((limit, window))
            .or_insert_with(|| RateLimiter::new(shared.config.node_id.clone(), rate))
            .clone()
    };
    match limiter.check(key.as_str(), cost) {
        Ok(decision) => Json(json!({
            "key": key,
            "allowed": decision.allowed,
            "remaining": decision.remaining,
            "limit": decision.limit,
            "retry_after_ms": u64::try_from(decision.retry_after.as_millis()).unwrap_or(u64::MAX),
        }))
        .into_response(),
        Err(err) => bad_request(err.to_string()),
    }
}

async fn retire(State(shared): State<AppState>, Path(node): Path<String>) -> Response {
    let node = match NodeId::new(&node) {
        Ok(node) => node,
        Err(err) => return bad_request(format!("node id {node:?}: {err}")),
    };
    match shared.retire(&node).await {
        Ok(report) => Json(json!({
            "retired": node.as_str(),
            "survivor": shared.config.node_id.as_str(),
            "keys_folded": report.keys_folded,
            "already_retired": report.already_retired,
        }))
        .into_response(),
        Err(NodeError::Retire(err @ RetireError::OwnNode(_))) => bad_request(err.to_string()),
        Err(err) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": err.to_string() })),
        )
            .into_response(),
    }
}

/// Anti-entropy on demand: every connected peer link exchanges now.
async fn sync(State(shared): State<AppState>) -> Response {
    let peers = shared.request_sync();
    (StatusCode::ACCEPTED, Json(json!({ "peers": peers }))).into_response()
}

async fn status(State(shared): State<AppState>) -> Response {
    Json(json!({
        "node_id": shared.config.node_id.as_str(),
        "gossip_addr": shared.gossip_addr.to_string(),
        "keys": shared.counters.len(),
        "retired": shared.counters.retirements(),
        "durability": match shared.config.durability {
            super::Durability::FsyncEvery(every) => format!("fsync every {every:?}"),
            _ => "fsync before acknowledging".to_owned(),
        },
        "peers": shared.peer_statuses(),
    }))
    .into_response()
}

async fn metrics(State(shared): State<AppState>) -> Response {
    shared
        .metrics
        .keys
        .set(i64::try_from(shared.counters.len()).unwrap_or(i64::MAX));
    let mut text = String::new();
    if let Err(err) = prometheus_client::encoding::text::encode(&mut text, &shared.metrics.registry)
    {
        return (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()).into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpStream,
        time::timeout,
    };

    use crate::{CounterNode, CounterNodeConfig, NodeId};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// One answer: status, headers other than `date` (lower-case, sorted: hyper places the
    /// headers it adds itself in a different order than axum's), body.
    type Answer = (u16, Vec<String>, String);

    async fn node(dir: &std::path::Path) -> Result<CounterNode, Box<dyn std::error::Error>> {
        let mut config = CounterNodeConfig::new(NodeId::new("n")?, "127.0.0.1:0".parse()?, dir);
        config.http = Some("127.0.0.1:0".parse()?);
        Ok(CounterNode::start(config).await?)
    }

    /// Send `raw` on a fresh connection and read until the node closes it (bounded in time).
    async fn exchange(addr: SocketAddr, raw: &[u8]) -> Result<String, Box<dyn std::error::Error>> {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(raw).await?;
        let mut response = Vec::new();
        timeout(
            std::time::Duration::from_secs(10),
            stream.read_to_end(&mut response),
        )
        .await??;
        Ok(String::from_utf8(response)?)
    }

    fn parse_answers(mut text: &str) -> Result<Vec<Answer>, Box<dyn std::error::Error>> {
        let mut answers = Vec::new();
        while !text.is_empty() {
            let (head, rest) = text.split_once("\r\n\r\n").ok_or("no end of head")?;
            let mut lines = head.lines();
            let status = lines.next().ok_or("no status line")?[9..12].parse()?;
            let mut headers: Vec<String> = lines
                .map(str::to_ascii_lowercase)
                .filter(|line| !line.starts_with("date:"))
                .collect();
            headers.sort();
            let length: usize = headers
                .iter()
                .find_map(|line| line.strip_prefix("content-length: "))
                .ok_or("no content-length")?
                .parse()?;
            answers.push((status, headers, rest[..length].to_owned()));
            text = &rest[length..];
        }
        Ok(answers)
    }

    async fn request(
        addr: SocketAddr,
        method: &str,
        path: &str,
    ) -> Result<Answer, Box<dyn std::error::Error>> {
        let raw = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let mut answers = parse_answers(&exchange(addr, raw.as_bytes()).await?)?;
        Ok(answers.pop().ok_or("no answer")?)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hot_answers_are_the_routers_answers() -> TestResult {
        let dir = tempfile::tempdir()?;
        let node = node(dir.path()).await?;
        let addr = node.http_addr().ok_or("no http address")?;
        // `%6B` is `k`: the router decodes it, the hot path leaves such requests to the router.
        let hot = request(addr, "POST", "/v1/counters/k/incr?by=2").await?;
        let routed = request(addr, "POST", "/v1/counters/%6B/incr?by=%32").await?;
        assert_eq!(hot.2, r#"{"key":"k","value":2}"#);
        assert_eq!(routed.2, r#"{"key":"k","value":4}"#);
        assert_eq!((hot.0, &hot.1), (routed.0, &routed.1));
        assert_eq!(
            request(addr, "POST", "/v1/counters/k/incr").await?.2,
            r#"{"key":"k","value":5}"#
        );
        let hot = request(addr, "GET", "/v1/counters/k").await?;
        let routed = request(addr, "GET", "/v1/counters/%6B").await?;
        assert_eq!(hot, routed);
        assert_eq!(hot.0, 200);
        assert!(
            hot.2.contains(r#""n":{"decrements":0,"increments":5}"#),
            "{}",
            hot.2
        );
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_input_on_hot_routes_gets_the_same_400s() -> TestResult {
        let dir = tempfile::tempdir()?;
        let node = node(dir.path()).await?;
        let addr = node.http_addr().ok_or("no http address")?;
        let long = "k".repeat(super::MAX_KEY_LEN + 1);
        for (method, path, status, body) in [
            (
                "POST",
                "/v1/counters/k/incr?by=ten".to_owned(),
                400,
                r#"{"error":"by = \"ten\": not a valid i64"}"#.to_owned(),
            ),
            (
                "POST",
                "/v1/counters/k/incr?by=".to_owned(),
                400,
                r#"{"error":"by = \"\": not a valid i64"}"#.to_owned(),
            ),
            (
                "POST",
                "/v1/counters/k/incr?by=+1".to_owned(),
                400,
                r#"{"error":"by = \" 1\": not a valid i64"}"#.to_owned(),
            ),
            (
                "POST",
                "/v1/counters//incr".to_owned(),
                400,
                r#"{"error":"key is empty"}"#.to_owned(),
            ),
            (
                "GET",
                "/v1/counters/".to_owned(),
                400,
                r#"{"error":"key is empty"}"#.to_owned(),
            ),
            (
                "POST",
                format!("/v1/counters/{long}/incr"),
                400,
                format!(
                    r#"{{"error":"key is 257 bytes, the limit is {}"}}"#,
                    super::MAX_KEY_LEN
                ),
            ),
            (
                "GET",
                format!("/v1/counters/{long}"),
                400,
                format!(
                    r#"{{"error":"key is 257 bytes, the limit is {}"}}"#,
                    super::MAX_KEY_LEN
                ),
            ),
            ("GET", "/v1/counters/k/incr".to_owned(), 405, String::new()),
            ("POST", "/v1/counters/k".to_owned(), 405, String::new()),
            (
                "POST",
                "/v1/counters/a/b/incr".to_owned(),
                404,
                String::new(),
            ),
        ] {
            let answer = request(addr, method, &path).await?;
            assert_eq!((answer.0, &answer.2), (status, &body), "{method} {path}");
        }
        let repeated = request(addr, "POST", "/v1/counters/k/incr?by=1&by=2").await?;
        assert_eq!(repeated.0, 400);
        assert!(repeated.2.contains("duplicate field"), "{}", repeated.2);
        // None of them counted.
        assert_eq!(node.counters().get("k"), 0);
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pipelined_garbage_and_oversized_requests_end_only_their_connection() -> TestResult {
        let dir = tempfile::tempdir()?;
        let node = node(dir.path()).await?;
        let addr = node.http_addr().ok_or("no http address")?;
        // Three requests in one write, on one keep-alive connection: three answers, in order.
        let pipelined = "POST /v1/counters/p/incr HTTP/1.1\r\nHost: x\r\n\r\n\
             GET /v1/counters/p HTTP/1.1\r\nHost: x\r\n\r\n\
             POST /v1/counters/p/incr?by=9 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        let answers = parse_answers(&exchange(addr, pipelined.as_bytes()).await?)?;
        let bodies: Vec<&str> = answers.iter().map(|answer| answer.2.as_str()).collect();
        assert_eq!(bodies.len(), 3, "{answers:?}");
        assert_eq!(bodies[0], r#"{"key":"p","value":1}"#);
        assert!(bodies[1].starts_with(r#"{"entries""#), "{}", bodies[1]);
        assert_eq!(bodies[2], r#"{"key":"p","value":10}"#);
        // A body on an increment is ignored, as by the router.
        let with_body = "POST /v1/counters/p/incr HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
        let answers = parse_answers(&exchange(addr, with_body.as_bytes()).await?)?;
        assert_eq!(answers[0].2, r#"{"key":"p","value":11}"#);

        let oversized_head = format!(
            "POST /v1/counters/p/incr HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
            "a".repeat(1 << 20)
        );
        for garbage in [
            &b"\x00\xff\xfe garbage \r\n\r\n"[..],
            b"POST /v1/counters/p/incr HTTP/1.1\r\nHost: x\r\nContent-Le",
            b"POST /v1/counters/p/incr?by=5 HTTP/9.9\r\n\r\n",
            oversized_head.as_bytes(),
        ] {
            // A truncated request just waits for more: end it from our side.
            let mut stream = TcpStream::connect(addr).await?;
            stream.write_all(garbage).await?;
            stream.shutdown().await?;
            let mut response = Vec::new();
            // The node may reset the connection instead of answering; either is fine.
            let _ = timeout(
                std::time::Duration::from_secs(10),
                stream.read_to_end(&mut response),
            )
            .await?;
            let text = String::from_utf8_lossy(&response);
            assert!(
                !text.starts_with("HTTP/1.1 200"),
                "{garbage:?} was answered: {text}"
            );
        }
        // Nothing bad was counted, and the node still answers.
        let answer = request(addr, "POST", "/v1/counters/p/incr").await?;
        assert_eq!(
            (answer.0, answer.2.as_str()),
            (200, r#"{"key":"p","value":12}"#)
        );
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_stops_accepting_connections() -> TestResult {
        let dir = tempfile::tempdir()?;
        let node = node(dir.path()).await?;
        let addr = node.http_addr().ok_or("no http address")?;
        assert_eq!(request(addr, "GET", "/v1/counters/k").await?.0, 200);
        node.shutdown();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while TcpStream::connect(addr).await.is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "still accepting after shutdown"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Ok(())
    }
}
