//! GeoIP data refreshed while the pipeline runs.
//!
//! The databases' folders are watched (a file renamed over a database is
//! an event of its folder, not of the file the host has open). A replaced
//! file is checked on the blocking pool ([`check`], against the file it
//! would replace) and swapped into its database's `ArcSwap`: lookups under
//! way finish on the old file, the next ones read the new one. A file that
//! fails the check is refused with a warning and the loaded one keeps
//! serving; a file that disappears leaves the loaded one serving too.
//! Either way the outcome is in the reload history as `geoip:<file name>`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};

use super::stamp::FileStamp;
use super::{check, rfc3339, Database, GeoIp, GeoIpError, Refusal, Serving};
use crate::stats::{ReloadOutcome, Stats};

/// Quiet time after the last event before a file written in place without
/// being closed is checked. A file renamed into place, or closed after
/// writing, is complete and checked at once; one read half-written is
/// refused (logged, the loaded file serving) and its next event brings it
/// whole. Longer than the reloader's 20 ms: databases are large, written
/// in many steps, and rarely urgent.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// Watches the databases of `geoip` until `stop` turns true, swapping in
/// each replaced file that passes [`check`] and recording every outcome in
/// `stats`' reload history.
pub async fn watch(geoip: Arc<GeoIp>, stats: Arc<Stats>, mut stop: watch::Receiver<bool>) {
    if geoip.databases.is_empty() {
        return;
    }
    let (tx, mut events) = mpsc::unbounded_channel::<(PathBuf, bool)>();
    let mut watcher = match notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        let Some(complete) = completes(&event.kind) else { return };
        // A rename names (from, to); only the file at `to` is complete.
        let last = event.paths.len().saturating_sub(1);
        for (i, path) in event.paths.into_iter().enumerate() {
            let _ = tx.send((path, complete && i == last));
        }
    }) {
        Ok(watcher) => watcher,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch the GeoIP databases; a replaced file applies at the next restart");
            return;
        }
    };
    let targets: Vec<Option<PathBuf>> = geoip.databases.iter().map(|d| watch_folder(&mut watcher, &d.path)).collect();
    // The version of each file last acted on: one change is reported more
    // than once (a rename within a folder comes as `From`, `To` and `Both`).
    let mut seen: Vec<Option<FileStamp>> = geoip.databases.iter().map(|d| Some(d.serving.load().checked.stamp)).collect();
    // Databases written in place, waiting for the writer to close or pause.
    let mut writing = BTreeSet::new();
    // First, every database: a file replaced between its opening and the
    // watch's start has no event of its own.
    let mut due: BTreeSet<usize> = (0..targets.len()).collect();
    loop {
        for i in std::mem::take(&mut due) {
            let (database, now) = (&geoip.databases[i], FileStamp::of(&geoip.databases[i].path));
            if now == seen[i] {
                continue;
            }
            seen[i] = now;
            match now {
                Some(_) => refresh(database, &stats).await,
                None => tracing::warn!(database = %database.path.display(), "GeoIP database removed; the loaded file keeps serving"),
            }
        }
        let debouncing = !writing.is_empty();
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return,
            _ = tokio::time::sleep(DEBOUNCE), if debouncing => due.append(&mut writing),
            Some((path, complete)) = events.recv() => {
                for i in (0..targets.len()).filter(|&i| targets[i].as_deref() == Some(path.as_path())) {
                    if complete {
                        writing.remove(&i);
                        due.insert(i);
                    } else {
                        writing.insert(i);
                    }
                }
            }
        }
    }
}

/// Whether an event may have changed a file: `Some(true)` when the file
/// is complete after it (renamed into place, or closed after writing),
/// `Some(false)` when more may follow, `None` when nothing changed (reads,
/// ours included, and attribute changes such as `touch`).
fn completes(kind: &EventKind) -> Option<bool> {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Some(true),
        EventKind::Access(_) | EventKind::Modify(ModifyKind::Metadata(_)) => None,
        EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both)) => Some(true),
        _ => Some(false),
    }
}

/// Watches the folder of `file`; returns the path events will name the
/// file by (the folder as canonicalised, as the watch reports it), or
/// `None` when the folder cannot be watched (logged).
fn watch_folder(watcher: &mut notify::RecommendedWatcher, file: &Path) -> Option<PathBuf> {
    let folder = file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let watched = std::fs::canonicalize(folder).map_err(notify::Error::io).and_then(|folder| {
        // Watching a folder twice is one watch.
        watcher.watch(&folder, RecursiveMode::NonRecursive).map(|()| folder)
    });
    match (watched, file.file_name()) {
        (Ok(folder), Some(name)) => Some(folder.join(name)),
        (Err(e), _) => {
            tracing::warn!(database = %file.display(), error = %e, "cannot watch the GeoIP database's folder; a replaced file applies at the next restart");
            None
        }
        (Ok(_), None) => None,
    }
}

/// Checks the file at `database`'s path against the one serving, off the
/// hot path, and swaps it in or refuses it.
async fn refresh(database: &Database, stats: &Stats) {
    let what = format!("geoip:{}", database.name);
    let started = Instant::now();
    let (path, serving) = (database.path.clone(), database.serving.load_full());
    let checked = tokio::task::spawn_blocking(move || check(&path, Some(&serving.checked))).await.unwrap_or_else(|cancelled| {
        Err(GeoIpError::Unreadable { path: database.path.clone(), reason: format!("the check did not finish: {cancelled}") })
    });
    match checked {
        Ok(checked) => {
            let (was, now) = (database.info(), Serving::now(checked));
            let metadata = now.checked.metadata();
            let detail = format!(
                "{} (IPv{}) built {}, was built {}; checked in {} ms",
                metadata.database_type,
                metadata.ip_version,
                rfc3339(metadata.build_epoch),
                was.built_at(),
                started.elapsed().as_millis()
            );
            database.serving.store(Arc::new(now));
            tracing::info!(database = %database.path.display(), "GeoIP database refreshed: {detail}");
            stats.reload_event(&what, ReloadOutcome::Accepted, detail);
        }
        Err(refused) => {
            let reason = format!("{refused}; the loaded file keeps serving");
            tracing::warn!(database = %database.path.display(), "GeoIP database refused: {reason}");
            database.refused.store(Some(Arc::new(Refusal { at: SystemTime::now(), reason: reason.clone() })));
            stats.reload_event(&what, ReloadOutcome::Rejected, reason);
        }
    }
}
