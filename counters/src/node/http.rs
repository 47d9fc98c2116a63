//! The node's HTTP API (axum): increments, reads, rate-limit decisions, status and metrics.

use std::{collections::HashMap, io::Write, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::json;
use tokio::{net::TcpListener, sync::watch};

use super::{MAX_KEY_LEN, NodeError, Shared};
use crate::{NodeId, RateLimit, RateLimiter, RetireError};

/// Distinct (limit, window) pairs the rate-limit endpoint keeps limiters for.
const MAX_LIMITERS: usize = 1024;

type AppState = Arc<Shared>;

pub(super) async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    let router = Router::new()
        .route("/v1/counters/{key}/incr", post(incr))
        .route("/v1/counters/{key}", get(read))
        .route("/v1/counters//incr", post(empty_key))
        .route("/v1/counters/", get(empty_key))
        .route("/v1/ratelimit/{key}", get(ratelimit))
        .route("/v1/ratelimit/", get(empty_key))
        .route("/v1/retire/{node}", post(retire))
        .route("/v1/status", get(status))
        .route("/metrics", get(metrics))
        .with_state(shared);
    let stopped = async move {
        let _ = shutdown.changed().await;
    };
    if let Err(err) = axum::serve(listener, router)
        .with_graceful_shutdown(stopped)
        .await
    {
        tracing::error!(error = %err, "HTTP server failed");
    }
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
    match query.get(name) {
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
    let by: i64 = match params.by {
        Some(text) => match text.parse() {
            Ok(by) => by,
            Err(_) => return bad_request(format!("by = {text:?}: not a valid i64")),
        },
        None => 1,
    };
    match shared.incr(&key, by).await {
        Ok(value) => key_value_json(&key, value),
        Err(err) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": err.to_string() })),
        )
            .into_response(),
    }
}

/// `{"key":KEY,"value":VALUE}`, written straight into the body: the answer to every increment,
/// so it skips building a `serde_json::Value` tree.
fn key_value_json(key: &str, value: i64) -> Response {
    let mut body = Vec::with_capacity(key.len() + 40);
    body.extend_from_slice(b"{\"key\":");
    // Writing a string into a Vec cannot fail.
    if serde_json::to_writer(&mut body, key).is_err() {
        return Json(json!({ "key": key, "value": value })).into_response();
    }
    body.extend_from_slice(b",\"value\":");
    // Writing into a Vec cannot fail.
    let _ = write!(body, "{value}}}");
    (
        [(header::CONTENT_TYPE, "application/json")],
        axum::body::Bytes::from(body),
    )
        .into_response()
}

async fn read(State(shared): State<AppState>, Path(key): Path<String>) -> Response {
    if let Err(message) = check_key(&key) {
        return bad_request(message);
    }
    let value = shared.counters.get(key.as_str());
    // Every node's entry, so operators (and tests) can see where counts come from.
    let entries: serde_json::Map<String, serde_json::Value> = shared
        .counters
        .state(key.as_str())
        .entries()
        .iter()
        .map(|(node, count)| {
            (
                node.as_str().to_owned(),
                json!({ "increments": count.increments, "decrements": count.decrements }),
            )
        })
        .collect();
    Json(json!({ "key": key, "value": value, "entries": entries })).into_response()
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
