//! Every stage's task and thread is watched. A stage that panics, or ends
//! while the pipeline is not draining, stops the whole pipeline with an
//! error, so the process exits non-zero and its supervisor (systemd,
//! Kubernetes) restarts it: nothing is lost, since offsets live in
//! PostgreSQL and advance only with what was stored. What must never happen
//! is a silent stall: a live HTTP API in front of a pipeline that no longer
//! moves.
//!
//! Stages also say when they hold work (a batch taken, a pass begun) and
//! when they finish it, so `/ready` can name a stage that has held its work
//! too long without finishing.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A stage that died: which, and how.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the {stage} stage {how}; the pipeline stops (a supervisor restarting the process resumes from the offsets stored in PostgreSQL)")]
pub struct StageFailure {
    /// The stage's name (`transform`, `store`, `aggregate`, ...).
    pub stage: &'static str,
    /// `panicked: <message>`, or `stopped on its own`.
    pub how: String,
}

/// The stages of one pipeline run: who holds work since when, and the first
/// stage that died.
#[derive(Debug)]
pub struct Stages {
    stages: Mutex<Vec<Arc<Stage>>>,
    failure: watch::Sender<Option<StageFailure>>,
}

/// One stage's state, for `/ready`.
#[derive(Debug)]
pub struct Stage {
    name: &'static str,
    /// Epoch milliseconds since when it holds work; 0 when idle.
    busy_since_ms: AtomicU64,
    /// What it holds (`a batch of 500 records`), for the report.
    holding: Mutex<String>,
}

/// A stage holding work: idle again when dropped.
#[must_use = "the stage is idle again when this is dropped"]
pub struct Busy<'a>(&'a Stage);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.busy_since_ms.store(0, Ordering::Relaxed);
    }
}

impl Stage {
    /// Marks the stage as holding `what` until the returned guard is dropped.
    pub fn busy(&self, what: impl FnOnce() -> String) -> Busy<'_> {
        *lock(&self.holding) = what();
        self.busy_since_ms.store(now_ms().max(1), Ordering::Relaxed);
        Busy(self)
    }
}

/// A stage that has held its work longer than allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stalled {
    /// The stage.
    pub stage: &'static str,
    /// For how long.
    pub for_: Duration,
    /// What it holds.
    pub holding: String,
}

impl std::fmt::Display for Stalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the {} stage has held {} for {} s without finishing it", self.stage, self.holding, self.for_.as_secs())
    }
}

impl Default for Stages {
    fn default() -> Self {
        Stages { stages: Mutex::new(Vec::new()), failure: watch::channel(None).0 }
    }
}

impl Stages {
    /// The stage called `name`, registered on first use.
    pub fn stage(&self, name: &'static str) -> Arc<Stage> {
        let mut stages = lock(&self.stages);
        if let Some(stage) = stages.iter().find(|s| s.name == name) {
            return stage.clone();
        }
        let stage = Arc::new(Stage { name, busy_since_ms: AtomicU64::new(0), holding: Mutex::new(String::new()) });
        stages.push(stage.clone());
        stage
    }

    /// Records that `stage` died. The first panic is the one reported, else
    /// the first stage that stopped: a stage whose neighbour panicked sees
    /// its channel close, and may say so before the panic is recorded.
    pub fn fail(&self, stage: &'static str, how: String) {
        tracing::error!(stage, how = %how, "a pipeline stage died; stopping the pipeline");
        let panicked = |how: &str| how.starts_with(PANICKED);
        self.failure.send_if_modified(|failure| match failure {
            Some(first) if panicked(&first.how) || !panicked(&how) => false,
            _ => {
                *failure = Some(StageFailure { stage, how });
                true
            }
        });
    }

    /// The first stage that died, if any.
    pub fn failure(&self) -> Option<StageFailure> {
        self.failure.borrow().clone()
    }

    /// Turns to `Some` when a stage dies.
    pub fn watch_failure(&self) -> watch::Receiver<Option<StageFailure>> {
        self.failure.subscribe()
    }

    /// The stages holding work for longer than `after`.
    pub fn stalled(&self, after: Duration) -> Vec<Stalled> {
        let now = now_ms();
        lock(&self.stages)
            .iter()
            .filter_map(|stage| {
                let since = stage.busy_since_ms.load(Ordering::Relaxed);
                let held = Duration::from_millis(now.saturating_sub(since));
                (since != 0 && held > after).then(|| Stalled { stage: stage.name, for_: held, holding: lock(&stage.holding).clone() })
            })
            .collect()
    }

    /// Spawns a stage's task: a panic, or an end before `drain` turns true,
    /// is recorded as the stage's death.
    pub fn spawn<F>(self: &Arc<Self>, name: &'static str, drain: &watch::Receiver<bool>, task: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (stages, drain) = (self.clone(), drain.clone());
        tokio::spawn(async move {
            let result = std::panic::AssertUnwindSafe(task).catch_unwind().await;
            stages.ended(name, result.map_err(|p| panicked(p.as_ref())), &drain);
        })
    }

    /// Spawns a stage's thread likewise.
    pub fn spawn_thread(
        self: &Arc<Self>,
        name: &'static str,
        drain: &watch::Receiver<bool>,
        work: impl FnOnce() + Send + 'static,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let (stages, drain) = (self.clone(), drain.clone());
        std::thread::Builder::new().name(name.into()).spawn(move || {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
            stages.ended(name, result.map_err(|p| panicked(p.as_ref())), &drain);
        })
    }

    fn ended(&self, name: &'static str, result: Result<(), String>, drain: &watch::Receiver<bool>) {
        match result {
            Err(how) => self.fail(name, how),
            // A stage whose input closed because another died is not a
            // second failure: the first is already recorded.
            Ok(()) if !*drain.borrow() && self.failure().is_none() => self.fail(name, "stopped on its own".into()),
            Ok(()) => {}
        }
    }
}

/// A test's way to make a stage die or hang where no real input can:
/// `CLICKSTREAM_TEST_FAULT=panic:transform` panics the transform stage at
/// its next batch, `stall:transform` makes it hold the batch forever. Read
/// in debug builds only (what the tests run); a release build has no such
/// switch.
pub fn fault_point(stage: &str) {
    #[cfg(debug_assertions)]
    {
        static FAULT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
        let fault = FAULT.get_or_init(|| std::env::var("CLICKSTREAM_TEST_FAULT").ok());
        match fault.as_deref().and_then(|f| f.split_once(':')) {
            Some(("panic", s)) if s == stage => panic!("CLICKSTREAM_TEST_FAULT: the {stage} stage panics"),
            Some(("stall", s)) if s == stage => loop {
                std::thread::park();
            },
            _ => {}
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = stage;
}

/// How a panic's failure reads, before its message.
const PANICKED: &str = "panicked: ";

/// A panic as a stage's failure reads: `panicked: <its message>`.
pub fn panicked(payload: &(dyn std::any::Any + Send)) -> String {
    format!("{PANICKED}{}", panic_message(payload))
}

/// What a panic said, when it said it with a string.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_panics_is_recorded_as_its_stage_failure_and_only_the_first_counts() {
        let stages = Arc::new(Stages::default());
        let (_drain_tx, drain) = watch::channel(false);
        let mut failed = stages.watch_failure();
        stages.spawn("aggregate", &drain, async { panic!("boom") }).await.unwrap();
        failed.wait_for(Option::is_some).await.unwrap();
        stages.spawn("index", &drain, async {}).await.unwrap();
        assert_eq!(stages.failure(), Some(StageFailure { stage: "aggregate", how: "panicked: boom".into() }));
    }

    #[test]
    fn a_panic_recorded_after_a_stop_it_caused_is_the_failure_reported() {
        let stages = Stages::default();
        stages.fail("source", "stopped on its own".into());
        stages.fail("transform", "panicked: boom".into());
        stages.fail("store", "panicked: later".into());
        assert_eq!(stages.failure(), Some(StageFailure { stage: "transform", how: "panicked: boom".into() }));
    }

    #[tokio::test]
    async fn a_task_that_ends_before_the_drain_fails_and_one_that_ends_after_it_does_not() {
        let stages = Arc::new(Stages::default());
        let (drain_tx, drain) = watch::channel(false);
        drain_tx.send(true).unwrap();
        stages.spawn("index", &drain, async {}).await.unwrap();
        assert_eq!(stages.failure(), None);
        let (_drain_tx, drain) = watch::channel(false);
        stages.spawn("index", &drain, async {}).await.unwrap();
        assert_eq!(stages.failure().map(|f| f.how), Some("stopped on its own".into()));
    }

    #[test]
    fn a_thread_that_panics_is_recorded_with_its_message() {
        let stages = Arc::new(Stages::default());
        let (_drain_tx, drain) = watch::channel(false);
        stages.spawn_thread("transform", &drain, || panic!("{} went wrong", 42)).unwrap().join().unwrap();
        let failure = stages.failure().unwrap();
        assert_eq!((failure.stage, failure.how.as_str()), ("transform", "panicked: 42 went wrong"));
        assert!(failure.to_string().contains("restart"), "{failure}");
    }

    #[test]
    fn a_stage_holding_work_past_the_limit_is_stalled_until_it_lets_go() {
        let stages = Stages::default();
        let store = stages.stage("store");
        let busy = store.busy(|| "a batch of 3 records".into());
        std::thread::sleep(Duration::from_millis(30));
        let stalled = stages.stalled(Duration::from_millis(10));
        assert_eq!(stalled.len(), 1, "{stalled:?}");
        assert_eq!((stalled[0].stage, stalled[0].holding.as_str()), ("store", "a batch of 3 records"));
        assert!(stalled[0].to_string().starts_with("the store stage has held a batch of 3 records for "), "{}", stalled[0]);
        assert!(stages.stalled(Duration::from_secs(60)).is_empty(), "not past a long limit");
        drop(busy);
        assert!(stages.stalled(Duration::from_millis(10)).is_empty(), "idle again");
    }
}
