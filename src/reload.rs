//! Reload: build a new snapshot from the file and environment and swap it
//! in; a bad configuration keeps the old one serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use crate::config;
use crate::metrics::ResultLabels;
use crate::state::{Shared, Snapshot};

/// Load the configuration again and swap it in if valid, on the calling
/// thread (a test, or a blocking one: see [`reload_off_runtime`]). Returns
/// whether it was applied.
pub fn reload(shared: &Shared, path: Option<&Path>) -> bool {
    apply(shared, path).is_some()
}

/// [`reload`] on a blocking thread, so that reading, validating and building
/// a large configuration (100,000 keys: about 0.4 s of CPU) does not stall
/// the requests this runtime serves. Reloads still run one at a time, and
/// the replaced snapshot is freed there too (see [`release`]).
pub async fn reload_off_runtime(shared: Arc<Shared>, path: Option<PathBuf>) -> bool {
    let reloaded = tokio::task::spawn_blocking(move || apply(&shared, path.as_deref()).map(release).is_some());
    reloaded.await.unwrap_or(false)
}

/// How long [`release`] waits for requests still holding a replaced
/// snapshot: they hold it until their upstream answers (`request_timeout`).
const RELEASE_WAIT: Duration = Duration::from_secs(60);
const RELEASE_POLL: Duration = Duration::from_millis(10);

/// Free a replaced snapshot on this (blocking) thread once the requests that
/// still hold it are done, rather than in whichever request ends last: that
/// would free every key on the runtime thread. Past [`RELEASE_WAIT`], the last
/// holder frees it after all.
fn release(mut old: Arc<Snapshot>) {
    let until = std::time::Instant::now() + RELEASE_WAIT;
    while std::time::Instant::now() < until {
        match Arc::try_unwrap(old) {
            Ok(unshared) => return drop(unshared),
            Err(held) => old = held,
        }
        std::thread::sleep(RELEASE_POLL);
    }
}

/// Load, build and swap under the reload lock; the replaced snapshot if applied.
fn apply(shared: &Shared, path: Option<&Path>) -> Option<Arc<Snapshot>> {
    let _one_at_a_time = shared.reloading.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let result = config::load(path, &config::process_env()).map_err(|e| e.to_string()).and_then(|new| {
        let current = shared.snapshot.load();
        if new.listen.address != current.config.listen.address {
            tracing::warn!(target: "keygate::audit", "listen.address changed: takes effect after a restart");
        }
        if new.admin != current.config.admin {
            tracing::warn!(target: "keygate::audit", "admin.address changed: takes effect after a restart");
        }
        for w in &new.warnings {
            tracing::warn!(target: "keygate::audit", warning = %w, "configuration warning");
        }
        let counts = (new.clients.len(), new.clients.iter().map(|c| c.keys.len()).sum::<usize>(), new.routes.len());
        shared.replace(new).map(|old| (old, counts)).map_err(|e| e.to_string())
    });
    let label = match &result {
        Ok((_, (clients, keys, routes))) => {
            tracing::info!(target: "keygate::audit", result = "ok", clients, keys, routes, "configuration reloaded");
            "ok"
        }
        Err(e) => {
            tracing::error!(target: "keygate::audit", result = "error", error = %e, "reload failed; keeping the running configuration");
            "error"
        }
    };
    shared.metrics.reloads.get_or_create(&ResultLabels { result: label }).inc();
    result.ok().map(|(old, _)| old)
}

/// The files a reload reads that may change on disk: the configuration file
/// (if any) and the listener's certificate, key and client CA.
pub fn watched_files(path: Option<&Path>, config: &crate::config::Config) -> Vec<PathBuf> {
    let tls = config.listen.tls.iter().flat_map(|t| [Some(&t.cert), Some(&t.key), t.client_ca.as_ref()]);
    path.into_iter().map(Path::to_path_buf).chain(tls.flatten().cloned()).collect()
}

/// A watched folder and the names in it that matter.
type Watched = Vec<(PathBuf, Vec<std::ffi::OsString>)>;

/// The folder of each file, absolute (the watcher reports absolute paths, so
/// a relative `-c keygate.toml` would otherwise never match), with the file
/// names in it.
fn by_folder(files: &[PathBuf]) -> Watched {
    let mut out: Watched = Vec::new();
    for file in files {
        let (Some(name), folder) = (file.file_name(), file.parent()) else { continue };
        let folder = match folder {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let folder = std::path::absolute(folder).unwrap_or_else(|_| folder.to_path_buf());
        match out.iter_mut().find(|(f, _)| *f == folder) {
            Some((_, names)) => names.push(name.to_os_string()),
            None => out.push((folder, vec![name.to_os_string()])),
        }
    }
    out
}

/// Whether a change to `changed` may change a watched file: the file itself
/// in its folder, or that folder's `..data` link, which Kubernetes swaps to
/// update a mounted ConfigMap or Secret (the files are symlinks through it).
/// Exact names only: a log file next to the config (`..data.log`,
/// `keygate.toml.log`) must not trigger a reload, whose log line would
/// trigger the next.
fn concerns(changed: &Path, watched: &Watched) -> bool {
    let (Some(name), Some(folder)) = (changed.file_name(), changed.parent()) else {
        return false;
    };
    let folder = if folder.as_os_str().is_empty() { Path::new(".") } else { folder };
    let folder = std::path::absolute(folder).unwrap_or_else(|_| folder.to_path_buf());
    watched.iter().any(|(f, names)| *f == folder && (name == "..data" || names.iter().any(|n| n == name)))
}

/// Reload whenever one of `files` changes on disk. Watches their folders, so
/// editors that replace a file (rename over it) and symlink swaps are seen
/// too; events are debounced. `path` is the configuration file (none: the
/// environment alone), read again on each reload.
pub fn watch(
    shared: Arc<Shared>,
    path: Option<PathBuf>,
    files: &[PathBuf],
) -> notify::Result<notify::RecommendedWatcher> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let watched = by_folder(files);
    let folders: Vec<PathBuf> = watched.iter().map(|(f, _)| f.clone()).collect();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        if event.paths.iter().any(|p| concerns(p, &watched)) {
            let _ = tx.send(());
        }
    })?;
    for folder in &folders {
        watcher.watch(folder, RecursiveMode::NonRecursive)?;
    }
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Let an editor (or a renewal writing certificate then key) finish before reading.
            tokio::time::sleep(Duration::from_millis(100)).await;
            while rx.try_recv().is_ok() {}
            tracing::info!(target: "keygate::audit", trigger = "file change", "reloading the configuration");
            reload_off_runtime(shared.clone(), path.clone()).await;
        }
    });
    Ok(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_files_and_kubernetes_data_links_matter() {
        let files = [PathBuf::from("/etc/keygate/keygate.toml"), PathBuf::from("/run/tls/tls.crt")];
        let watched = by_folder(&files);
        let yes = ["/etc/keygate/keygate.toml", "/etc/keygate/..data", "/run/tls/tls.crt", "/run/tls/..data"];
        for p in yes {
            assert!(concerns(Path::new(p), &watched), "{p}");
        }
        let no = [
            "/etc/keygate/..data_tmp",
            "/etc/keygate/..data.log",
            "/etc/keygate/keygate.toml.log",
            "/etc/keygate/keygate.toml.keygen-tmp",
            "/etc/keygate/other.toml",
            "/etc/keygate/tls.crt",
            "/run/tls/keygate.toml",
            "/elsewhere/..data",
        ];
        for p in no {
            assert!(!concerns(Path::new(p), &watched), "{p}");
        }
    }

    #[test]
    fn bare_names_are_in_the_current_folder() {
        let watched = by_folder(&[PathBuf::from("keygate.toml")]);
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(watched, vec![(cwd.clone(), vec![std::ffi::OsString::from("keygate.toml")])]);
        assert!(concerns(Path::new("./keygate.toml"), &watched));
        // The watcher reports absolute paths: a relative -c must match them.
        assert!(concerns(&cwd.join("keygate.toml"), &watched));
    }
}
