//! The node's admin HTTP server: `/healthz` (the process serves), `/readyz` (every enabled
//! part is up) and one `/metrics` that merges every part's metrics.

use std::{
    fmt::Write as _,
    sync::{Arc, Mutex, MutexGuard},
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use edgekit_counters::CounterNode;
use edgekit_dns::DnsServer;
use quicksilver_kv::{Role, Store};

/// Where one part stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PartState {
    Disabled,
    Starting,
    Up,
}

impl PartState {
    fn name(self) -> &'static str {
        match self {
            Self::Disabled => "disabled",
            Self::Starting => "starting",
            Self::Up => "up",
        }
    }
}

/// The running parts, filled in as each comes up and taken out when the node drains.
#[derive(Debug)]
pub(crate) struct Parts {
    pub(crate) dns: Mutex<(PartState, Option<DnsServer>)>,
    pub(crate) counters: Mutex<(PartState, Option<CounterNode>)>,
    pub(crate) kv: Mutex<(PartState, Option<(Store, Role)>)>,
    /// Whether `node ready` was printed.
    pub(crate) announced: std::sync::atomic::AtomicBool,
}

impl Parts {
    pub(crate) fn new(dns: bool, counters: bool, kv: bool) -> Self {
        let state = |enabled| {
            if enabled {
                PartState::Starting
            } else {
                PartState::Disabled
            }
        };
        Self {
            dns: Mutex::new((state(dns), None)),
            counters: Mutex::new((state(counters), None)),
            kv: Mutex::new((state(kv), None)),
            announced: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn states(&self) -> [(&'static str, PartState); 3] {
        [
            ("dns", lock(&self.dns).0),
            ("counters", lock(&self.counters).0),
            ("kv", lock(&self.kv).0),
        ]
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.states()
            .iter()
            .all(|(_, state)| *state != PartState::Starting)
    }
}

/// A poisoned lock only means a panic elsewhere; the state it guards is still consistent.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(crate) fn router(parts: Arc<Parts>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(parts)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(parts): State<Arc<Parts>>) -> Response {
    let mut body = String::new();
    for (name, state) in parts.states() {
        let _ = writeln!(body, "{name} {}", state.name());
    }
    let status = if parts.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body).into_response()
}

async fn metrics(State(parts): State<Arc<Parts>>) -> Response {
    match merged_metrics(&parts).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{error:#}\n")).into_response(),
    }
}

/// Each part's exposition without its `# EOF`, then the node's own gauges and one `# EOF`.
async fn merged_metrics(parts: &Parts) -> anyhow::Result<String> {
    let mut text = String::new();
    if let Some(server) = &lock(&parts.dns).1 {
        let mut part = String::new();
        server.encode_metrics(&mut part)?;
        text.push_str(strip_eof(&part));
    }
    if let Some(node) = &lock(&parts.counters).1 {
        let mut part = String::new();
        node.encode_metrics(&mut part)?;
        text.push_str(strip_eof(&part));
    }
    let kv = lock(&parts.kv).1.clone();
    if let Some((store, role)) = kv {
        let part = quicksilver_kv::encode_metrics(&store, &role).await?;
        text.push_str(strip_eof(&part));
    }
    text.push_str(
        "# HELP edgekit_node_part_up Whether a part of the node is up (1), starting (0); disabled \
         parts are absent.\n# TYPE edgekit_node_part_up gauge\n",
    );
    for (name, state) in parts.states() {
        if state != PartState::Disabled {
            let up = u8::from(state == PartState::Up);
            writeln!(text, "edgekit_node_part_up{{part=\"{name}\"}} {up}")?;
        }
    }
    text.push_str("# EOF\n");
    Ok(text)
}

fn strip_eof(text: &str) -> &str {
    text.strip_suffix("# EOF\n").unwrap_or(text)
}
