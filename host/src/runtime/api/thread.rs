//! The API on a thread of its own, below ingest's scheduling priority.
//!
//! Requests cost CPU: on a small machine, clients hammering the API would
//! take cores from the transform thread and the writers (docs/BENCHMARKS.md,
//! arm `api-load`). On its own thread with a higher nice value, the API gets the
//! CPU ingest leaves, and under contention its latency grows instead of
//! ingest slowing down (the concurrency limit then sheds the excess). The
//! threads it starts (blocking tasks) inherit the priority.

use tokio::sync::watch;

use super::Api;

/// The nice value of the API's thread: CFS weighs nice 10 at about a tenth
/// of nice 0, so ingest's threads win a contended core nine times in ten.
const API_NICE: i32 = 10;

impl Api {
    /// Serves on `listener` (a bound, non-blocking socket) on a thread of
    /// its own with a runtime of its own, until `shutdown` turns true; join
    /// the thread for the server's result.
    pub fn serve_on_own_thread(
        self,
        listener: std::net::TcpListener,
        shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<std::thread::JoinHandle<std::io::Result<()>>> {
        std::thread::Builder::new().name("api".into()).spawn(move || {
            lower_priority();
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().thread_name("api").build()?;
            runtime.block_on(async move { self.serve(tokio::net::TcpListener::from_std(listener)?, shutdown).await })
        })
    }
}

/// Raises the calling thread's nice value to [`API_NICE`]; logs when the
/// system refuses (the API then competes with ingest as an equal).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: neither call takes a pointer; on Linux, PRIO_PROCESS with
        // a thread id sets that thread's nice value alone.
        let refused = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, API_NICE) } != 0;
        if refused {
            tracing::warn!(error = %std::io::Error::last_os_error(), "cannot lower the API thread's priority; it competes with ingest as an equal");
        }
    }
}
