//! What sets a reload off: a plugin file or pipeline.toml changing on disk
//! (notify, through their folders, so a file renamed into place is seen),
//! SIGHUP, or a request of the API. One loop serves them all, so reloads
//! never overlap.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch, Notify};

use super::{ReloadRequest, Reloader};
use crate::plugin::config::PluginConfig;

/// Quiet time after the last file event before acting on a file written in
/// place (editors truncate and write in several steps). A file renamed into
/// place is complete and acted on at once. A file read half-written fails
/// its load (logged, the old version serving) and the write's next event
/// loads it whole.
const DEBOUNCE: Duration = Duration::from_millis(20);

impl Reloader {
    /// Watches files and `sighup` until `shutdown`. Files are watched through
    /// their folders, so a file replaced by rename is seen too.
    pub async fn run(mut self, sighup: Arc<Notify>, mut requests: mpsc::Receiver<ReloadRequest>, mut shutdown: watch::Receiver<bool>) {
        // (path, whether the event renamed a file into place: a complete file).
        let (tx, mut rx) = mpsc::unbounded_channel::<(PathBuf, bool)>();
        let mut watcher = match notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            // Only writes, creations, renames and removals: reads (ours
            // included, when hashing a file) must not look like changes.
            if let Some(event) = event.ok().filter(|e| !matches!(e.kind, notify::EventKind::Access(_))) {
                use notify::event::{ModifyKind, RenameMode};
                let renamed_in = matches!(event.kind, notify::EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both)));
                let last = event.paths.len().saturating_sub(1);
                for (i, path) in event.paths.into_iter().enumerate() {
                    let _ = tx.send((path, renamed_in && i == last));
                }
            }
        }) {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "cannot watch files; hot reload is off (SIGHUP still reloads)");
                return self.run_without_watcher(sighup, requests, shutdown).await;
            }
        };
        let mut watched = HashSet::new();
        let mut acted_on = ActedOn::default();
        self.watch_folders(&mut watcher, &mut watched);
        // From here on a changed file is seen (deploy scripts and the
        // benchmark wait for this line before writing a new build).
        tracing::info!(folders = watched.len(), "hot reload: watching the plugin files and pipeline.toml");
        loop {
            let changed: Vec<PathBuf> = tokio::select! {
                _ = shutdown.changed() => return,
                _ = sighup.notified() => {
                    tracing::info!("reload requested");
                    let _ = self.reload_config().await;
                    self.watch_folders(&mut watcher, &mut watched);
                    continue;
                }
                Some(request) = requests.recv() => {
                    self.forced(request).await;
                    continue;
                }
                Some((first, mut complete)) = rx.recv() => {
                    // A file renamed into place is whole: act at once (what
                    // deploys and build tools do). Otherwise wait for quiet.
                    let mut paths = vec![first];
                    while !complete {
                        match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                            Ok(Some((p, renamed_in))) => {
                                paths.push(p);
                                complete = renamed_in;
                            }
                            _ => break,
                        }
                    }
                    while let Ok((p, _)) = rx.try_recv() {
                        paths.push(p);
                    }
                    paths
                }
            };
            let touched = |target: &Path| changed.iter().any(|p| same_file(p, target));
            if touched(&self.config.file) {
                // Unreadable (mid-rename): the reload says why, or the next event brings it.
                if OnDisk::read(&self.config.file).is_some_and(|file| !acted_on.first_time(&self.config.file, &file)) {
                    continue;
                }
                let _ = self.reload_config().await;
                // A transform added to the chain may live in a new folder.
                self.watch_folders(&mut watcher, &mut watched);
                continue;
            }
            for config in &self.config.transforms {
                // Only a file this event touched is read. Mid-rename it is
                // missing: the next event brings it.
                let Some(file) = touched(&config.path).then(|| OnDisk::read(&config.path)).flatten() else { continue };
                let serving = self.transform_slot(config.transform_name()).map(|slot| slot.current().info.content_hash.clone());
                if serving.is_some_and(|hash| hash != file.content_hash)
                    && !self.is_candidate(config, &file.content_hash)
                    && acted_on.first_time(&config.path, &file)
                {
                    let _ = self.start_rollout(config, config.rollout).await;
                }
            }
            let aggregate = &self.config.plugins.aggregate.path;
            if let Some(file) = touched(aggregate).then(|| OnDisk::read(aggregate)).flatten() {
                if file.content_hash != self.aggregate.current().info.content_hash && acted_on.first_time(aggregate, &file) {
                    let _ = self.swap_aggregate(self.config.aggregate_spec()).await;
                }
            }
        }
    }

    /// Watches the folder of every file the pipeline reads that is not
    /// watched yet.
    fn watch_folders(&self, watcher: &mut RecommendedWatcher, watched: &mut HashSet<PathBuf>) {
        for (what, path) in self.watched_files() {
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
            if watched.contains(&dir) {
                continue;
            }
            match watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    watched.insert(dir);
                }
                Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot watch {what}"),
            }
        }
    }

    async fn run_without_watcher(
        mut self,
        sighup: Arc<Notify>,
        mut requests: mpsc::Receiver<ReloadRequest>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = sighup.notified() => { let _ = self.reload_config().await; }
                Some(request) = requests.recv() => self.forced(request).await,
            }
        }
    }

    fn watched_files(&self) -> Vec<(String, PathBuf)> {
        let mut files = vec![("pipeline.toml".to_string(), self.config.file.clone())];
        for t in &self.config.transforms {
            files.push((format!("the transform `{}`", t.transform_name()), t.path.clone()));
        }
        files.push(("the aggregate plugin".into(), self.config.plugins.aggregate.path.clone()));
        files
    }

    /// Whether the file of `config` is already its transform's candidate in
    /// canary or shadow: a second event for one rename must not restart the
    /// rollout (that would reset its figures and record it as replaced).
    fn is_candidate(&self, config: &PluginConfig, content_hash: &str) -> bool {
        let Some(slot) = self.transform_slot(config.transform_name()) else { return false };
        let candidate = slot.canary().map(|c| c.info()).or_else(|| slot.shadow().map(|s| s.info()));
        candidate.is_some_and(|info| info.content_hash == content_hash)
    }
}

/// A watched file as it is on disk now, read once per event: the hash a
/// plugin is compared by (`swap::compared_hash`) and the file's identity.
struct OnDisk {
    content_hash: String,
    identity: (u64, std::time::SystemTime, u64),
}

impl OnDisk {
    fn read(path: &Path) -> Option<OnDisk> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).ok()?;
        let bytes = std::fs::read(path).ok()?;
        Some(OnDisk {
            content_hash: super::swap::compared_hash(&bytes),
            identity: (meta.ino(), meta.modified().unwrap_or(std::time::UNIX_EPOCH), meta.len()),
        })
    }
}

/// The version of each file a reload last acted on. One rename reaches the
/// watcher as several events (from, to, both), sometimes far enough apart
/// to be two batches: a version already acted on, accepted or refused, is
/// not reloaded (nor its refusal counted) again. A version is the file's
/// inode, modification time, length and content hash (two writes in one
/// clock tick keep the time), so any write, touch or rename makes a new
/// one; SIGHUP and the API retry regardless.
#[derive(Default)]
struct ActedOn(HashMap<PathBuf, ((u64, std::time::SystemTime, u64), String)>);

impl ActedOn {
    /// Whether `file`, read from `path`, was not acted on before; records it.
    fn first_time(&mut self, path: &Path, file: &OnDisk) -> bool {
        let version = (file.identity, file.content_hash.clone());
        self.0.insert(path.to_path_buf(), version.clone()) != Some(version)
    }
}

fn same_file(event_path: &Path, target: &Path) -> bool {
    let canon = |p: &Path| {
        let name = p.file_name().map(|n| n.to_os_string());
        let dir = p.parent().and_then(|d| std::fs::canonicalize(if d.as_os_str().is_empty() { Path::new(".") } else { d }).ok());
        (dir, name)
    };
    canon(event_path) == canon(target)
}

#[cfg(test)]
mod tests {
    use super::{ActedOn, OnDisk};

    #[test]
    fn a_version_of_a_file_is_acted_on_once_and_any_new_write_or_rename_is_a_new_version() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pipeline.toml");
        let mut acted = ActedOn::default();
        let mut first_time = |path: &std::path::Path| acted.first_time(path, &OnDisk::read(path).unwrap());
        std::fs::write(&file, "a = 1\n").unwrap();
        assert!(first_time(&file));
        assert!(!first_time(&file), "the second event of one write is the same version");
        // Same length, same clock tick, other bytes.
        std::fs::write(&file, "a = 2\n").unwrap();
        assert!(first_time(&file));
        // The same bytes renamed into place: a new file.
        let next = dir.path().join("next.toml");
        std::fs::write(&next, "a = 2\n").unwrap();
        std::fs::rename(&next, &file).unwrap();
        assert!(first_time(&file));
        assert!(!first_time(&file));
    }
}
