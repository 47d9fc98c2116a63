//! `edgekit resolve NAME [TYPE]`: one recursive resolution with a fresh engine, printed like dig.

use std::{
    io::{self, Write},
    path::PathBuf,
    str::FromStr,
    time::Instant,
};

use anyhow::{Context, bail};
use clap::Args;
use edgekit_dns::{
    Resolution, Resolver, ResolverConfig, TraceStep,
    proto::rr::{Name, Record, RecordType},
    rcode_mnemonic,
};

use crate::args::GlobalOpts;

/// Resolve NAME from the root servers down and print the answer.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  edgekit resolve example.com\n  edgekit resolve example.com MX --trace\n  \
edgekit resolve www.example.test A --root-hints test.root --allow-loopback --short\n\n\
Exit status: 0 when an answer (including NXDOMAIN or NODATA) was obtained; 1 on SERVFAIL \
(no server gave a usable answer) or timeout."
)]
pub(crate) struct ResolveArgs {
    /// The domain name to resolve, e.g. `www.example.com`.
    pub(crate) name: String,
    /// The record type to ask for (A, AAAA, MX, TXT, NS, CNAME, SOA, ...).
    #[arg(default_value = "A")]
    pub(crate) record_type: String,
    /// Root hints file in the standard `named.root` format; IANA's hints are built in.
    #[arg(long, value_name = "FILE")]
    pub(crate) root_hints: Option<PathBuf>,
    /// Allow upstream servers on loopback and private addresses (test hierarchies).
    #[arg(long)]
    pub(crate) allow_loopback: bool,
    /// Show each step: which server was asked, what it answered, how long it took.
    #[arg(long)]
    pub(crate) trace: bool,
    /// Print only the record data, one per line.
    #[arg(long, conflicts_with = "json")]
    pub(crate) short: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// Resolver settings from a TOML file (the `[resolver]` table; see docs/dns-config.md).
    /// Flags given here override it.
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Port of the authoritative servers (test hierarchies that cannot bind port 53).
    #[arg(long, hide = true, env = "EDGEKIT_AUTHORITY_PORT", value_name = "PORT")]
    pub(crate) authority_port: Option<u16>,
}

fn load_config(args: &ResolveArgs) -> anyhow::Result<ResolverConfig> {
    let overrides = crate::dns_config::ResolverOverrides {
        root_hints: args.root_hints.clone(),
        allow_loopback: args.allow_loopback,
        authority_port: args.authority_port,
    };
    Ok(crate::dns_config::load(args.config.as_deref(), &overrides)?.resolver)
}

pub(crate) fn run(args: ResolveArgs, _global: &GlobalOpts) -> anyhow::Result<()> {
    let mut name = Name::from_str(&args.name)
        .with_context(|| format!("{:?} is not a valid domain name", args.name))?;
    name.set_fqdn(true);
    let record_type = RecordType::from_str(&args.record_type.to_ascii_uppercase())
        .ok()
        .filter(|rtype| !matches!(rtype, RecordType::Unknown(_)))
        .with_context(|| {
            format!(
                "{:?} is not a record type this resolver knows",
                args.record_type
            )
        })?;
    let config = load_config(&args)?;
    let resolver = Resolver::new(config).context("cannot set up the resolver")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let started = Instant::now();
    let result = runtime.block_on(resolver.resolve_traced(&name, record_type));
    let elapsed_ms = started.elapsed().as_millis();
    let mut out = io::stdout().lock();
    let resolution = match result {
        Ok(resolution) => resolution,
        Err(failed) => {
            if args.trace && !args.json {
                // The steps up to the failure are what a person needs to see why it failed.
                print_trace(&mut out, &failed.trace)?;
                out.flush()?;
            }
            let err = failed.error;
            let kind = if err.is_timeout() {
                "timed out"
            } else {
                "failed (SERVFAIL)"
            };
            bail!("resolving {name} {record_type} {kind}: {err}");
        }
    };
    if args.json {
        print_json(
            &mut out,
            &name,
            record_type,
            &resolution,
            elapsed_ms,
            args.trace,
        )?;
    } else if args.short {
        if args.trace {
            print_trace(&mut out, &resolution.trace)?;
        }
        for record in &resolution.answers {
            writeln!(out, "{}", record.data)?;
        }
    } else {
        if args.trace {
            print_trace(&mut out, &resolution.trace)?;
            writeln!(out)?;
        }
        print_dig(&mut out, &name, record_type, &resolution, elapsed_ms)?;
    }
    out.flush()?;
    Ok(())
}

fn print_trace(out: &mut impl Write, trace: &[TraceStep]) -> io::Result<()> {
    writeln!(out, ";; TRACE ({} upstream queries)", trace.len())?;
    writeln!(
        out,
        ";; {:<16} {:<21} {:<34} -> outcome  [time]",
        "zone asked", "server", "question"
    )?;
    for step in trace {
        writeln!(out, ";; {step}")?;
    }
    Ok(())
}

fn record_line(record: &Record) -> String {
    format!(
        "{}\t{}\t{}\t{}\t{}",
        record.name,
        record.ttl,
        record.dns_class,
        record.record_type(),
        record.data
    )
}

fn print_dig(
    out: &mut impl Write,
    name: &Name,
    record_type: RecordType,
    resolution: &Resolution,
    elapsed_ms: u128,
) -> io::Result<()> {
    writeln!(
        out,
        ";; ->>HEADER<<- status: {}, answers: {}, upstream queries: {}",
        rcode_mnemonic(resolution.rcode),
        resolution.answers.len(),
        resolution.upstream_queries
    )?;
    writeln!(out, "\n;; QUESTION SECTION:\n;{name}\t\tIN\t{record_type}")?;
    if !resolution.answers.is_empty() {
        writeln!(out, "\n;; ANSWER SECTION:")?;
        for record in &resolution.answers {
            writeln!(out, "{}", record_line(record))?;
        }
    }
    if !resolution.authorities.is_empty() {
        writeln!(out, "\n;; AUTHORITY SECTION:")?;
        for record in &resolution.authorities {
            writeln!(out, "{}", record_line(record))?;
        }
    }
    writeln!(out, "\n;; Query time: {elapsed_ms} msec")?;
    Ok(())
}

fn record_json(record: &Record) -> serde_json::Value {
    serde_json::json!({
        "name": record.name.to_string(),
        "ttl": record.ttl,
        "class": record.dns_class.to_string(),
        "type": record.record_type().to_string(),
        "data": record.data.to_string(),
    })
}

fn print_json(
    out: &mut impl Write,
    name: &Name,
    record_type: RecordType,
    resolution: &Resolution,
    elapsed_ms: u128,
    with_trace: bool,
) -> anyhow::Result<()> {
    let mut value = serde_json::json!({
        "question": { "name": name.to_string(), "type": record_type.to_string() },
        "status": rcode_mnemonic(resolution.rcode),
        "answers": resolution.answers.iter().map(record_json).collect::<Vec<_>>(),
        "authority": resolution.authorities.iter().map(record_json).collect::<Vec<_>>(),
        "upstream_queries": resolution.upstream_queries,
        "elapsed_ms": elapsed_ms,
    });
    if with_trace {
        value["trace"] = resolution
            .trace
            .iter()
            .map(|step| {
                serde_json::json!({
                    "depth": step.depth,
                    "zone": step.zone.to_string(),
                    "server": step.server.to_string(),
                    "qname": step.qname.to_string(),
                    "qtype": step.qtype.to_string(),
                    "outcome": step.outcome.to_string(),
                    "elapsed_ms": step.elapsed.as_secs_f64() * 1000.0,
                    "tcp": step.over_tcp,
                })
            })
            .collect();
    }
    serde_json::to_writer_pretty(&mut *out, &value)?;
    writeln!(out)?;
    Ok(())
}
