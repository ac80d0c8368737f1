//! `clickstream run`: the pipeline and its HTTP API, until SIGINT/SIGTERM.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clickstream::config::PipelineConfig;
use clickstream::runtime::api::Api;
use clickstream::stats::Stats;

/// Run the pipeline until SIGINT or SIGTERM.
#[derive(clap::Args)]
pub struct Args {
    /// The pipeline file.
    #[arg(default_value = "pipeline.toml")]
    pipeline: PathBuf,
}

/// Runs the pipeline; the first signal drains (stops reading, finishes
/// in-flight batches, stores offsets), a second exits at once.
pub fn run(args: Args) -> anyhow::Result<()> {
    run_pipeline(&args.pipeline)
}

fn run_pipeline(pipeline: &Path) -> anyhow::Result<()> {
    let config = PipelineConfig::load(pipeline)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        // The API stops when the pipeline ends, whether asked to or not: a
        // pipeline that cannot start, or whose stage died, must take the
        // process down (exit 1) rather than leave the API answering alone.
        let (api_stop_tx, api_stop_rx) = tokio::sync::watch::channel(false);
        let sighup = Arc::new(tokio::sync::Notify::new());
        let hup = sighup.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let mut signals = signal(SignalKind::hangup()).expect("install SIGHUP handler");
            while signals.recv().await.is_some() {
                hup.notify_one();
            }
        });
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
            let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: draining"),
                _ = int.recv() => tracing::info!("SIGINT: draining"),
            }
            let _ = stop_tx.send(true);
            // A second signal means "now": in-flight batches are redelivered on restart.
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::warn!("second signal: exiting without draining");
            std::process::exit(130);
        });
        let stats = Arc::new(Stats::default());
        let api = Api::new(stats.clone());
        // Host check and limits from the first request on, before the pipeline runs.
        api.configure(&config.api);
        let listen = config.api.listen.clone();
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .with_context(|| format!("while binding [api] listen = {listen:?} in {} (is another process on that port?)", pipeline.display()))?;
        let bound = listener.local_addr().map_or_else(|_| listen.clone(), |a| a.to_string());
        tracing::info!(listen = %bound, "HTTP API and dashboard at http://{bound}/");
        let serving = api.clone().serve_on_own_thread(listener.into_std()?, api_stop_rx).context("while starting the API's thread")?;
        let result = clickstream::runtime::pipeline::run_until_stopped(config, stop_rx, sighup, stats, |running| {
            if running.config.api.listen != listen {
                tracing::warn!(listen = %listen, wanted = %running.config.api.listen, "api.listen changed; the API keeps its address until the process restarts");
            }
            api.serve_pipeline(running);
        })
        .await
        .with_context(|| format!("while running {}", pipeline.display()));
        let _ = api_stop_tx.send(true);
        let _ = tokio::task::spawn_blocking(move || serving.join()).await;
        result
    })?;
    Ok(())
}
