//! The one `Config` of `passpulse serve`: documented defaults, overlaid by a TOML file
//! (`--config`), then `PASSPULSE_*` environment variables, then flags (highest precedence).
//! clap reads each flag and its environment variable together; the TOML file sits below both.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use serde::Deserialize;

/// Settings of `passpulse serve`. Every field has a default; see README "Configuration".
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// NATS server URL; unset = start and supervise a nats-server child under `data_dir`.
    pub nats_url: Option<String>,
    /// Where passpulse keeps its files: the managed nats-server's store (`nats/`), the Parquet
    /// files, de-duplication segments and checkpoints.
    pub data_dir: PathBuf,
    /// HTTP listen address.
    pub http: SocketAddr,
    /// Bearer token required on `/api/*` when set.
    pub auth_token: Option<String>,
    /// Publish synthetic traffic (the demo).
    pub demo: bool,
    /// Demo events per second.
    pub demo_rate: u32,
    pub query: QuerySection,
    pub ingest: IngestSection,
    pub storage: StorageSection,
    pub server: ServerSection,
    pub issuer: crate::issuer_setup::IssuerSection,
    pub automation: crate::automation_setup::AutomationSection,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSection {
    /// Persist events to Parquet with checkpoints (false: memory only, replay at start).
    pub persist: bool,
    /// Flush when this many events are held in memory.
    pub flush_rows: usize,
    /// Flush events held longer than this.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Rows per Parquet row group.
    pub row_group_rows: usize,
    /// ZSTD level of Parquet files (1–22).
    pub zstd_level: i32,
    /// Compact a month's partition once it has this many small files of one size class.
    pub compact_min_files: usize,
    /// Target size of compacted files, MiB.
    pub compact_target_mb: u64,
    /// Drop the events of UTC days that ended longer than this before the watermark, never later
    /// than now (unset: keep everything).
    #[serde(with = "humantime_serde")]
    pub retention: Option<Duration>,
    /// How long (in arrival time) an event id is remembered to refuse duplicates.
    #[serde(with = "humantime_serde")]
    pub dedup_window: Duration,
}

impl Default for StorageSection {
    fn default() -> Self {
        let p = passpulse_engine::persist::PersistConfig::new("");
        StorageSection {
            persist: true,
            flush_rows: p.flush_rows,
            flush_interval: p.flush_interval,
            row_group_rows: p.row_group_rows,
            zstd_level: p.zstd_level,
            compact_min_files: p.compact_min_files,
            compact_target_mb: p.compact_target_bytes >> 20,
            retention: None,
            dedup_window: passpulse_engine::EngineConfig::default().dedup_window,
        }
    }
}

impl Config {
    /// The engine settings this configuration describes.
    pub fn engine(&self) -> passpulse_engine::EngineConfig {
        let s = &self.storage;
        let persist = s.persist.then(|| {
            let mut p = passpulse_engine::persist::PersistConfig::new(&self.data_dir);
            p.flush_rows = s.flush_rows.max(1);
            p.flush_interval = s.flush_interval;
            p.row_group_rows = s.row_group_rows.max(1);
            p.zstd_level = s.zstd_level;
            p.compact_min_files = s.compact_min_files;
            p.compact_target_bytes = s.compact_target_mb << 20;
            p.retention = s.retention;
            // files replaced under a running query stay readable for longer than it can run
            p.delete_grace = p.delete_grace.max(self.query.timeout * 2);
            p
        });
        passpulse_engine::EngineConfig {
            publish_interval: self.ingest.publish_interval,
            dedup_window: s.dedup_window,
            persist,
            max_future_skew: Some(self.ingest.max_future_skew),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuerySection {
    /// Wall-clock limit of one query (planning and execution).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Memory DataFusion operators may reserve, in MiB.
    pub memory_limit_mb: usize,
    /// Threads of the query runtime.
    pub threads: usize,
    /// Largest response body, in MiB (every format; over it the query is stopped with 422).
    pub max_result_mb: usize,
    /// Resident memory of the whole process, in MiB, above which running queries are stopped
    /// with 422 (0: three quarters of the machine's or the container's memory).
    pub max_process_mb: usize,
    /// Most bytes, in MiB, that one call of `repeat`, `lpad`, `rpad`, `array_repeat`,
    /// `array_resize`, `range`, `generate_series` or `replace` may build for one batch.
    pub max_value_mb: usize,
    /// Longest SQL statement, bytes.
    pub max_sql_bytes: usize,
    /// Deepest nesting of parentheses, subqueries and prefix operators.
    pub max_nesting: usize,
    /// Deepest expression (a chain `a OR b OR …` of n terms is n deep).
    pub max_expr_depth: usize,
    /// Most common table expressions in one statement.
    pub max_ctes: usize,
    /// Most tables, subqueries and table functions joined in one statement.
    pub max_tables: usize,
    /// Most UNION/INTERSECT/EXCEPT operations in one statement.
    pub max_set_operations: usize,
    /// Cost of one postal letter (the `postal_savings` insight), in your currency.
    pub letter_cost: f64,
    /// A wallet device with no event for this long leaves the estimated active base.
    #[serde(with = "humantime_serde")]
    pub silent_after: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestSection {
    /// Messages over this size are dead-lettered unparsed.
    pub max_message_bytes: usize,
    /// Longest time an ingested event stays invisible to SQL.
    #[serde(with = "humantime_serde")]
    pub publish_interval: Duration,
    /// Largest `POST /api/v1/events` body, in MiB.
    pub max_body_mb: usize,
    /// Events whose `ts` is further than this after the broker received them are dead-lettered
    /// (`invalid_value`): one mis-stamped event cannot move the watermark into the future.
    #[serde(with = "humantime_serde")]
    pub max_future_skew: Duration,
    /// Broker de-duplication window for `Nats-Msg-Id`.
    #[serde(with = "humantime_serde")]
    pub duplicate_window: Duration,
    /// Line errors listed in one `POST /api/v1/events` answer; the rest are only counted.
    pub max_line_errors: usize,
}

/// Limits of the HTTP server's connections (see README "Safety").
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSection {
    /// Connections served at once; more wait in the kernel's accept queue. Keep it well below
    /// the process's file-descriptor limit (`ulimit -n`).
    pub max_connections: usize,
    /// A request's headers must arrive within this, counted from the connection's opening or
    /// the end of its previous response: it is also how long an idle connection is kept.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// A request's whole body must arrive within this, counted from the end of its headers.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            max_connections: 256,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            nats_url: None,
            data_dir: PathBuf::from("passpulse-data"),
            http: "127.0.0.1:8080".parse().expect("valid address"),
            auth_token: None,
            demo: false,
            demo_rate: 200,
            query: QuerySection::default(),
            ingest: IngestSection::default(),
            storage: StorageSection::default(),
            server: ServerSection::default(),
            issuer: Default::default(),
            automation: Default::default(),
        }
    }
}

impl Default for QuerySection {
    fn default() -> Self {
        let limits = passpulse_query::SqlLimits::default();
        QuerySection {
            timeout: Duration::from_secs(30),
            memory_limit_mb: 1024,
            threads: 2,
            max_result_mb: 1024,
            max_process_mb: 0,
            max_value_mb: 64,
            max_sql_bytes: limits.max_sql_bytes,
            max_nesting: limits.max_nesting,
            max_expr_depth: limits.max_expr_depth,
            max_ctes: limits.max_ctes,
            max_tables: limits.max_tables,
            max_set_operations: limits.max_set_operations,
            letter_cost: 1.0,
            silent_after: Duration::from_secs(90 * 86_400),
        }
    }
}

impl Default for IngestSection {
    fn default() -> Self {
        IngestSection {
            max_message_bytes: 1 << 20,
            publish_interval: Duration::from_millis(100),
            max_body_mb: 16,
            max_future_skew: passpulse_engine::DEFAULT_MAX_FUTURE_SKEW,
            duplicate_window: Duration::from_secs(120),
            max_line_errors: 100,
        }
    }
}

/// Flags of `passpulse serve`; each also reads its `PASSPULSE_*` variable.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML configuration file (lowest precedence after the defaults).
    #[arg(long, env = "PASSPULSE_CONFIG")]
    pub config: Option<PathBuf>,
    /// NATS URL; without it passpulse runs its own nats-server.
    #[arg(long, env = "PASSPULSE_NATS_URL")]
    pub nats_url: Option<String>,
    /// Data directory.
    #[arg(long, env = "PASSPULSE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// HTTP listen address, e.g. 127.0.0.1:8080.
    #[arg(long, env = "PASSPULSE_HTTP")]
    pub http: Option<SocketAddr>,
    /// Require `Authorization: Bearer TOKEN` on /api/*.
    #[arg(long, env = "PASSPULSE_AUTH_TOKEN")]
    pub auth_token: Option<String>,
    /// Publish synthetic wallet-pass traffic (demo mode).
    #[arg(long, env = "PASSPULSE_DEMO")]
    pub demo: bool,
    /// Demo events per second.
    #[arg(long, env = "PASSPULSE_DEMO_RATE")]
    pub demo_rate: Option<u32>,
    /// Query time limit, e.g. 30s or 500ms.
    #[arg(long, env = "PASSPULSE_QUERY_TIMEOUT", value_parser = humantime::parse_duration)]
    pub query_timeout: Option<Duration>,
    /// Query memory limit in MiB.
    #[arg(long, env = "PASSPULSE_QUERY_MEMORY_MB")]
    pub query_memory_mb: Option<usize>,
    /// Process memory ceiling in MiB above which running queries are stopped (0: automatic).
    #[arg(long, env = "PASSPULSE_QUERY_MAX_PROCESS_MB")]
    pub query_max_process_mb: Option<usize>,
    /// Largest accepted NATS message, bytes.
    #[arg(long, env = "PASSPULSE_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<usize>,
    /// Keep events in memory only (no Parquet, no checkpoints; a restart replays the stream).
    #[arg(long, env = "PASSPULSE_NO_PERSIST")]
    pub no_persist: bool,
    /// Flush to Parquet when this many events are held in memory.
    #[arg(long, env = "PASSPULSE_FLUSH_ROWS")]
    pub flush_rows: Option<usize>,
    /// Flush events held longer than this, e.g. 60s.
    #[arg(long, env = "PASSPULSE_FLUSH_INTERVAL", value_parser = humantime::parse_duration)]
    pub flush_interval: Option<Duration>,
    /// Drop the events of days that ended longer than this before the watermark, e.g. 400d.
    #[arg(long, env = "PASSPULSE_RETENTION", value_parser = humantime::parse_duration)]
    pub retention: Option<Duration>,
    /// Remember event ids this long (arrival time) to refuse duplicates, e.g. 24h.
    #[arg(long, env = "PASSPULSE_DEDUP_WINDOW", value_parser = humantime::parse_duration)]
    pub dedup_window: Option<Duration>,
    /// Dead-letter events stamped further than this after the broker received them, e.g. 1h.
    #[arg(long, env = "PASSPULSE_MAX_FUTURE_SKEW", value_parser = humantime::parse_duration)]
    pub max_future_skew: Option<Duration>,
}

impl Config {
    /// Defaults ← TOML file ← env/flags.
    pub fn load(args: &ServeArgs) -> Result<Config> {
        let mut cfg = match &args.config {
            Some(p) => Self::from_file(p)?,
            None => Config::default(),
        };
        macro_rules! set {
            ($field:expr, $arg:expr) => {
                if let Some(v) = $arg.clone() {
                    $field = v;
                }
            };
        }
        if args.nats_url.is_some() {
            cfg.nats_url = args.nats_url.clone();
        }
        if args.auth_token.is_some() {
            cfg.auth_token = args.auth_token.clone();
        }
        set!(cfg.data_dir, args.data_dir);
        set!(cfg.http, args.http);
        cfg.demo |= args.demo;
        set!(cfg.demo_rate, args.demo_rate);
        set!(cfg.query.timeout, args.query_timeout);
        set!(cfg.query.memory_limit_mb, args.query_memory_mb);
        set!(cfg.query.max_process_mb, args.query_max_process_mb);
        set!(cfg.ingest.max_message_bytes, args.max_message_bytes);
        cfg.storage.persist &= !args.no_persist;
        set!(cfg.storage.flush_rows, args.flush_rows);
        set!(cfg.storage.flush_interval, args.flush_interval);
        set!(cfg.storage.dedup_window, args.dedup_window);
        set!(cfg.ingest.max_future_skew, args.max_future_skew);
        if args.retention.is_some() {
            cfg.storage.retention = args.retention;
        }
        if cfg.server.max_connections == 0 {
            anyhow::bail!("server.max_connections must be at least 1");
        }
        if cfg.server.header_timeout.is_zero() || cfg.server.body_timeout.is_zero() {
            anyhow::bail!("server.header_timeout and server.body_timeout must be longer than 0s");
        }
        if cfg.auth_token.as_deref().is_some_and(|t| t.len() < 16) {
            anyhow::bail!(
                "auth token must be at least 16 characters; generate one with `openssl rand -hex 24`"
            );
        }
        Ok(cfg)
    }

    fn from_file(p: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(p)
            .with_context(|| format!("cannot read config file {}", p.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config file {}", p.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ServeArgs {
        ServeArgs {
            config: None,
            nats_url: None,
            data_dir: None,
            http: None,
            auth_token: None,
            demo: false,
            demo_rate: None,
            query_timeout: None,
            query_memory_mb: None,
            query_max_process_mb: None,
            max_message_bytes: None,
            no_persist: false,
            flush_rows: None,
            flush_interval: None,
            retention: None,
            dedup_window: None,
            max_future_skew: None,
        }
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.toml");
        std::fs::write(
            &f,
            "http = \"127.0.0.1:9999\"\ndemo_rate = 5\n[query]\ntimeout = \"2s\"\n",
        )
        .unwrap();
        let mut a = args();
        a.config = Some(f);
        a.demo_rate = Some(7);
        let c = Config::load(&a).unwrap();
        assert_eq!(c.http.port(), 9999);
        assert_eq!(c.demo_rate, 7);
        assert_eq!(c.query.timeout, Duration::from_secs(2));
        assert_eq!(c.query.memory_limit_mb, 1024);
    }

    #[test]
    fn unknown_keys_and_short_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.toml");
        std::fs::write(&f, "htp = \"x\"\n").unwrap();
        let mut a = args();
        a.config = Some(f);
        let e = format!("{:#}", Config::load(&a).unwrap_err());
        assert!(e.contains("unknown field `htp`"), "{e}");
        let mut a = args();
        a.auth_token = Some("short".into());
        assert!(Config::load(&a).is_err());
    }
}
