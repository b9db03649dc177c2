//! Wiring: bind the listeners, build the shared state, and run the signal,
//! reload and housekeeping tasks around them.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::state::{Shared, Snapshot};
use crate::{admin, reload, server};

pub mod summary;

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

    /// Resolves only if a listener task ends before [`Handle::shutdown`]:
    /// what went wrong (a panic's message is printed by the panic hook).
    pub async fn failed(&mut self) -> String {
        match self.tasks.join_next().await {
            Some(Err(e)) if e.is_panic() => "a listener task panicked".into(),
            Some(_) => "a listener task ended".into(),
            None => std::future::pending().await,
        }
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
    crate::tls::install_process_default();
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
    // The admin listener outlives the drain so `/readyz` can say "not ready" meanwhile.
    let (drained, admin_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let proxy = server::serve(listener, shared.clone(), stopped(rx.clone()));
    tasks.spawn(async move {
        proxy.await;
        let _ = drained.send(true);
    });
    if let Some(l) = admin_listener {
        tasks.spawn(admin::serve(l, shared.clone(), stopped(admin_rx)));
    }
    tasks.spawn(prune_throttle(shared.clone(), stopped(rx.clone())));
    tasks.spawn(health_checks(shared.clone(), stopped(rx.clone())));
    tasks.spawn(crate::jwt::fetchers(shared.clone(), stopped(rx)));
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

/// Run the health checks of the current snapshot's upstreams, restarted when
/// a reload swaps the snapshot (health state lives on in the servers kept).
async fn health_checks(shared: Arc<Shared>, stop: impl std::future::Future<Output = ()>) {
    per_snapshot(shared, stop, |snap, checks| {
        for upstream in snap.upstreams.iter() {
            // A check of the old snapshot may have run since this one was built.
            upstream.forget_checks();
            if upstream.policy.check.is_some() {
                checks.spawn(crate::upstream::check::run(upstream.clone()));
            }
        }
    })
    .await
}

/// Keep the tasks `spawn` starts for the current snapshot, replaced when a
/// reload swaps the snapshot; state the tasks keep lives in the snapshot's
/// parts that a reload carries over, so replacing them loses nothing.
pub async fn per_snapshot(
    shared: Arc<Shared>,
    stop: impl std::future::Future<Output = ()>,
    mut spawn: impl FnMut(&Snapshot, &mut JoinSet<()>),
) {
    tokio::pin!(stop);
    // A weak reference keeps the address from being reused by a later snapshot.
    let mut seen = std::sync::Weak::new();
    let mut tasks = JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tick.tick() => {}
        }
        let snap = shared.snapshot.load_full();
        if std::ptr::eq(seen.as_ptr(), Arc::as_ptr(&snap)) {
            continue;
        }
        seen = Arc::downgrade(&snap);
        tasks.shutdown().await;
        spawn(&snap, &mut tasks);
    }
}

/// Run until SIGTERM or SIGINT: print the summary, reload on SIGHUP and on
/// file changes, drain on the first stop signal, exit at once on the second.
pub async fn run(config: Config, path: Option<PathBuf>) -> anyhow::Result<()> {
    let summary = summary::Summary::of(&config);
    let watched = reload::watched_files(path.as_deref(), &config);
    let warnings: Vec<String> = config.warnings.iter().map(ToString::to_string).collect();
    let mut signals = Signals::new()?;
    let mut handle = start(config).await?;
    // Watch before announcing the listeners, so no edit made after start-up is missed.
    // The config file and the certificate files, in every mode (env-only too).
    let _watcher = match watched.is_empty() {
        true => None,
        false => Some(
            reload::watch(handle.shared.clone(), path.clone(), &watched)
                .context("cannot watch the configuration and certificate files")?,
        ),
    };
    let text = match crate::telemetry::json() {
        true => summary.json(handle.addr, handle.admin),
        false => summary.text(handle.addr, handle.admin),
    };
    // Not println!: it panics when stdout is a closed pipe (`keygate serve | head -1`),
    // and a proxy must keep serving whoever stopped reading its summary.
    let _ = writeln!(std::io::stdout(), "{text}");
    for w in &warnings {
        tracing::warn!(target: "keygate::audit", warning = %w, "configuration warning");
    }
    let shared = handle.shared.clone();
    let signal = tokio::select! {
        signal = signals.until_stop(&shared, path.as_deref()) => signal,
        // A listener that ends (a panic) before a stop signal would leave a live process serving nothing.
        failure = handle.failed() => anyhow::bail!("{failure}; exiting"),
    };
    handle.shutdown();
    let grace = handle.shared.snapshot.load().config.listen.shutdown_grace;
    tracing::info!(target: "keygate::audit", signal, grace = ?grace, "draining");
    tokio::select! {
        _ = handle.wait() => tracing::info!(target: "keygate::audit", "drained; exiting"),
        signal = signals.stop() => tracing::warn!(target: "keygate::audit", signal, "second stop signal: exiting now"),
    }
    Ok(())
}

/// The signals `run` listens to, registered once so none is missed between
/// the first stop signal and the second.
struct Signals {
    hup: Signal,
    term: Signal,
    int: Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            hup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Reload on each SIGHUP; return the name of the first stop signal.
    async fn until_stop(&mut self, shared: &Arc<Shared>, path: Option<&Path>) -> &'static str {
        loop {
            tokio::select! {
                _ = self.hup.recv() => {
                    tracing::info!(target: "keygate::audit", trigger = "SIGHUP", "reloading the configuration");
                    reload::reload_off_runtime(shared.clone(), path.map(Path::to_path_buf)).await;
                }
                signal = stop(&mut self.term, &mut self.int) => return signal,
            }
        }
    }

    async fn stop(&mut self) -> &'static str {
        stop(&mut self.term, &mut self.int).await
    }
}

async fn stop(term: &mut Signal, int: &mut Signal) -> &'static str {
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
