//! A small HTTP service embedding edgekit-counters the way an app would: it counts requests per
//! client and rate limits each client, answering `429 Too Many Requests` with `Retry-After`.
//!
//! ```text
//! cargo run -p edgekit-counters --example http_rate_limit -- 127.0.0.1:8080 5 10
//! #                                                 address, limit, window seconds
//! curl -i http://127.0.0.1:8080/          # "hello 127.0.0.1, request 1 of yours"
//! curl -i http://127.0.0.1:8080/stats     # every client's request count
//! ```
//!
//! In a fleet, each instance would also ship `requests.delta_since(..)` and
//! `limiter.counters().delta_since(..)` to its peers and merge theirs, so counts and limits hold
//! across instances (the counter node service does this over TCP).

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use axum::{
    Router,
    extract::{ConnectInfo, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use edgekit_counters::{CounterSet, NodeId, RateLimit, RateLimiter};

#[derive(Clone)]
struct App {
    requests: CounterSet<IpAddr>,
    limiter: RateLimiter<IpAddr>,
}

async fn hello(State(app): State<App>, ConnectInfo(peer): ConnectInfo<SocketAddr>) -> Response {
    let client = peer.ip();
    let decision = match app.limiter.check(&client, 1) {
        Ok(decision) => decision,
        Err(err) => return (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()).into_response(),
    };
    let mut response = if decision.allowed {
        app.requests.incr(&client);
        let count = app.requests.get(&client);
        format!("hello {client}, request {count} of yours\n").into_response()
    } else {
        let mut denied = (StatusCode::TOO_MANY_REQUESTS, "slow down\n").into_response();
        // Retry-After is whole seconds; round up so a client that obeys it is allowed.
        let seconds =
            decision.retry_after.as_secs() + u64::from(decision.retry_after.subsec_nanos() > 0);
        denied
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        denied
    };
    let headers = response.headers_mut();
    headers.insert("ratelimit-limit", HeaderValue::from(decision.limit));
    headers.insert("ratelimit-remaining", HeaderValue::from(decision.remaining));
    response
}

async fn stats(State(app): State<App>) -> String {
    let mut clients = app.requests.keys();
    clients.sort();
    clients
        .iter()
        .map(|client| format!("{client} {}\n", app.requests.get(client)))
        .collect()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args.next().as_deref().unwrap_or("127.0.0.1:8080").parse()?;
    let limit: u64 = args.next().as_deref().unwrap_or("5").parse()?;
    let window = Duration::from_secs(args.next().as_deref().unwrap_or("10").parse()?);

    let node = NodeId::new("example-app")?;
    let app = App {
        requests: CounterSet::new(node.clone()),
        limiter: RateLimiter::new(node, RateLimit::new(limit, window)?),
    };
    // Old rate-limit windows are forgotten in the background.
    let limiter = app.limiter.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(window);
        loop {
            tick.tick().await;
            limiter.expire_old_windows();
        }
    });

    let router = Router::new()
        .route("/", get(hello))
        .route("/stats", get(stats))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!("listening on {}", listener.local_addr()?);
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
