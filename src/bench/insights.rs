//! `passpulse bench insights`: the latency of every insight over a large history, beside DuckDB
//! running the same query over the same Parquet files, and of the live figures.
//!
//! Generated events are ingested by a persistent engine. While it still runs, part of the
//! history is in memory (the rows of the flush under way) and the rest in Parquet: each insight
//! is timed there ("hot + Parquet"). Then the engine stops cleanly (everything flushed), is
//! reopened from its data directory (everything in Parquet) and timed again; DuckDB (Python's
//! `duckdb` module: `pip install duckdb`) runs each insight's SQL, translated to its dialect,
//! over `events/*/*.parquet` of that directory with as many threads as the query service. Each
//! figure is the median of `--repeats` runs after one warm-up run; row counts are compared.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use datafusion::common::ScalarValue;
use futures::StreamExt;
use passpulse_engine::persist::PersistConfig;
use passpulse_engine::{Engine, EngineConfig, open_engine};
use passpulse_ingest::ConsumerOptions;
use passpulse_query::insights::{
    INSIGHTS, Insight, InsightSettings, PASS_ORIGIN_VIEW, Scope, find,
};
use passpulse_query::{QueryConfig, QueryService};

use super::ingest::{drain, stop_engine};
use super::{BenchBus, HistoryArgs, median};

#[derive(Debug, clap::Args)]
pub struct InsightsBenchArgs {
    #[command(flatten)]
    pub history: HistoryArgs,
    /// Timed runs per insight and engine (after one warm-up run).
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Time only these insights (comma-separated names).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Keep the history in this data directory. If it already holds one, that history is
    /// reused: nothing is ingested and only the Parquet and DuckDB columns are measured.
    #[arg(long)]
    pub data_dir: Option<std::path::PathBuf>,
    /// Also time the query in each of these files (named by the file's stem), beside DuckDB.
    #[arg(long)]
    pub sql: Vec<std::path::PathBuf>,
    /// Print each measured query's `EXPLAIN ANALYZE` over the Parquet history.
    #[arg(long)]
    pub explain: bool,
    /// Customers signing up per simulated day: fewer spread the same events over more days
    /// (with 1,000,000 events, 50 spans about 1,100 days and 5,000 about 30).
    #[arg(long, default_value_t = super::HISTORY.1)]
    pub arrivals_per_day: f64,
    /// Start of the simulated history (RFC 3339; default 2026-09-21).
    #[arg(long)]
    pub start: Option<String>,
    /// Flush to Parquet every this many events while ingesting (default: the server's).
    #[arg(long)]
    pub flush_rows: Option<usize>,
}

/// A query the bench measures: its name, its SQL for us and its SQL for DuckDB.
struct Measured {
    name: String,
    sql: String,
    params: Vec<(String, ScalarValue)>,
    duckdb: String,
}

impl InsightsBenchArgs {
    /// The queries this run measures: the insights chosen by `--only` (all if none), then the
    /// files of `--sql`.
    fn selected(&self) -> Result<Vec<Measured>> {
        let settings = InsightSettings::default();
        let insights: Vec<&Insight> = if self.only.is_empty() {
            INSIGHTS.iter().collect()
        } else {
            self.only
                .iter()
                .map(|n| {
                    find(n).with_context(|| {
                        let names: Vec<_> = INSIGHTS.iter().map(|i| i.name).collect();
                        format!("no insight {n:?}; the insights are {}", names.join(", "))
                    })
                })
                .collect::<Result<_>>()?
        };
        let mut out: Vec<Measured> = insights
            .into_iter()
            .map(|i| {
                let (sql, params) = i.scoped_sql(&Scope::default(), &settings);
                Measured {
                    name: i.name.to_string(),
                    sql,
                    params,
                    duckdb: duckdb_sql(&i.view_sql(&settings)),
                }
            })
            .collect();
        for path in &self.sql {
            let sql = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let name = path
                .file_stem()
                .map_or("query".into(), |s| s.to_string_lossy().into_owned());
            out.push(Measured {
                name,
                duckdb: duckdb_sql(&sql),
                sql,
                params: Vec::new(),
            });
        }
        Ok(out)
    }
}

/// Median seconds and row count of every insight on `engine`.
async fn time_insights(
    engine: Engine,
    queries: &[Measured],
    repeats: usize,
    explain: bool,
) -> Result<BTreeMap<String, (f64, usize)>> {
    let service = QueryService::new(engine, QueryConfig::default())?;
    let mut out = BTreeMap::new();
    for q in queries {
        let (sql, params) = (&q.sql, &q.params);
        let mut times = Vec::new();
        let mut rows = 0;
        for run in 0..=repeats {
            let (svc, sql, params) = (service.clone(), sql.clone(), params.clone());
            match service
                .runtime()
                .spawn(async move { run_once(&svc, &sql, params).await })
                .await?
            {
                Ok((secs, n)) => {
                    if run > 0 {
                        times.push(secs);
                    }
                    rows = n;
                }
                Err(e) => {
                    // a refused query (memory, time) is a result too: report it and go on
                    eprintln!("{}: {e}", q.name);
                    times = vec![f64::NAN];
                    break;
                }
            }
        }
        out.insert(q.name.clone(), (median(times), rows));
        if explain {
            let svc = service.clone();
            let (sql, params) = (format!("EXPLAIN ANALYZE {sql}"), params.clone());
            let plan = service
                .runtime()
                .spawn(async move { explain_text(&svc, &sql, params).await })
                .await??;
            println!("-- {}\n{plan}", q.name);
        }
    }
    Ok(out)
}

/// The text of an `EXPLAIN ANALYZE` result.
async fn explain_text(
    svc: &Arc<QueryService>,
    sql: &str,
    params: Vec<(String, ScalarValue)>,
) -> Result<String> {
    let (_, mut stream) = svc.start_with(sql, params).await?;
    let mut text = String::new();
    while let Some(b) = stream.next().await {
        let b = b?;
        let col = datafusion::arrow::util::display::ArrayFormatter::try_new(
            b.column(b.num_columns() - 1).as_ref(),
            &Default::default(),
        )?;
        for row in 0..b.num_rows() {
            let _ = writeln!(text, "{}", col.value(row));
        }
    }
    Ok(text)
}

async fn run_once(
    svc: &Arc<QueryService>,
    sql: &str,
    params: Vec<(String, ScalarValue)>,
) -> Result<(f64, usize)> {
    let t0 = Instant::now();
    let (_, mut stream) = svc.start_with(sql, params).await?;
    let mut rows = 0;
    while let Some(b) = stream.next().await {
        rows += b?.num_rows();
    }
    Ok((t0.elapsed().as_secs_f64(), rows))
}

/// The insight SQL in DuckDB's dialect: aggregate `first_value`/`last_value` with ORDER BY are
/// `first`/`last`, and a timestamp's epoch milliseconds are `epoch_ms(ts)`.
fn duckdb_sql(sql: &str) -> String {
    let s = sql
        .replace("first_value(", "first(")
        .replace("last_value(", "last(");
    let (mut out, mut rest) = (String::with_capacity(s.len()), s.as_str());
    while let Some(at) = rest.find("CAST(") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 5..];
        let ident = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
            .unwrap_or(after.len());
        if ident > 0 && after[ident..].starts_with(" AS BIGINT)") {
            out.push_str(&format!("epoch_ms({})", &after[..ident]));
            rest = &after[ident + " AS BIGINT)".len()..];
        } else {
            out.push_str("CAST(");
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

const DUCKDB_SCRIPT: &str = r#"
import json, sys, time
import duckdb
spec = json.load(open(sys.argv[1]))
con = duckdb.connect()
con.execute("SET TimeZone = 'UTC'")
con.execute(f"SET threads = {spec['threads']}")
con.execute(f"CREATE VIEW events AS SELECT * FROM read_parquet('{spec['glob']}', hive_partitioning = false)")
con.execute(f"CREATE VIEW pass_origin AS {spec['pass_origin']}")
out = {}
for name, sql in spec['insights'].items():
    times, rows = [], 0
    try:
        for run in range(spec['repeats'] + 1):
            t0 = time.perf_counter()
            rows = len(con.execute(sql).fetchall())
            if run > 0:
                times.append(time.perf_counter() - t0)
    except duckdb.Error as e:
        print(f"{name}: DuckDB: {e}", file=sys.stderr)
        out[name] = [None, 0]
        continue
    times.sort()
    out[name] = [times[len(times) // 2], rows]
print(json.dumps(out))
"#;

/// Median seconds and row count of every insight in DuckDB over the Parquet files of `dir`.
fn duckdb_insights(
    dir: &std::path::Path,
    queries: &[Measured],
    repeats: usize,
    threads: usize,
) -> Result<BTreeMap<String, (f64, usize)>> {
    let insights: BTreeMap<&str, &str> = queries
        .iter()
        .map(|q| (q.name.as_str(), q.duckdb.as_str()))
        .collect();
    let spec = serde_json::json!({
        "glob": format!("{}/events/*/*.parquet", dir.display()),
        "threads": threads,
        "repeats": repeats,
        "pass_origin": duckdb_sql(PASS_ORIGIN_VIEW.1),
        "insights": insights,
    });
    let tmp = tempfile::tempdir()?;
    let spec_path = tmp.path().join("spec.json");
    let script_path = tmp.path().join("bench.py");
    std::fs::write(&spec_path, serde_json::to_vec(&spec)?)?;
    std::fs::write(&script_path, DUCKDB_SCRIPT)?;
    let out = Command::new("python3")
        .arg(&script_path)
        .arg(&spec_path)
        .output()
        .context("running python3")?;
    if !out.status.success() {
        bail!(
            "DuckDB run failed (is it installed? `pip install duckdb`): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // a query DuckDB refused is reported on stderr and measured as NaN
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    let v: BTreeMap<String, (Option<f64>, usize)> =
        serde_json::from_slice(&out.stdout).context("DuckDB output")?;
    Ok(v.into_iter()
        .map(|(k, (t, n))| (k, (t.unwrap_or(f64::NAN), n)))
        .collect())
}

pub async fn insights(args: InsightsBenchArgs) -> Result<()> {
    ensure!(
        args.arrivals_per_day.is_finite() && args.arrivals_per_day > 0.0,
        "--arrivals-per-day must be a positive number"
    );
    let selected = args.selected()?;
    let tmp;
    let dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let mut persist = PersistConfig::new(&dir);
    if let Some(n) = args.flush_rows {
        persist.flush_rows = n;
    }
    let reuse = std::fs::read_dir(dir.join("events")).is_ok_and(|mut d| d.next().is_some());
    let (live, mixed) = if reuse {
        eprintln!("reusing the history in {}", dir.display());
        (f64::NAN, BTreeMap::new())
    } else {
        ingest_and_time(&args, &selected, persist.clone()).await?
    };

    let cfg = EngineConfig {
        persist: Some(persist),
        ..EngineConfig::default()
    };
    let (writer, engine, _) = tokio::task::spawn_blocking(move || open_engine(cfg)).await??;
    let events = engine.events_applied();
    let files = engine.hot_snapshot().files.clone();
    let parts: std::collections::BTreeSet<&str> =
        files.files.iter().map(|f| f.partition()).collect();
    let span = |f: fn(&passpulse_engine::persist::DataFile) -> i64| files.files.iter().map(f);
    let (lo, hi) = (
        span(|f| f.min_ts).min().unwrap_or(0),
        span(|f| f.max_ts).max().unwrap_or(0),
    );
    eprintln!(
        "history: {} events over {} days ({} to {}), {} Parquet files in {} partitions",
        files.rows(),
        (hi - lo) / passpulse_engine::time::DAY_MS + 1,
        passpulse_engine::time::format_millis(lo),
        passpulse_engine::time::format_millis(hi),
        files.files.len(),
        parts.len()
    );
    ensure!(
        engine.hot_snapshot().rows() == 0 && (reuse || events == args.history.events),
        "the reopened engine should hold every event, all in Parquet"
    );
    let on_disk = time_insights(engine, &selected, args.repeats, args.explain).await?;
    tokio::task::spawn_blocking(move || writer.close()).await?;
    let threads = QueryConfig::default().threads;
    let duck = duckdb_insights(&dir, &selected, args.repeats, threads)?;

    println!("events            {events}");
    println!(
        "live figures      {:.3} ms (median of 1,000 Engine::stats calls)",
        live * 1e3
    );
    println!(
        "{:<24} {:>14} {:>14} {:>14} {:>8} {:>9}",
        "insight", "hot+parquet", "parquet", "duckdb", "rows", "vs duckdb"
    );
    for (name, (secs, rows)) in &on_disk {
        let m = mixed.get(name).map_or(f64::NAN, |(m, _)| *m);
        let (d, drows) = duck.get(name).copied().unwrap_or((f64::NAN, 0));
        let rows_note = if drows == *rows {
            rows.to_string()
        } else {
            format!("{rows}≠{drows}")
        };
        println!(
            "{:<24} {:>11.1} ms {:>11.1} ms {:>11.1} ms {:>8} {:>8.2}×",
            name,
            m * 1e3,
            secs * 1e3,
            d * 1e3,
            rows_note,
            secs / d
        );
    }
    Ok(())
}

/// Ingests the generated history into a persistent engine, then times the live figures and
/// the insights while that engine still runs (part of the history in memory).
async fn ingest_and_time(
    args: &InsightsBenchArgs,
    selected: &[Measured],
    persist: PersistConfig,
) -> Result<(f64, BTreeMap<String, (f64, usize)>)> {
    let bb = BenchBus::start(args.history.nats_url.as_deref()).await?;
    let start_ms = match &args.start {
        Some(t) => passpulse_engine::time::parse_rfc3339_millis(t)
            .with_context(|| format!("--start {t:?} is not an RFC 3339 time"))?,
        None => super::HISTORY.0,
    };
    bb.publish(
        args.history.seed,
        0,
        args.history.events,
        args.history.batch,
        (start_ms, args.arrivals_per_day),
    )
    .await?;
    let opts = ConsumerOptions::default();
    let (_, run, bus) = drain(&bb.js, &bb.bus, &opts, args.history.events, Some(persist)).await?;
    let snap = run.engine.hot_snapshot();
    eprintln!(
        "{} events: {} in memory, {} in {} Parquet files",
        snap.total_rows(),
        snap.rows(),
        snap.files.rows(),
        snap.files.files.len()
    );
    let live = {
        let engine = run.engine.clone();
        let mut t = Vec::new();
        for _ in 0..1000 {
            let t0 = Instant::now();
            std::hint::black_box(engine.stats());
            t.push(t0.elapsed().as_secs_f64());
        }
        median(t)
    };
    let mixed = time_insights(run.engine.clone(), selected, args.repeats, false).await?;
    stop_engine(&bb.js, run, &bus).await;
    bb.stop().await;
    Ok((live, mixed))
}

#[cfg(test)]
mod tests {
    use super::duckdb_sql;

    #[test]
    fn duckdb_dialect() {
        assert_eq!(
            duckdb_sql(
                "SELECT last_value(x ORDER BY ts), CAST(f.t0 AS BIGINT) + 1, CAST(x AS VARCHAR)"
            ),
            "SELECT last(x ORDER BY ts), epoch_ms(f.t0) + 1, CAST(x AS VARCHAR)"
        );
        assert_eq!(
            duckdb_sql("CAST(CAST(a AS INT) AS BIGINT) - CAST(b AS BIGINT)"),
            "CAST(CAST(a AS INT) AS BIGINT) - epoch_ms(b)"
        );
    }
}
