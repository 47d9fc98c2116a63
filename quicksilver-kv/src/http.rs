//! The node's HTTP API (axum): keys, batches, scans, watches, status, snapshots and metrics.
//!
//! Keys are arbitrary bytes. In URLs they are the rest of the path after `/v1/kv/`,
//! percent-decoded byte by byte (so `/` and `%FF` both work). In JSON, a key or value that is
//! not UTF-8 is carried as `key_hex`/`value_hex` instead of `key`/`value`.

use std::{future::Future, io, sync::Arc};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{DefaultBodyLimit, Query, State},
    http::{HeaderValue, StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use percent_encoding::percent_decode_str;
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, gauge::Gauge},
    registry::Registry,
};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::{Batch, Error, LogEntry, Op, Store, hex};

/// Header carrying the sequence a read observed.
pub const SEQ_HEADER: &str = "x-kv-seq";
/// Largest `limit` a scan accepts.
pub const MAX_SCAN_LIMIT: usize = 10_000;
const KV_PATH: &str = "/v1/kv/";

/// What a node is, for its API: the root accepts writes; a replica refuses them.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Role {
    /// The only writer.
    Root,
    /// A read-only replica (a relay when it also serves replication).
    Replica {
        /// Its replication link's state.
        status: Arc<crate::ReplicaStatus>,
        /// Whether it serves downstream replicas.
        relay: bool,
    },
}

#[derive(Clone)]
struct AppState {
    store: Store,
    role: Role,
    metrics: Arc<Metrics>,
}

impl AppState {
    fn check_writable(&self) -> Result<(), ApiError> {
        match &self.role {
            Role::Root => Ok(()),
            Role::Replica { status, .. } => Err(ApiError(
                StatusCode::FORBIDDEN,
                match status.root_api() {
                    Some(root) => format!(
                        "this node is a read-only replica of {}: send writes to the root at {root}",
                        status.upstream()
                    ),
                    None => format!(
                        "this node is a read-only replica of {}: send writes to the root",
                        status.upstream()
                    ),
                },
            )),
        }
    }
}

struct Metrics {
    registry: Registry,
    head: Gauge,
    batches: Counter,
    groups: Counter,
    ops: Counter,
    trimmed: Counter,
    failed: Counter,
    log_bytes: Gauge,
    lag_entries: Gauge,
    received_bytes: Counter,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("quicksilver_kv");
        let metrics = Self {
            registry: Registry::default(),
            head: Gauge::default(),
            batches: Counter::default(),
            groups: Counter::default(),
            ops: Counter::default(),
            trimmed: Counter::default(),
            failed: Counter::default(),
            log_bytes: Gauge::default(),
            lag_entries: Gauge::default(),
            received_bytes: Counter::default(),
        };
        registry.register("head_seq", "Last applied sequence", metrics.head.clone());
        registry.register("batches", "Batches committed", metrics.batches.clone());
        registry.register(
            "group_commits",
            "Transactions (fsyncs) that carried the batches",
            metrics.groups.clone(),
        );
        registry.register("ops", "Puts and deletes committed", metrics.ops.clone());
        registry.register(
            "log_trimmed",
            "Log entries removed by retention",
            metrics.trimmed.clone(),
        );
        registry.register(
            "write_failures",
            "Batches refused by the committer",
            metrics.failed.clone(),
        );
        registry.register(
            "log_bytes",
            "Bytes held by the log",
            metrics.log_bytes.clone(),
        );
        registry.register(
            "replication_lag_entries",
            "Entries the upstream has that this replica has not applied (0 on the root)",
            metrics.lag_entries.clone(),
        );
        registry.register(
            "replication_received_bytes",
            "Replication frame bytes received from the upstream",
            metrics.received_bytes.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }
}

/// The API's routes over `store` for a node in `role`, ready to be served.
pub fn router(store: Store, role: Role) -> Router {
    let body_limit = store.config().max_batch_bytes.saturating_mul(2) + 4096;
    let state = AppState {
        store,
        role,
        metrics: Arc::new(Metrics::new()),
    };
    Router::new()
        .route("/v1/kv", get(scan))
        .route("/v1/kv/", get(empty_key).put(empty_key).delete(empty_key))
        .route(
            "/v1/kv/{*key}",
            get(get_key).put(put_key).delete(delete_key),
        )
        .route("/v1/batch", post(batch))
        .route("/v1/watch", get(watch))
        .route("/v1/status", get(status))
        .route("/v1/snapshot", get(snapshot))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// Serve the API on `listener` until `shutdown` resolves.
pub async fn serve(
    store: Store,
    role: Role,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    axum::serve(listener, router(store, role))
        .with_graceful_shutdown(shutdown)
        .await
}

/// An error answer: a status and `{"error": message}`.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        let status = match &err {
            Error::ValueTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            err if err.is_bad_input() => StatusCode::BAD_REQUEST,
            Error::Compacted { .. } => StatusCode::GONE,
            Error::StoreFull { .. } | Error::WriteFailed { .. } => StatusCode::INSUFFICIENT_STORAGE,
            Error::Closed => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self(status, err.to_string())
    }
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into())
}

/// The key named by the URL: everything after `/v1/kv/`, percent-decoded to raw bytes.
fn key_from_uri(uri: &Uri) -> Result<Vec<u8>, ApiError> {
    let raw = uri.path().strip_prefix(KV_PATH).unwrap_or_default();
    let key: Vec<u8> = percent_decode_str(raw).collect();
    if key.is_empty() {
        return Err(bad_request("the key is empty: use /v1/kv/KEY"));
    }
    Ok(key)
}

async fn empty_key() -> ApiError {
    bad_request("the key is empty: use /v1/kv/KEY")
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "read task failed".into()))?
        .map_err(ApiError::from)
}

async fn get_key(State(state): State<AppState>, uri: Uri) -> Result<Response, ApiError> {
    let key = key_from_uri(&uri)?;
    let reader = state.store.reader().clone();
    // LMDB reads are memory-mapped page walks: fast, but they may touch the disk, so they stay
    // off the async workers.
    let read = blocking(move || reader.get(&key)).await?;
    let seq = HeaderValue::from(read.seq);
    let mut response = match read.value {
        Some(value) => {
            ([(header::CONTENT_TYPE, "application/octet-stream")], value).into_response()
        }
        None => ApiError(StatusCode::NOT_FOUND, "no such key".into()).into_response(),
    };
    response.headers_mut().insert(SEQ_HEADER, seq);
    Ok(response)
}

async fn put_key(
    State(state): State<AppState>,
    uri: Uri,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    state.check_writable()?;
    let key = key_from_uri(&uri)?;
    let seq = state
        .store
        .write_async(Batch::new().put(key, body.to_vec()))
        .await?;
    Ok(Json(json!({ "seq": seq })))
}

async fn delete_key(State(state): State<AppState>, uri: Uri) -> Result<Json<Value>, ApiError> {
    state.check_writable()?;
    let key = key_from_uri(&uri)?;
    let seq = state.store.write_async(Batch::new().delete(key)).await?;
    Ok(Json(json!({ "seq": seq })))
}

/// One op of `POST /v1/batch`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonOp {
    op: String,
    key: Option<String>,
    key_hex: Option<String>,
    value: Option<String>,
    value_hex: Option<String>,
}

fn bytes_field(
    index: usize,
    name: &str,
    text: Option<String>,
    hex_text: Option<String>,
) -> Result<Option<Vec<u8>>, ApiError> {
    match (text, hex_text) {
        (Some(_), Some(_)) => Err(bad_request(format!(
            "op {index}: give `{name}` or `{name}_hex`, not both"
        ))),
        (Some(text), None) => Ok(Some(text.into_bytes())),
        (None, Some(hex_text)) => hex::decode(&hex_text)
            .map(Some)
            .ok_or_else(|| bad_request(format!("op {index}: `{name}_hex` is not hex"))),
        (None, None) => Ok(None),
    }
}

async fn batch(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    state.check_writable()?;
    let ops: Vec<JsonOp> = serde_json::from_slice(&body).map_err(|err| {
        bad_request(format!(
            "the body must be a JSON list of {{\"op\":\"put\"|\"delete\",\"key\":..,\"value\":..}}: {err}"
        ))
    })?;
    let mut batch = Batch::new();
    for (index, op) in ops.into_iter().enumerate() {
        let key = bytes_field(index, "key", op.key, op.key_hex)?
            .ok_or_else(|| bad_request(format!("op {index}: missing `key`")))?;
        let value = bytes_field(index, "value", op.value, op.value_hex)?;
        batch.ops.push(match (op.op.as_str(), value) {
            ("put", Some(value)) => Op::put(key, value),
            ("put", None) => return Err(bad_request(format!("op {index}: put needs a `value`"))),
            ("delete", None) => Op::delete(key),
            ("delete", Some(_)) => {
                return Err(bad_request(format!("op {index}: delete takes no `value`")));
            }
            (other, _) => {
                return Err(bad_request(format!(
                    "op {index}: unknown op {other:?} (use \"put\" or \"delete\")"
                )));
            }
        });
    }
    let seq = state.store.write_async(batch).await?;
    Ok(Json(json!({ "seq": seq })))
}

/// `key`/`value` as text when UTF-8, else `key_hex`/`value_hex`.
fn put_bytes(object: &mut serde_json::Map<String, Value>, name: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => object.insert(name.into(), Value::from(text)),
        Err(_) => object.insert(format!("{name}_hex"), Value::from(hex::encode(bytes))),
    };
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScanQuery {
    #[serde(default)]
    prefix: String,
    limit: Option<usize>,
    after: Option<String>,
}

async fn scan(
    State(state): State<AppState>,
    query: Result<Query<ScanQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|err| bad_request(err.body_text()))?;
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_SCAN_LIMIT {
        return Err(bad_request(format!(
            "limit={limit}: must be 1..={MAX_SCAN_LIMIT}"
        )));
    }
    let reader = state.store.reader().clone();
    let page = blocking(move || {
        reader.scan(
            query.prefix.as_bytes(),
            query.after.as_deref().map(str::as_bytes),
            limit,
        )
    })
    .await?;
    let items: Vec<Value> = page
        .items
        .iter()
        .map(|(key, value)| {
            let mut object = serde_json::Map::new();
            put_bytes(&mut object, "key", key);
            put_bytes(&mut object, "value", value);
            Value::Object(object)
        })
        .collect();
    let next = page
        .next_after
        .map(|key| Value::from(String::from_utf8_lossy(&key).into_owned()));
    Ok(Json(
        json!({ "seq": page.seq, "items": items, "next_after": next }),
    ))
}

/// One watch line: `{"seq":N,"ops":[{"op":"put","key":..,"value":..}, ...]}`.
pub(crate) fn entry_json(entry: &LogEntry) -> Value {
    let ops: Vec<Value> = entry
        .ops
        .iter()
        .map(|op| {
            let mut object = serde_json::Map::new();
            match op {
                Op::Put { key, value } => {
                    object.insert("op".into(), "put".into());
                    put_bytes(&mut object, "key", key);
                    put_bytes(&mut object, "value", value);
                }
                Op::Delete { key } => {
                    object.insert("op".into(), "delete".into());
                    put_bytes(&mut object, "key", key);
                }
            }
            Value::Object(object)
        })
        .collect();
    json!({ "seq": entry.seq, "ops": ops })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WatchQuery {
    from: Option<u64>,
    #[serde(default)]
    prefix: String,
}

async fn watch(
    State(state): State<AppState>,
    query: Result<Query<WatchQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|err| bad_request(err.body_text()))?;
    let after = match query.from {
        Some(from) => from,
        None => state.store.reader().head()?.seq,
    };
    let watch = state.store.watch(after, query.prefix.as_bytes())?;
    let lines = futures::stream::unfold(Some(watch), |watch| async move {
        let mut watch = watch?;
        match watch.next().await {
            Ok(entries) => {
                let mut text = String::new();
                for entry in &entries {
                    text.push_str(&entry_json(entry).to_string());
                    text.push('\n');
                }
                Some((Ok::<_, io::Error>(Bytes::from(text)), Some(watch)))
            }
            // The stream's last line names the error (e.g. retention overtook the watcher);
            // then the response ends.
            Err(err) => {
                let line = format!("{}\n", json!({ "error": err.to_string() }));
                Some((Ok(Bytes::from(line)), None))
            }
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response())
}

async fn status(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let reader = state.store.reader().clone();
    let head = blocking(move || reader.head()).await?;
    let mut answer = json!({
        "role": "root",
        "seq": head.seq,
        "digest": head.digest.to_hex(),
        "chain": head.chain_hex(),
        "cluster_id": head.cluster_id_hex(),
        "log_first": head.log_first,
        "log_bytes": head.log_bytes,
        "format_version": crate::FORMAT_VERSION,
    });
    if let Role::Replica { status, relay } = &state.role {
        let upstream_head = status.upstream_head().max(head.seq);
        answer["role"] = Value::from(if *relay { "relay" } else { "replica" });
        answer["upstream"] = Value::from(status.upstream().to_string());
        answer["root_api"] = json!(status.root_api().map(|addr| addr.to_string()));
        answer["connected"] = Value::from(status.is_connected());
        answer["upstream_head"] = Value::from(upstream_head);
        answer["lag_entries"] = Value::from(upstream_head - head.seq);
        answer["ms_since_upstream_heard"] = json!(status.millis_since_heard());
        answer["received_bytes"] = Value::from(status.received_bytes());
        answer["stopped"] = json!(status.stopped_reason());
        answer["last_error"] = json!(status.last_error());
        answer["bootstrap"] = json!({
            "active": status.is_bootstrapping(),
            "received_bytes": status.bootstrap_received_bytes(),
            "completed": status.bootstraps_completed(),
        });
    }
    Ok(Json(answer))
}

/// A `Write` that forwards chunks to the response body.
struct ChannelWriter(tokio::sync::mpsc::Sender<io::Result<Bytes>>);

impl io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "snapshot reader went away"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

async fn snapshot(State(state): State<AppState>) -> Response {
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(16);
    let reader = state.store.reader().clone();
    tokio::task::spawn_blocking(move || {
        let error_sender = sender.clone();
        if let Err(err) = reader.write_snapshot(ChannelWriter(sender)) {
            tracing::warn!(error = %err, "snapshot stream failed");
            // Fail the body so the client sees a broken transfer, never a short "valid" file.
            let _ = error_sender.blocking_send(Err(io::Error::other(err.to_string())));
        }
    });
    let body = futures::stream::poll_fn(move |cx| receiver.poll_recv(cx));
    (
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::from_stream(body),
    )
        .into_response()
}

async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let text = render_metrics(&state.metrics, &state.store, &state.role).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// What `GET /metrics` serves for a node over `store` in `role` (OpenMetrics text, ending in
/// `# EOF`), for a process that merges several services into one metrics endpoint.
pub async fn encode_metrics(store: &Store, role: &Role) -> Result<String, Error> {
    // Counters are brought up to the store's totals, so fresh ones read the same as old ones.
    render_metrics(&Metrics::new(), store, role).await
}

async fn render_metrics(m: &Metrics, store: &Store, role: &Role) -> Result<String, Error> {
    let stats = store.stats();
    let reader = store.reader().clone();
    let head = tokio::task::spawn_blocking(move || reader.head())
        .await
        .map_err(|_| Error::Closed)??;
    // Counters only move forward: add what happened since the last scrape.
    for (counter, now) in [
        (&m.batches, stats.batches),
        (&m.groups, stats.groups),
        (&m.ops, stats.ops),
        (&m.trimmed, stats.trimmed),
        (&m.failed, stats.failed),
    ] {
        counter.inc_by(now.saturating_sub(counter.get()));
    }
    m.head.set(i64::try_from(head.seq).unwrap_or(i64::MAX));
    m.log_bytes
        .set(i64::try_from(head.log_bytes).unwrap_or(i64::MAX));
    if let Role::Replica { status, .. } = role {
        let lag = status.upstream_head().saturating_sub(head.seq);
        m.lag_entries.set(i64::try_from(lag).unwrap_or(i64::MAX));
        let received = status.received_bytes();
        m.received_bytes
            .inc_by(received.saturating_sub(m.received_bytes.get()));
    }
    let mut text = String::new();
    encode(&mut text, &m.registry).map_err(|_| io::Error::other("metrics encoding failed"))?;
    Ok(text)
}
