//! `passpulse`: wallet-pass analytics. One binary: `serve` (the server), `gen` (synthetic data),
//! `publish` (load generator), `query` (SQL client) and `bench` (throughput).

mod admin;
mod automation_setup;
mod bench;
mod config;
mod connections;
mod demo;
mod http;
mod issue_cmd;
mod issuer_setup;
mod publish;
mod query_cmd;
mod serve;
mod synth;

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use passpulse_engine::time::{now_millis, parse_rfc3339_millis};

#[derive(Debug, Parser)]
#[command(
    name = "passpulse",
    version,
    about = "Wallet-pass analytics on NATS JetStream, Arrow and DataFusion"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: consume the bus, keep aggregates live, answer SQL over HTTP.
    Serve(config::ServeArgs),
    /// Write deterministic synthetic events (NDJSON).
    Gen(GenArgs),
    /// Publish NDJSON events to JetStream (a load generator).
    Publish(PublishArgs),
    /// Run SQL against a server.
    Query(QueryArgs),
    /// Show a data directory: checkpoints, partitions, files and row counts (read-only).
    Inspect(admin::InspectArgs),
    /// Merge small Parquet files of a data directory no server is using.
    Compact(admin::CompactArgs),
    /// Build one signed Apple Wallet pass (.pkpass) from a template, offline.
    Issue(issue_cmd::IssueArgs),
    /// Certificates for signing passes.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Automation flows.
    #[command(subcommand)]
    Flows(FlowsCommand),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Subcommand)]
enum FlowsCommand {
    /// Validate a flows file (TOML) against the pass templates; exits non-zero on an error.
    Check(FlowsCheckArgs),
}

#[derive(Debug, clap::Args)]
struct FlowsCheckArgs {
    file: PathBuf,
    /// Directory of pass templates the flows refer to.
    #[arg(long, default_value = "data/templates")]
    templates: PathBuf,
}

#[derive(Debug, clap::Args)]
struct GenArgs {
    /// Random seed; the same seed gives the same bytes.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Number of events.
    #[arg(long, default_value_t = 10_000)]
    events: u64,
    /// Start of simulated time (RFC 3339); default: 30 days ago.
    #[arg(long)]
    start: Option<String>,
    /// Customers signing up per simulated day.
    #[arg(long, default_value_t = 2_000.0)]
    arrivals_per_day: f64,
    /// Output file (default: stdout).
    #[arg(long, short)]
    out: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct PublishArgs {
    /// NDJSON file to publish (`-` for stdin); or use --generate.
    #[arg(long, short, conflicts_with = "generate")]
    file: Option<PathBuf>,
    /// Generate this many events on the fly instead of reading a file.
    #[arg(long)]
    generate: Option<u64>,
    /// Seed for --generate.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Events per NATS message.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    #[arg(
        long,
        env = "PASSPULSE_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    nats_url: String,
    /// Subject prefix of the event stream.
    #[arg(long, default_value = "passpulse.events")]
    prefix: String,
}

#[derive(Debug, clap::Args)]
struct QueryArgs {
    /// The SQL statement.
    sql: String,
    /// Server base URL.
    #[arg(long, env = "PASSPULSE_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    #[arg(long, value_enum, default_value = "table")]
    format: query_cmd::Output,
    /// Bearer token, if the server requires one.
    #[arg(long, env = "PASSPULSE_AUTH_TOKEN")]
    token: Option<String>,
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Create a development root, WWDR-like intermediate and pass certificate (not trusted by
    /// Apple) so demos and tests sign real passes.
    Dev(issue_cmd::CertsDevArgs),
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Engine ingest rate against a bare JetStream consumer on the same stream.
    Ingest(bench::IngestArgs),
    /// Start-up time of a persistent engine at two history sizes; flush rate; bytes on disk.
    Restart(bench::RestartArgs),
    /// Signed .pkpass files per second beside the raw RSA-2048 rate; push fan-out rate.
    Issue(bench::IssueBenchArgs),
    /// Points change on the bus → APNs push: latency and burst rate through the automation.
    Automation(bench::AutomationBenchArgs),
    /// Every insight's latency over a large history (in memory + Parquet, and Parquet only)
    /// beside DuckDB on the same files; the live figures.
    Insights(bench::InsightsBenchArgs),
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,async_nats=warn".into()),
        )
        .with_writer(std::io::stderr)
        // colour codes only for a person at a terminal, never into a log file or a pipe
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the Tokio runtime")?;
    rt.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::serve(config::Config::load(&args)?).await,
            Command::Gen(a) => generate(a),
            Command::Publish(a) => publish(a).await,
            Command::Query(a) => query_cmd::run(&a.url, &a.sql, a.format, a.token.as_deref()).await,
            Command::Bench(BenchCommand::Ingest(a)) => bench::ingest(a).await,
            Command::Bench(BenchCommand::Restart(a)) => bench::restart(a).await,
            Command::Bench(BenchCommand::Issue(a)) => bench::issue(a).await,
            Command::Bench(BenchCommand::Automation(a)) => bench::automation(a).await,
            Command::Bench(BenchCommand::Insights(a)) => bench::insights(a).await,
            Command::Flows(FlowsCommand::Check(a)) => {
                automation_setup::check(&a.file, &a.templates)
            }
            Command::Inspect(a) => admin::inspect(a),
            Command::Compact(a) => admin::compact(a),
            Command::Issue(a) => issue_cmd::issue(a),
            Command::Certs(CertsCommand::Dev(a)) => issue_cmd::certs_dev(a),
        }
    })
}

fn generate(a: GenArgs) -> Result<()> {
    let start_ms = match &a.start {
        Some(s) => parse_rfc3339_millis(s)
            .with_context(|| format!("--start {s:?} is not an RFC 3339 time after 1970"))?,
        None => generated_start(a.events, |start_ms| {
            synth::Generator::new(synth::GenOptions {
                seed: a.seed,
                start_ms,
                arrivals_per_day: a.arrivals_per_day,
            })
        }),
    };
    let g = synth::Generator::new(synth::GenOptions {
        seed: a.seed,
        start_ms,
        arrivals_per_day: a.arrivals_per_day,
    });
    let mut out: Box<dyn Write> = match &a.out {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    for line in g.take(a.events as usize) {
        out.write_all(line.as_bytes())?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

/// Where `gen` (without `--start`) and `publish --generate n` start their history: 30 days ago,
/// moved back by whole days if its `n` events would run past now (the engine refuses events
/// stamped more than `ingest.max_future_skew` after they arrive). Costs one extra pass of the
/// generator.
fn generated_start(n: u64, generator: impl Fn(i64) -> synth::Generator) -> i64 {
    use passpulse_engine::time::DAY_MS;
    let now = now_millis();
    let start = now - 30 * DAY_MS;
    let last = generator(start)
        .take(n as usize)
        .last()
        .and_then(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
        .and_then(|v| v["ts"].as_str().and_then(parse_rfc3339_millis));
    match last {
        Some(t) if t > now => start - (t - now + DAY_MS - 1) / DAY_MS * DAY_MS,
        _ => start,
    }
}

async fn publish(a: PublishArgs) -> Result<()> {
    let client = passpulse_ingest::connect(&a.nats_url).await?;
    let js = async_nats::jetstream::new(client.clone());
    let (lines, total): (Box<dyn Iterator<Item = String>>, Option<u64>) =
        match (&a.file, a.generate) {
            (_, Some(n)) => {
                let opts = |start_ms| synth::GenOptions {
                    seed: a.seed,
                    start_ms,
                    arrivals_per_day: 2_000.0,
                };
                let g = synth::Generator::new(opts(generated_start(n, |s| {
                    synth::Generator::new(opts(s))
                })));
                (Box::new(g.take(n as usize)), Some(n))
            }
            (Some(p), None) => {
                let reader: Box<dyn BufRead> = if p.as_os_str() == "-" {
                    Box::new(std::io::stdin().lock())
                } else {
                    Box::new(std::io::BufReader::new(
                        std::fs::File::open(p)
                            .with_context(|| format!("cannot open {}", p.display()))?,
                    ))
                };
                (Box::new(reader.lines().map_while(Result::ok)), None)
            }
            (None, None) => anyhow::bail!("give --file FILE (or - for stdin) or --generate N"),
        };
    let s = publish::publish_lines(&js, &a.prefix, lines, total, a.batch, true).await?;
    println!(
        "published {} events in {} messages in {:.2} s: {:.0} events/s ({} duplicate messages)",
        s.events,
        s.messages,
        s.elapsed.as_secs_f64(),
        s.rate(),
        s.duplicates
    );
    client.flush().await?;
    Ok(())
}
