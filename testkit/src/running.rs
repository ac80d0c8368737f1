//! A pipeline running in the test's own process, as `clickstream run` runs
//! it but without the signals and the HTTP server.

use std::sync::Arc;

use clickstream::config::PipelineConfig;
use clickstream::runtime::pipeline::{run_until_stopped, Pipeline, PipelineError};
use clickstream::stats::Stats;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running pipeline; [`stop`](Self::stop) drains it.
pub struct InProcess {
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<Pipeline, PipelineError>>,
    /// Its counters.
    pub stats: Arc<Stats>,
}

impl InProcess {
    /// Starts `config` on the current tokio runtime; `started` sees the
    /// live parts once everything is connected (e.g. to serve the API).
    pub fn start_with(config: PipelineConfig, started: impl Fn(&Pipeline) + Send + Sync + 'static) -> InProcess {
        let (stop, stopped) = watch::channel(false);
        let stats = Arc::new(Stats::default());
        let task = tokio::spawn(run_until_stopped(config, stopped, Default::default(), stats.clone(), started));
        InProcess { stop, task, stats }
    }

    /// Starts `config` on the current tokio runtime.
    pub fn start(config: PipelineConfig) -> InProcess {
        Self::start_with(config, |_| {})
    }

    /// Drains the pipeline (stored what was in flight) and returns its
    /// parts; panics when it failed.
    pub async fn stop(self) -> Pipeline {
        self.stop.send(true).expect("the pipeline task is alive");
        self.task.await.expect("the pipeline task does not panic").expect("the pipeline ran")
    }
}
