//! Session workers: one OS thread per worker, each driving its own
//! single-threaded runtime. A session is placed on the least-loaded worker
//! when it is accepted and lives there until it closes (Envoy's threading
//! model, pgbouncer's event loop times N).
//!
//! Why not the multi-thread runtime: there every readiness event that makes
//! a task runnable also wakes an idle worker to look for work to steal, which
//! parks again having found none. On a proxy whose statements are a few tens
//! of microseconds, those futex wake-ups and context switches were the
//! largest cost after the loopback sends themselves (BENCHMARKS.md).
//! A session's two halves already run as one task, so no session needs more
//! than one thread.
use std::{
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering::Relaxed},
    },
    thread::JoinHandle,
};

use tokio::{runtime::Handle, sync::oneshot, task::JoinSet};

/// The session workers of a running agent.
pub struct Workers {
    workers: Vec<Worker>,
    /// Where the search for the least-loaded worker starts, so that ties
    /// rotate instead of piling onto worker 0.
    next: AtomicUsize,
}

struct Worker {
    handle: Handle,
    live: Arc<AtomicUsize>,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Workers {
    /// Starts `count` workers (at least one), named `loopgate-worker-N`.
    pub fn start(count: usize) -> std::io::Result<Workers> {
        let workers = (0..count.max(1)).map(Worker::start).collect::<std::io::Result<_>>()?;
        Ok(Workers {
            workers,
            next: AtomicUsize::new(0),
        })
    }

    pub fn count(&self) -> usize {
        self.workers.len()
    }

    /// Runs `session` on the worker with the fewest live sessions, tracked
    /// in `set` (so the caller can drain or abort it). The future is built
    /// on the worker by `make`, so that sockets are registered with that
    /// worker's reactor.
    pub fn spawn<T, F, Fut>(&self, set: &mut JoinSet<T>, make: F)
    where
        T: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T> + Send + 'static,
    {
        let worker = self.least_loaded();
        let live = LiveGuard::enter(worker.live.clone());
        set.spawn_on(
            async move {
                let _live = live;
                make().await
            },
            &worker.handle,
        );
    }

    fn least_loaded(&self) -> &Worker {
        let n = self.workers.len();
        let start = self.next.fetch_add(1, Relaxed) % n;
        (0..n)
            .map(|i| &self.workers[(start + i) % n])
            .min_by_key(|w| w.live.load(Relaxed))
            .unwrap_or(&self.workers[0])
    }

    /// Live sessions per worker, for `loopgate status`.
    pub fn loads(&self) -> Vec<usize> {
        self.workers.iter().map(|w| w.live.load(Relaxed)).collect()
    }

    /// Stops every worker and waits for its thread (blocking). Tasks still
    /// running on a worker (none after the proxy drained) are dropped with
    /// its runtime. Later sessions are not run.
    pub fn stop(&self) {
        self.signal_stop();
        for w in &self.workers {
            if let Some(thread) = w.thread.lock().ok().and_then(|mut t| t.take()) {
                let _ = thread.join();
            }
        }
    }

    fn signal_stop(&self) {
        for w in &self.workers {
            if let Some(stop) = w.stop.lock().ok().and_then(|mut s| s.take()) {
                let _ = stop.send(());
            }
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        // Without `stop` (an early error return) the threads are told to
        // finish but not joined: the process is on its way out.
        self.signal_stop();
    }
}

impl Worker {
    fn start(index: usize) -> std::io::Result<Worker> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("loopgate-worker-{index}"))
            .spawn(move || {
                // Spawned sessions run while this thread is inside block_on.
                let _ = runtime.block_on(stopped);
            })?;
        Ok(Worker {
            handle,
            live: Arc::default(),
            stop: Mutex::new(Some(stop)),
            thread: Mutex::new(Some(thread)),
        })
    }
}

/// Counts a session as live on its worker from placement until its task
/// ends, however it ends (completion, abort, runtime shutdown).
struct LiveGuard(Arc<AtomicUsize>);

impl LiveGuard {
    fn enter(live: Arc<AtomicUsize>) -> LiveGuard {
        live.fetch_add(1, Relaxed);
        LiveGuard(live)
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Places a session that runs until the returned sender is dropped or
    /// sent to, then answers the name of the thread it ran on.
    fn park(workers: &Workers, set: &mut JoinSet<Option<String>>) -> oneshot::Sender<()> {
        let (release, released) = oneshot::channel::<()>();
        workers.spawn(set, move || async move {
            let _ = released.await;
            std::thread::current().name().map(str::to_owned)
        });
        release
    }

    async fn wait_for_loads(workers: &Workers, want: &[usize]) {
        for _ in 0..500 {
            if workers.loads() == want {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        assert_eq!(workers.loads(), want);
    }

    #[tokio::test]
    async fn sessions_spread_over_workers_and_run_on_their_threads() {
        let workers = Workers::start(2).unwrap();
        let mut set = JoinSet::new();
        let releases: Vec<_> = (0..4).map(|_| park(&workers, &mut set)).collect();
        // Placement counts are taken at spawn: two each.
        assert_eq!(workers.loads(), vec![2, 2]);
        drop(releases);
        let mut names = Vec::new();
        while let Some(name) = set.join_next().await {
            names.push(name.unwrap().unwrap());
        }
        names.sort();
        assert_eq!(
            names,
            [
                "loopgate-worker-0",
                "loopgate-worker-0",
                "loopgate-worker-1",
                "loopgate-worker-1"
            ]
        );
        assert_eq!(workers.loads(), vec![0, 0]);
        workers.stop();
    }

    #[tokio::test]
    async fn a_new_session_goes_to_the_least_loaded_worker() {
        let workers = Workers::start(3).unwrap();
        let mut set = JoinSet::new();
        let mut releases: Vec<_> = (0..3).map(|_| park(&workers, &mut set)).collect();
        assert_eq!(workers.loads(), vec![1, 1, 1]);
        // The session on worker 2 ends. Round robin would now pick worker
        // 0; the least-loaded rule must pick worker 2.
        let _ = releases.remove(2).send(());
        wait_for_loads(&workers, &[1, 1, 0]).await;
        releases.push(park(&workers, &mut set));
        assert_eq!(workers.loads(), vec![1, 1, 1]);
        set.abort_all();
        while set.join_next().await.is_some() {}
        assert_eq!(workers.loads(), vec![0, 0, 0]);
        workers.stop();
    }
}
