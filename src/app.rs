//! Wiring: bind the listeners, build the shared state, and run the signal,
//! reload and housekeeping tasks around them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::state::{Shared, Snapshot};
use crate::{admin, reload, server};

/// A running keygate: its bound addresses and a way to stop it.
#[derive(Debug)]
pub struct Handle {
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Handle {
    /// Stop accepting and start draining.
    pub fn shutdown(&self) {
        self.shared.draining.store(true, Ordering::Release);
        let _ = self.stop.send(true);
    }

    /// Wait until every listener has finished draining.
    pub async fn wait(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Bind the listeners for `config` and start serving.
pub async fn start(config: Config) -> anyhow::Result<Handle> {
    let listener = TcpListener::bind(config.listen.address)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen.address))?;
    let admin_listener = match config.admin {
        Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} (admin)"))?),
        None => None,
    };
    let snapshot = Snapshot::build(config, None)?;
    let shared = Arc::new(Shared::new(snapshot));
    let addr = listener.local_addr()?;
    let admin_addr = admin_listener.as_ref().map(TcpListener::local_addr).transpose()?;
    let (stop, rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    tasks.spawn(server::serve(listener, shared.clone(), stopped(rx.clone())));
    if let Some(l) = admin_listener {
        tasks.spawn(admin::serve(l, shared.clone(), stopped(rx.clone())));
    }
    tasks.spawn(prune_throttle(shared.clone(), stopped(rx)));
    shared.ready.store(true, Ordering::Release);
    Ok(Handle { addr, admin: admin_addr, shared, stop, tasks })
}

async fn prune_throttle(shared: Arc<Shared>, stop: impl std::future::Future<Output = ()>) {
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tick.tick() => shared.throttle.prune(),
        }
    }
}

/// Run until SIGTERM or SIGINT: print the summary, reload on SIGHUP and on
/// file changes, drain on the first stop signal, exit at once on the second.
pub async fn run(config: Config, path: Option<PathBuf>) -> anyhow::Result<()> {
    let summary = summary(&config);
    let handle = start(config).await?;
    println!("{}", summary.replace("{addr}", &handle.addr.to_string()).replace("{admin}", &handle.admin.map_or("off".into(), |a| a.to_string())));
    let _watcher = match &path {
        Some(p) => Some(reload::watch(handle.shared.clone(), p.clone()).context("cannot watch the configuration file")?),
        None => None,
    };
    signals(&handle, path).await?;
    handle.shutdown();
    tracing::info!(target: "keygate::audit", "draining");
    let second = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    tokio::select! {
        _ = handle.wait() => {}
        _ = second => tracing::warn!(target: "keygate::audit", "second stop signal: exiting now"),
        _ = terminate() => tracing::warn!(target: "keygate::audit", "second stop signal: exiting now"),
    }
    Ok(())
}

async fn terminate() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

async fn signals(handle: &Handle, path: Option<PathBuf>) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!(target: "keygate::audit", "SIGHUP: reloading");
                reload::reload(&handle.shared, path.as_deref());
            }
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
        }
    }
}

/// The one-screen startup summary; `{addr}` and `{admin}` are filled in once bound.
pub fn summary(config: &Config) -> String {
    let scheme = if config.listen.tls.is_some() { "https" } else { "http" };
    let keys: usize = config.clients.iter().map(|c| c.keys.len()).sum();
    let mut s = format!("keygate {}\n", env!("CARGO_PKG_VERSION"));
    s += &format!("  listening on {scheme}://{{addr}}\n");
    s += &format!("  tls:        {}\n", tls_line(config));
    s += "  admin:      {admin}\n";
    s += &format!("  config:     {}\n", config.source.as_ref().map_or("environment only".into(), |p| p.display().to_string()));
    s += &format!("  clients: {}  keys: {keys}  routes: {}  upstreams: {}", config.clients.len(), config.routes.len(), config.upstreams.len());
    for w in &config.warnings {
        s += &format!("\n  warning: {w}");
    }
    s
}

fn tls_line(config: &Config) -> String {
    match &config.listen.tls {
        None => "off (plain HTTP)".into(),
        Some(t) if t.client_ca.is_some() => format!("on, client certificates required ({})", t.cert.display()),
        Some(t) => format!("on ({})", t.cert.display()),
    }
}
