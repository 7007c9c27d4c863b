//! `passpulse query "SQL"`: runs SQL against a server's HTTP API and prints the result as a
//! table (fetched as Arrow IPC), CSV, JSON or JSON lines.

use std::io::Write;

use anyhow::{Context, Result, bail};
use arrow::ipc::reader::StreamReader;
use futures::StreamExt;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Output {
    Table,
    Csv,
    Json,
    Jsonl,
}

pub async fn run(url: &str, sql: &str, output: Output, token: Option<&str>) -> Result<()> {
    let format = match output {
        Output::Table => "arrow",
        Output::Csv => "csv",
        Output::Json => "json",
        Output::Jsonl => "jsonl",
    };
    let endpoint = format!("{}/api/v1/query", url.trim_end_matches('/'));
    let mut req = reqwest::Client::new()
        .post(&endpoint)
        .json(&serde_json::json!({ "sql": sql, "format": format }));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("cannot reach {endpoint}; is `passpulse serve` running?"))?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        let msg = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or(body);
        bail!("query failed ({status}): {msg}");
    }
    match output {
        Output::Table => {
            let bytes = resp.bytes().await?;
            let reader = StreamReader::try_new(std::io::Cursor::new(bytes), None)?;
            let batches = reader.collect::<Result<Vec<_>, _>>()?;
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            println!("{}", arrow::util::pretty::pretty_format_batches(&batches)?);
            eprintln!("{rows} row(s)");
        }
        _ => {
            let mut out = std::io::stdout().lock();
            let mut body = resp.bytes_stream();
            while let Some(chunk) = body.next().await {
                out.write_all(&chunk.context("response interrupted")?)?;
            }
            out.flush()?;
        }
    }
    Ok(())
}
