//! The one thread that loads, validates, compiles and builds configs, off
//! the runtime thread that serves requests, and drops the ones replaced.
//! One long-lived thread rather than the blocking pool: each new thread
//! brings its own allocator arena, and a pool that grows and shrinks
//! between reloads would leave garbage in a new arena every time. After
//! each job the memory it freed goes back to the system.

use std::sync::mpsc;
use std::sync::OnceLock;

use crate::memory;

type Job = Box<dyn FnOnce() + Send>;

/// The config thread's queue.
#[derive(Debug)]
struct Worker {
    jobs: std::sync::Mutex<mpsc::Sender<Job>>,
}

/// The config thread has gone (it panicked on an earlier job).
#[derive(Debug, thiserror::Error)]
#[error("the config thread is gone")]
pub struct WorkerGone;

fn worker() -> &'static Worker {
    static WORKER: OnceLock<Worker> = OnceLock::new();
    WORKER.get_or_init(|| {
        let (jobs, queue) = mpsc::channel::<Job>();
        let spawned = std::thread::Builder::new()
            .name("trellis-config".into())
            .spawn(move || {
                for job in queue {
                    job();
                    memory::release_free_memory();
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the config thread");
        }
        Worker {
            jobs: std::sync::Mutex::new(jobs),
        }
    })
}

/// Runs `job` on the config thread and waits for its result.
pub async fn run<T: Send + 'static>(
    job: impl FnOnce() -> T + Send + 'static,
) -> Result<T, WorkerGone> {
    let (done, result) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = done.send(job());
    });
    worker()
        .jobs
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .send(job)
        .map_err(|_| WorkerGone)?;
    result.await.map_err(|_| WorkerGone)
}
