//! `edgekit counters ...`: run a counter node, or talk to one over its HTTP API.

use std::{
    io::{self, Write},
    net::SocketAddr,
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use edgekit_counters::{CounterNode, CounterNodeConfig, Durability, NodeId, NodeTls};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;

use crate::args::GlobalOpts;

#[derive(Debug, Subcommand)]
pub(crate) enum CountersCommand {
    /// Run a counter node that replicates with its peers.
    Serve(ServeArgs),
    /// Add to a counter (negative values subtract).
    Incr(IncrArgs),
    /// Read a counter's converged value as one node sees it.
    Get(KeyArgs),
    /// Show a node's id, peers and how fresh each peer's state is.
    Status(NodeArgs),
    /// Fold a retired node's counts into a survivor, keeping every total.
    Retire(RetireArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// This node's stable id; a restart must reuse it.
    #[arg(long, value_name = "ID")]
    pub(crate) node_id: String,
    /// Address for node-to-node replication.
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: SocketAddr,
    /// Peers' replication addresses, comma separated.
    #[arg(long, value_name = "ADDR,...", value_delimiter = ',')]
    pub(crate) peers: Vec<SocketAddr>,
    /// Address for the HTTP API and metrics.
    #[arg(long, value_name = "ADDR")]
    pub(crate) http: SocketAddr,
    /// Directory for this node's durable state.
    #[arg(long, value_name = "DIR")]
    pub(crate) data: PathBuf,
    /// Anti-entropy interval: how often each peer is sent what it has not acknowledged.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    pub(crate) interval: Duration,
    /// Acknowledge increments once written and applied, and fsync the journal this often
    /// (like Redis's `appendfsync everysec`: a power loss may lose the last interval). Without
    /// it, every increment is fsynced before it is acknowledged.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub(crate) fsync_every: Option<Duration>,
    /// Allow node-to-node links on a non-loopback address without TLS (unauthenticated).
    #[arg(long)]
    pub(crate) insecure: bool,
    /// This node's certificate chain (PEM) for mutual TLS between nodes; needs --tls-key and
    /// --tls-ca.
    #[arg(long, value_name = "FILE", requires_all = ["tls_key", "tls_ca"])]
    pub(crate) tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, value_name = "FILE", requires_all = ["tls_cert", "tls_ca"])]
    pub(crate) tls_key: Option<PathBuf>,
    /// The cluster CA (PEM): peers must present a certificate it signed.
    #[arg(long, value_name = "FILE", requires_all = ["tls_cert", "tls_key"])]
    pub(crate) tls_ca: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct NodeArgs {
    /// The node's HTTP address.
    #[arg(long, value_name = "HTTPADDR")]
    pub(crate) node: SocketAddr,
    /// Print machine-readable JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct KeyArgs {
    /// The counter's key.
    pub(crate) key: String,
    #[command(flatten)]
    pub(crate) node: NodeArgs,
}

#[derive(Debug, Args)]
pub(crate) struct IncrArgs {
    /// The counter's key.
    pub(crate) key: String,
    /// Amount to add; negative subtracts.
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    pub(crate) by: i64,
    #[command(flatten)]
    pub(crate) node: NodeArgs,
}

#[derive(Debug, Args)]
pub(crate) struct RetireArgs {
    /// The retired node's id.
    pub(crate) id: String,
    #[command(flatten)]
    pub(crate) node: NodeArgs,
}

pub(crate) fn run(command: CountersCommand, _global: &GlobalOpts) -> anyhow::Result<()> {
    match command {
        CountersCommand::Serve(args) => serve(&args),
        CountersCommand::Incr(args) => {
            let path = format!("/v1/counters/{}/incr?by={}", encode(&args.key), args.by);
            let body = request(args.node.node, reqwest::Method::POST, &path)?;
            print_value(&body, args.node.json)
        }
        CountersCommand::Get(args) => {
            let path = format!("/v1/counters/{}", encode(&args.key));
            let body = request(args.node.node, reqwest::Method::GET, &path)?;
            print_value(&body, args.node.json)
        }
        CountersCommand::Status(args) => {
            let body = request(args.node, reqwest::Method::GET, "/v1/status")?;
            print_status(&body, args.json)
        }
        CountersCommand::Retire(args) => {
            let path = format!("/v1/retire/{}", encode(&args.id));
            let body = request(args.node.node, reqwest::Method::POST, &path)?;
            print_retired(&body, args.node.json)
        }
    }
}

fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let tls = match (&args.tls_cert, &args.tls_key, &args.tls_ca) {
        (Some(cert), Some(key), Some(ca)) => Some(NodeTls::from_pem_files(cert, key, ca)?),
        _ => None,
    };
    if !args.listen.ip().is_loopback() && tls.is_none() && !args.insecure {
        bail!(
            "refusing to listen for node links on non-loopback {} without TLS: give --tls-cert, \
             --tls-key and --tls-ca, or pass --insecure to accept unauthenticated links",
            args.listen
        );
    }
    let node_id = NodeId::new(&args.node_id)
        .with_context(|| format!("--node-id {:?} is not a valid node id", args.node_id))?;
    let mut config = CounterNodeConfig::new(node_id, args.listen, &args.data);
    config.peers.clone_from(&args.peers);
    config.http = Some(args.http);
    config.interval = args.interval;
    config.tls = tls;
    if let Some(every) = args.fsync_every {
        config.durability = Durability::FsyncEvery(every);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let node = CounterNode::start(config).await?;
        let mut stderr = io::stderr().lock();
        writeln!(stderr, "gossip listening on {}", node.gossip_addr())?;
        if let Some(http) = node.http_addr() {
            writeln!(stderr, "http listening on {http}")?;
        }
        drop(stderr);
        tokio::signal::ctrl_c()
            .await
            .context("cannot wait for Ctrl-C")?;
        node.shutdown();
        Ok(())
    })
}

fn encode(key: &str) -> String {
    utf8_percent_encode(key, NON_ALPHANUMERIC).to_string()
}

/// One request to a node's HTTP API; a non-2xx answer becomes an error with the node's message.
fn request(node: SocketAddr, method: reqwest::Method, path: &str) -> anyhow::Result<Value> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .context("cannot build the HTTP client")?;
        let url = format!("http://{node}{path}");
        let response = client
            .request(method, &url)
            .send()
            .await
            .with_context(|| format!("cannot reach the counter node at {node}"))?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .with_context(|| format!("the node at {node} answered {status} without JSON"))?;
        if !status.is_success() {
            let message = body["error"].as_str().unwrap_or("no message");
            bail!("the node at {node} answered {status}: {message}");
        }
        Ok(body)
    })
}

fn print_value(body: &Value, json: bool) -> anyhow::Result<()> {
    let mut stdout = io::stdout().lock();
    if json {
        writeln!(stdout, "{body}")?;
    } else {
        writeln!(stdout, "{}", body["value"])?;
    }
    Ok(())
}

fn print_retired(body: &Value, json: bool) -> anyhow::Result<()> {
    let mut stdout = io::stdout().lock();
    if json {
        writeln!(stdout, "{body}")?;
        return Ok(());
    }
    let text = |value: &Value| value.as_str().unwrap_or("?").to_owned();
    if body["already_retired"].as_bool() == Some(true) {
        writeln!(stdout, "{} was already retired", text(&body["retired"]))?;
    } else {
        writeln!(
            stdout,
            "retired {} into {}: {} keys folded",
            text(&body["retired"]),
            text(&body["survivor"]),
            body["keys_folded"]
        )?;
    }
    Ok(())
}

fn print_status(body: &Value, json: bool) -> anyhow::Result<()> {
    let mut stdout = io::stdout().lock();
    if json {
        writeln!(stdout, "{body}")?;
        return Ok(());
    }
    let text = |value: &Value| value.as_str().unwrap_or("?").to_owned();
    writeln!(stdout, "node    {}", text(&body["node_id"]))?;
    writeln!(stdout, "gossip  {}", text(&body["gossip_addr"]))?;
    writeln!(stdout, "keys    {}", body["keys"])?;
    for retired in body["retired"].as_array().into_iter().flatten() {
        writeln!(
            stdout,
            "retired {} (folded into {})",
            text(&retired["retired"]),
            text(&retired["survivor"])
        )?;
    }
    for peer in body["peers"].as_array().into_iter().flatten() {
        let id = peer["node_id"].as_str().unwrap_or("(no handshake yet)");
        let sync = match peer["last_sync_age_ms"].as_u64() {
            Some(age) => format!("synced {age} ms ago"),
            None => "never synced".to_owned(),
        };
        write!(stdout, "peer    {} {id} {sync}", text(&peer["addr"]))?;
        if let Some(error) = peer["last_error"].as_str() {
            write!(stdout, " (last error: {error})")?;
        }
        writeln!(stdout)?;
    }
    Ok(())
}
