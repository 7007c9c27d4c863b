//! `passpulse serve`: wires the bus, the engine, the query service and the HTTP API together,
//! and shuts them down in order on Ctrl-C / SIGTERM.

use std::sync::Arc;

use anyhow::{Context, Result};
use async_nats::jetstream;
use passpulse_ingest::intake::IntakeState;
use passpulse_ingest::{
    BusConfig, ConsumerOptions, ManagedNats, Pipeline, connect, ensure_streams,
};
use passpulse_issuer::Issuer;
use passpulse_issuer::http::IssuerSlot;
use passpulse_issuer::lifecycle::Lifecycle;
use passpulse_issuer::registry::Registry;
use passpulse_query::insights::InsightSettings;
use passpulse_query::{QueryConfig, QueryMetrics, QueryService, QueryState};
use tokio::sync::watch;
use tracing::info;

use crate::config::Config;
use crate::http::{AppState, app};

pub async fn serve(mut cfg: Config) -> Result<()> {
    // one absolute path for the engine, the nats-server child, the certificates and the logs
    cfg.data_dir = passpulse_engine::persist::resolve_dir(&cfg.data_dir)
        .with_context(|| format!("cannot create data dir {}", cfg.data_dir.display()))?;
    let managed = match &cfg.nats_url {
        Some(_) => None,
        None => Some(ManagedNats::start(&cfg.data_dir.join("nats")).await?),
    };
    let url = match (&cfg.nats_url, &managed) {
        (Some(u), _) => u.clone(),
        (None, Some(m)) => m.url().to_string(),
        (None, None) => unreachable!("managed server started above"),
    };
    let client = connect(&url).await?;
    let js = jetstream::new(client.clone());
    let bus = BusConfig {
        max_message_bytes: cfg.ingest.max_message_bytes,
        duplicate_window: cfg.ingest.duplicate_window,
        ..BusConfig::default()
    };
    ensure_streams(&js, &bus).await?;

    let pipeline = Pipeline::start(&js, &bus, ConsumerOptions::default(), cfg.engine())
        .await
        .with_context(|| {
            format!(
                "cannot open the stored events under {}",
                cfg.data_dir.display()
            )
        })?;
    info!(
        from_seq = pipeline.resume.from_seq,
        checkpoint = pipeline.resume.generation,
        "engine ready"
    );
    let engine = pipeline.engine.clone();
    let ingest_metrics = pipeline.metrics.clone();
    let (stop_tx, stop_rx) = watch::channel(false);

    if !(cfg.query.letter_cost.is_finite() && cfg.query.letter_cost >= 0.0) {
        anyhow::bail!(
            "query.letter_cost must be a number of at least 0, got {}",
            cfg.query.letter_cost
        );
    }
    let service = QueryService::new(
        engine.clone(),
        QueryConfig {
            memory_limit: cfg.query.memory_limit_mb << 20,
            timeout: cfg.query.timeout,
            threads: cfg.query.threads,
            max_result_bytes: cfg.query.max_result_mb << 20,
            limits: passpulse_query::SqlLimits {
                max_sql_bytes: cfg.query.max_sql_bytes,
                max_nesting: cfg.query.max_nesting,
                max_expr_depth: cfg.query.max_expr_depth,
                max_ctes: cfg.query.max_ctes,
                max_tables: cfg.query.max_tables,
                max_set_operations: cfg.query.max_set_operations,
            },
            max_value_bytes: cfg.query.max_value_mb << 20,
            max_process_bytes: match cfg.query.max_process_mb {
                0 => passpulse_query::default_process_ceiling(),
                mb => mb << 20,
            },
            insights: InsightSettings {
                letter_cost: cfg.query.letter_cost,
                silent_after_ms: i64::try_from(cfg.query.silent_after.as_millis())
                    .unwrap_or(i64::MAX),
            },
        },
    )?;
    let query_metrics = Arc::new(QueryMetrics::default());
    let listener = tokio::net::TcpListener::bind(cfg.http)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.http))?;
    let addr = listener.local_addr()?;
    let default_templates = cfg.issuer.templates == std::path::Path::new("data/templates");
    let mut automation = None;
    let issuer = if cfg.issuer.enabled && default_templates && !cfg.issuer.templates.is_dir() {
        tracing::warn!(
            "issuer off: no data/templates here (run from the repository, or set [issuer] templates)"
        );
        if cfg.automation.flows.is_some() {
            anyhow::bail!("[automation] needs the issuer: set [issuer] templates");
        }
        None
    } else if cfg.issuer.enabled {
        let (icfg, push) = crate::issuer_setup::build(&cfg.issuer, &cfg.data_dir, addr)?;
        let prepared = crate::automation_setup::prepare(&cfg.automation, &icfg.templates)?;
        automation = prepared.as_ref().map(|p| p.slot.clone());
        let slot = IssuerSlot::default();
        let (js, bus, fill) = (js.clone(), bus.clone(), slot.clone());
        let demo = cfg.demo;
        let skew = i64::try_from(cfg.ingest.max_future_skew.as_millis()).ok();
        // the registry opens in the background (retrying while the broker is busy or away):
        // ingest and queries do not wait for it, the issuer's routes answer 503 until it is open
        tokio::spawn(async move {
            let mut backoff = std::time::Duration::from_millis(200);
            loop {
                match Registry::open(&js).await {
                    Ok(registry) => {
                        let issuer = Issuer::new(
                            icfg,
                            registry,
                            Lifecycle::new(js.clone(), bus.clone()),
                            push,
                        );
                        fill.set(issuer.clone());
                        info!("issuer ready");
                        if let Some(p) = prepared {
                            crate::automation_setup::start(p, issuer.clone(), js, bus, skew).await;
                        }
                        if demo {
                            crate::demo::sample_passes(issuer).await;
                        }
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?backoff, "cannot open the pass registry");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(std::time::Duration::from_secs(10));
                    }
                }
            }
        });
        Some(slot)
    } else {
        if cfg.automation.flows.is_some() {
            anyhow::bail!("[automation] needs the issuer: it is disabled");
        }
        None
    };
    let router = app(
        AppState {
            engine: engine.clone(),
            ingest: ingest_metrics.clone(),
            query: query_metrics.clone(),
            nats: client.clone(),
        },
        QueryState {
            service: service.clone(),
            engine: engine.clone(),
            metrics: query_metrics,
        },
        IntakeState {
            // its own context: intake's in-flight publishes never take the acks permits of the
            // issuer's lifecycle events, the automation or the demo
            js: jetstream::new(client.clone()),
            bus: bus.clone(),
            metrics: ingest_metrics,
            max_errors: cfg.ingest.max_line_errors,
            max_future_skew: i64::try_from(cfg.ingest.max_future_skew.as_millis()).ok(),
        },
        issuer.clone(),
        automation,
        cfg.auth_token.clone(),
        cfg.ingest.max_body_mb << 20,
    );
    info!(%addr, nats = %url, "passpulse serving");
    println!("passpulse listening on http://{addr} (NATS {url})");

    let demo = cfg.demo.then(|| {
        tokio::spawn(crate::demo::run(
            js.clone(),
            bus.subject_prefix.clone(),
            cfg.demo_rate,
            stop_rx.clone(),
        ))
    });

    crate::connections::serve(
        listener,
        router,
        crate::connections::Limits {
            max_connections: cfg.server.max_connections,
            header_timeout: cfg.server.header_timeout,
            body_timeout: cfg.server.body_timeout,
        },
        shutdown_signal(),
    )
    .await;

    // Each step is bounded, whatever the broker's state: with the broker gone, publishes are
    // not confirmed (and flushing the client would wait for a reconnection forever).
    info!("shutting down");
    let _ = stop_tx.send(true);
    if let Some(mut d) = demo
        && tokio::time::timeout(SHUTDOWN_STEP, &mut d).await.is_err()
    {
        d.abort();
    }
    pipeline.stop().await;
    if tokio::time::timeout(SHUTDOWN_STEP, client.flush())
        .await
        .is_err()
    {
        tracing::warn!("the broker did not confirm the last publishes at shutdown");
    }
    drop(service);
    if let Some(m) = managed {
        m.stop().await;
    }
    info!("stopped");
    Ok(())
}

/// The longest one shutdown step waits for the broker.
const SHUTDOWN_STEP: std::time::Duration = std::time::Duration::from_secs(5);

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
