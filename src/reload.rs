//! Reload: build a new snapshot from the file and environment and swap it
//! in; a bad configuration keeps the old one serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use crate::config;
use crate::metrics::ResultLabels;
use crate::state::Shared;

/// Load the configuration again and swap it in if valid. Returns whether it was applied.
pub fn reload(shared: &Shared, path: Option<&Path>) -> bool {
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
        shared.replace(new).map(|()| counts).map_err(|e| e.to_string())
    });
    let label = match &result {
        Ok((clients, keys, routes)) => {
            tracing::info!(target: "keygate::audit", result = "ok", clients, keys, routes, "configuration reloaded");
            "ok"
        }
        Err(e) => {
            tracing::error!(target: "keygate::audit", result = "error", error = %e, "reload failed; keeping the running configuration");
            "error"
        }
    };
    shared.metrics.reloads.get_or_create(&ResultLabels { result: label }).inc();
    result.is_ok()
}

/// Whether a change to `changed` may change the configuration file `name`:
/// the file itself, or the `..data` link Kubernetes swaps to update a
/// mounted ConfigMap or Secret (the file is a symlink through it). Exact
/// names only: a log file next to the config (`..data.log`, `keygate.toml.log`)
/// must not trigger a reload, whose log line would trigger the next.
fn concerns(changed: &Path, name: Option<&std::ffi::OsStr>) -> bool {
    let Some(changed) = changed.file_name() else {
        return false;
    };
    Some(changed) == name || changed == "..data"
}

/// Reload whenever `path` changes on disk. Watches the folder, so editors
/// that replace the file (rename over it) are seen too; events are debounced.
pub fn watch(shared: Arc<Shared>, path: PathBuf) -> notify::Result<notify::RecommendedWatcher> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let name = path.file_name().map(|n| n.to_os_string());
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        if event.paths.iter().any(|p| concerns(p, name.as_deref())) {
            let _ = tx.send(());
        }
    })?;
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    watcher.watch(&folder, RecursiveMode::NonRecursive)?;
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Let an editor finish writing before reading.
            tokio::time::sleep(Duration::from_millis(100)).await;
            while rx.try_recv().is_ok() {}
            tracing::info!(target: "keygate::audit", trigger = "file change", "reloading the configuration");
            reload(&shared, Some(&path));
        }
    });
    Ok(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn only_the_file_and_kubernetes_data_links_matter() {
        let name = Some(OsStr::new("keygate.toml"));
        assert!(concerns(Path::new("/etc/keygate/keygate.toml"), name));
        assert!(concerns(Path::new("/etc/keygate/..data"), name));
        assert!(!concerns(Path::new("/etc/keygate/..data_tmp"), name), "renamed to ..data, which is seen");
        assert!(!concerns(Path::new("/etc/keygate/..data.log"), name));
        assert!(!concerns(Path::new("/etc/keygate/keygate.toml.log"), name));
        assert!(!concerns(Path::new("/etc/keygate/keygate.toml.keygen-tmp"), name));
        assert!(!concerns(Path::new("/etc/keygate/other.toml"), name));
    }
}
