//! `edgekit kv ...`: run a quicksilver-kv node, or read and write keys on one.

use std::{
    io::Write,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use quicksilver_kv::{Durability, ReplicaStatus, Role, Store, StoreConfig};
use serde_json::Value;

use crate::args::GlobalOpts;

#[derive(Debug, Subcommand)]
pub(crate) enum KvCommand {
    /// Run a node: the root (the only writer) or, with --upstream, a read-only replica.
    Serve(ServeArgs),
    /// Write a key at the root.
    Put(PutArgs),
    /// Read a key.
    Get(KeyArgs),
    /// Delete a key at the root.
    Del(KeyArgs),
    /// List keys under a prefix.
    Scan(ScanArgs),
    /// Stream changes as they are applied, from a sequence number.
    Watch(WatchArgs),
    /// Show a node's role, applied sequence, lag and digest.
    Status(NodeArgs),
    /// Save a consistent snapshot of a node's store to a file.
    Snapshot(SnapshotArgs),
    /// Compare two nodes' digests at a common sequence (waits up to 10 s for one).
    Verify(VerifyArgs),
}

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// The node to check against the other (usually the root).
    #[arg(long, value_name = "ADDR")]
    pub(crate) against: SocketAddr,
    #[command(flatten)]
    pub(crate) node: NodeArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Directory holding the LMDB environment.
    #[arg(long, value_name = "DIR")]
    pub(crate) data: PathBuf,
    /// Address for the HTTP API (port 0 picks a free port; the bound address is printed on
    /// stderr as `listening on ADDR`).
    #[arg(long, value_name = "ADDR")]
    pub(crate) api: SocketAddr,
    /// Do not fsync commits: survives a process crash, not a machine crash. For tests and
    /// benchmarks. (Without it the root fsyncs every group commit fully; a replica flushes
    /// each commit's data pages once and re-fetches from upstream whatever a machine crash
    /// undoes.)
    #[arg(long)]
    pub(crate) no_fsync: bool,
    /// Largest value accepted, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20)]
    pub(crate) max_value_len: usize,
    /// Keep at most this many log entries (older ones are truncated in the background).
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    pub(crate) retain_entries: u64,
    /// Be a read-only replica of this upstream (the root or a relay) replication address.
    #[arg(long, value_name = "ADDR")]
    pub(crate) upstream: Option<SocketAddr>,
    /// Serve the replication protocol to downstream replicas on this address (printed on
    /// stderr as `replication listening on ADDR`).
    #[arg(long, value_name = "ADDR")]
    pub(crate) repl_listen: Option<SocketAddr>,
    /// Allow replication in clear text on a non-loopback address.
    #[arg(long)]
    pub(crate) insecure: bool,
    /// This node's certificate chain (PEM) for mutual TLS on replication links; needs
    /// --tls-key and --tls-ca.
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
    /// The node's HTTP API address.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7380")]
    pub(crate) node: SocketAddr,
    /// Print machine-readable JSON (the node's own answer).
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct KeyArgs {
    /// The key (any text; `/` is allowed).
    pub(crate) key: String,
    #[command(flatten)]
    pub(crate) node: NodeArgs,
}

#[derive(Debug, Args)]
pub(crate) struct PutArgs {
    /// The key (any text; `/` is allowed).
    pub(crate) key: String,
    /// The value; use --file to read it from a file instead.
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    pub(crate) value: Option<String>,
    /// Read the value from this file.
    #[arg(long, value_name = "FILE")]
    pub(crate) file: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) node: NodeArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ScanArgs {
    /// Only keys starting with this prefix.
    #[arg(default_value = "")]
    pub(crate) prefix: String,
    /// At most this many keys.
    #[arg(long, default_value_t = 1000)]
    pub(crate) limit: usize,
    #[command(flatten)]
    pub(crate) node: NodeArgs,
}

#[derive(Debug, Args)]
pub(crate) struct WatchArgs {
    /// Start after this sequence number (default: from now on).
    #[arg(long, value_name = "SEQ")]
    pub(crate) from: Option<u64>,
    /// Only keys starting with this prefix.
    #[arg(long, value_name = "P")]
    pub(crate) prefix: Option<String>,
    #[command(flatten)]
    pub(crate) node: NodeArgs,
}

#[derive(Debug, Args)]
pub(crate) struct SnapshotArgs {
    /// Where to write the snapshot.
    pub(crate) out: PathBuf,
    #[command(flatten)]
    pub(crate) node: NodeArgs,
}

pub(crate) fn run(command: KvCommand, _global: &GlobalOpts) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match command {
        KvCommand::Serve(args) => runtime.block_on(serve(args)),
        KvCommand::Put(args) => runtime.block_on(put(args, &mut out)),
        KvCommand::Get(args) => runtime.block_on(get(args, &mut out)),
        KvCommand::Del(args) => runtime.block_on(del(args, &mut out)),
        KvCommand::Scan(args) => runtime.block_on(scan(args, &mut out)),
        KvCommand::Watch(args) => runtime.block_on(watch(args, &mut out)),
        KvCommand::Status(args) => runtime.block_on(status(args, &mut out)),
        KvCommand::Snapshot(args) => runtime.block_on(snapshot(args, &mut out)),
        KvCommand::Verify(args) => runtime.block_on(verify(args, &mut out)),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = StoreConfig {
        durability: if args.no_fsync {
            Durability::NoSync
        } else if args.upstream.is_some() {
            Durability::DataSync
        } else {
            Durability::Fsync
        },
        max_value_len: args.max_value_len,
        retention: quicksilver_kv::Retention {
            max_entries: args.retain_entries,
            ..quicksilver_kv::Retention::default()
        },
        ..StoreConfig::default()
    };
    let tls = match (&args.tls_cert, &args.tls_key, &args.tls_ca) {
        (Some(cert), Some(key), Some(ca)) => Some(
            quicksilver_kv::ReplTls::from_pem_files(cert, key, ca)
                .context("cannot set up mutual TLS for replication")?,
        ),
        _ => None,
    };
    if let Some(addr) = args.repl_listen
        && !addr.ip().is_loopback()
        && tls.is_none()
        && !args.insecure
    {
        bail!(
            "refusing to serve replication in clear text on {addr}: give --tls-cert, --tls-key \
             and --tls-ca, use a loopback address, or pass --insecure"
        );
    }
    let (store, role) = match args.upstream {
        None => {
            let store = Store::open(&args.data, config)
                .with_context(|| format!("cannot open the store in {}", args.data.display()))?;
            (store, Role::Root)
        }
        Some(upstream) => {
            let status = Arc::new(match &tls {
                Some(tls) => ReplicaStatus::with_tls(upstream, tls.clone()),
                None => ReplicaStatus::new(upstream),
            });
            let store = quicksilver_kv::open_or_bootstrap(&args.data, config, upstream, &status)
                .await
                .with_context(|| {
                    format!(
                        "cannot open or bootstrap the replica in {}",
                        args.data.display()
                    )
                })?;
            tokio::spawn(quicksilver_kv::follow(
                store.clone(),
                upstream,
                Arc::clone(&status),
            ));
            let relay = args.repl_listen.is_some();
            (store, Role::Replica { status, relay })
        }
    };
    let listener = tokio::net::TcpListener::bind(args.api)
        .await
        .with_context(|| format!("cannot listen on {}", args.api))?;
    let bound = listener.local_addr()?;
    if let Some(addr) = args.repl_listen {
        // Replicas learn the root's API address through the handshake, for their 403s.
        let root_api = match &role {
            Role::Root => quicksilver_kv::RootApi::Here(bound),
            Role::Replica { status, .. } => quicksilver_kv::RootApi::Relayed(Arc::clone(status)),
            _ => quicksilver_kv::RootApi::Unknown,
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for replication on {addr}"))?;
        eprintln!("replication listening on {}", listener.local_addr()?);
        tokio::spawn(quicksilver_kv::serve_replication(
            store.clone(),
            listener,
            root_api,
            tls,
            std::future::pending(),
        ));
    }
    // The one line scripts and tests wait for; logs may be silenced, this may not.
    eprintln!("listening on {bound}");
    tracing::info!(data = %args.data.display(), %bound, ?role, "kv node serving");
    quicksilver_kv::serve(store, role, listener, shutdown_signal())
        .await
        .context("the API server failed")
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let Ok(mut terminate) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            let _ = interrupt.await;
            return;
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

/// Everything but unreserved characters and `/` is escaped, so any key survives the URL.
const KEY_ESCAPES: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn key_url(node: SocketAddr, key: &str) -> String {
    format!(
        "http://{node}/v1/kv/{}",
        utf8_percent_encode(key, KEY_ESCAPES)
    )
}

fn query_value(value: &str) -> String {
    utf8_percent_encode(value, NON_ALPHANUMERIC).to_string()
}

/// Send, and turn a non-2xx answer into an error carrying the node's message.
async fn send(
    request: reqwest::RequestBuilder,
    node: SocketAddr,
) -> anyhow::Result<reqwest::Response> {
    let response = request
        .send()
        .await
        .with_context(|| format!("cannot reach the kv node at {node}"))?;
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or(body);
    bail!("the node answered {status}: {message}")
}

async fn json_of(response: reqwest::Response) -> anyhow::Result<Value> {
    response
        .json()
        .await
        .context("the node's answer is not the JSON expected")
}

fn print_seq(out: &mut impl Write, answer: &Value, json: bool) -> anyhow::Result<()> {
    if json {
        writeln!(out, "{answer}")?;
    } else {
        writeln!(out, "seq {}", answer["seq"])?;
    }
    Ok(())
}

async fn put(args: PutArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let value = match (&args.value, &args.file) {
        (Some(value), _) => value.clone().into_bytes(),
        (None, Some(file)) => std::fs::read(file)
            .with_context(|| format!("cannot read the value from {}", file.display()))?,
        (None, None) => bail!("give a VALUE or --file"),
    };
    let node = args.node.node;
    let request = reqwest::Client::new()
        .put(key_url(node, &args.key))
        .body(value);
    let answer = json_of(send(request, node).await?).await?;
    print_seq(out, &answer, args.node.json)
}

async fn get(args: KeyArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let node = args.node.node;
    let response = send(reqwest::Client::new().get(key_url(node, &args.key)), node).await?;
    let seq = response
        .headers()
        .get(quicksilver_kv::SEQ_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let value = response.bytes().await.context("reading the value")?;
    if args.node.json {
        let text = String::from_utf8_lossy(&value);
        writeln!(
            out,
            "{}",
            serde_json::json!({ "key": args.key, "value": text, "seq": seq })
        )?;
    } else {
        out.write_all(&value)?;
        writeln!(out)?;
    }
    Ok(())
}

async fn del(args: KeyArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let node = args.node.node;
    let request = reqwest::Client::new().delete(key_url(node, &args.key));
    let answer = json_of(send(request, node).await?).await?;
    print_seq(out, &answer, args.node.json)
}

async fn scan(args: ScanArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let node = args.node.node;
    let url = format!(
        "http://{node}/v1/kv?prefix={}&limit={}",
        query_value(&args.prefix),
        args.limit
    );
    let answer = json_of(send(reqwest::Client::new().get(url), node).await?).await?;
    if args.node.json {
        writeln!(out, "{answer}")?;
        return Ok(());
    }
    for item in answer["items"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "{}\t{}",
            text_field(item, "key"),
            text_field(item, "value")
        )?;
    }
    Ok(())
}

/// `key` as text, or `key_hex` shown as `0x...` when the bytes are not UTF-8.
fn text_field(item: &Value, name: &str) -> String {
    match item.get(name).and_then(Value::as_str) {
        Some(text) => text.to_owned(),
        None => format!(
            "0x{}",
            item.get(format!("{name}_hex"))
                .and_then(Value::as_str)
                .unwrap_or_default()
        ),
    }
}

async fn watch(args: WatchArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let node = args.node.node;
    let mut url = format!("http://{node}/v1/watch?prefix=");
    url.push_str(&query_value(args.prefix.as_deref().unwrap_or_default()));
    if let Some(from) = args.from {
        url.push_str(&format!("&from={from}"));
    }
    let mut response = send(reqwest::Client::new().get(url), node).await?;
    let mut pending = Vec::new();
    while let Some(chunk) = response.chunk().await.context("the watch stream broke")? {
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let entry: Value =
                serde_json::from_slice(&line).context("the node sent a line that is not JSON")?;
            if let Some(error) = entry.get("error").and_then(Value::as_str) {
                bail!("the watch ended: {error}");
            }
            if args.node.json {
                writeln!(out, "{entry}")?;
            } else {
                for op in entry["ops"].as_array().into_iter().flatten() {
                    match op["op"].as_str() {
                        Some("put") => writeln!(
                            out,
                            "{}\tput\t{}\t{}",
                            entry["seq"],
                            text_field(op, "key"),
                            text_field(op, "value")
                        )?,
                        _ => writeln!(out, "{}\tdelete\t{}", entry["seq"], text_field(op, "key"))?,
                    }
                }
            }
            out.flush()?;
        }
    }
    Ok(())
}

async fn status(args: NodeArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let node = args.node;
    let url = format!("http://{node}/v1/status");
    let answer = json_of(send(reqwest::Client::new().get(url), node).await?).await?;
    if args.json {
        writeln!(out, "{answer}")?;
        return Ok(());
    }
    for field in [
        "role",
        "seq",
        "digest",
        "chain",
        "cluster_id",
        "log_first",
        "log_bytes",
    ] {
        let value = &answer[field];
        let shown = value
            .as_str()
            .map_or_else(|| value.to_string(), str::to_owned);
        writeln!(out, "{field:<11}{shown}")?;
    }
    if let Some(bootstrap) = answer.get("bootstrap") {
        let state = if bootstrap["active"] == true {
            "receiving a snapshot"
        } else {
            "idle"
        };
        writeln!(
            out,
            "{:<11}{state}, {} bytes received, {} completed",
            "bootstrap", bootstrap["received_bytes"], bootstrap["completed"]
        )?;
    }
    // A replica's trouble, when it has any: stopped for good, or retrying after an error.
    for field in ["stopped", "last_error"] {
        if let Some(reason) = answer[field].as_str() {
            writeln!(out, "{field:<11}{reason}")?;
        }
    }
    Ok(())
}

async fn snapshot(args: SnapshotArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let node = args.node.node;
    let url = format!("http://{node}/v1/snapshot");
    let mut response = send(reqwest::Client::new().get(url), node).await?;
    // Written under a temporary name and renamed at the end, so OUT is never a partial file.
    let partial = partial_path(&args.out);
    let mut file = std::fs::File::create(&partial)
        .with_context(|| format!("cannot create {}", partial.display()))?;
    let mut bytes = 0u64;
    let mut header = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .context("the snapshot transfer broke")?
    {
        if header.len() < 33 {
            header.extend_from_slice(&chunk[..chunk.len().min(33 - header.len())]);
        }
        file.write_all(&chunk)?;
        bytes += chunk.len() as u64;
    }
    file.sync_all()?;
    std::fs::rename(&partial, &args.out)
        .with_context(|| format!("cannot move the snapshot to {}", args.out.display()))?;
    // Header: magic (8), version (1), cluster id (16), sequence (8, big-endian).
    let seq = header
        .get(25..33)
        .and_then(|s| <[u8; 8]>::try_from(s).ok())
        .map(u64::from_be_bytes);
    if args.node.json {
        writeln!(
            out,
            "{}",
            serde_json::json!({ "file": args.out.display().to_string(), "bytes": bytes, "seq": seq })
        )?;
    } else {
        writeln!(
            out,
            "snapshot of {bytes} bytes at seq {} written to {}",
            seq.map_or_else(|| "?".into(), |s| s.to_string()),
            args.out.display()
        )?;
    }
    Ok(())
}

async fn verify(args: VerifyArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let status = |node: SocketAddr| {
        let request = client.get(format!("http://{node}/v1/status"));
        async move { json_of(send(request, node).await?).await }
    };
    // Nodes move on while we ask; look for a moment when both report the same sequence.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (ours, theirs) = (status(args.node.node).await?, status(args.against).await?);
        if ours["seq"] == theirs["seq"] {
            if ours["digest"] != theirs["digest"] {
                bail!(
                    "DIGEST MISMATCH at seq {}: {} has {}, {} has {}",
                    ours["seq"],
                    args.node.node,
                    ours["digest"],
                    args.against,
                    theirs["digest"]
                );
            }
            if args.node.json {
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({ "match": true, "seq": ours["seq"], "digest": ours["digest"] })
                )?;
            } else {
                writeln!(
                    out,
                    "digests match at seq {}: {}",
                    ours["seq"], ours["digest"]
                )?;
            }
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "no common sequence within 10 s: {} is at {}, {} at {}",
                args.node.node,
                ours["seq"],
                args.against,
                theirs["seq"]
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn partial_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    out.with_file_name(name)
}
