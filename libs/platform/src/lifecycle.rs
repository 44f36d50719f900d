//! Background workers (outbox relays, journey sweepers) and their orderly
//! stop: on shutdown the server flips health to NOT_SERVING and drains
//! calls, then every worker is told to stop, finishes the batch in hand and
//! is awaited within the same bound.
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

/// The background workers of one mesh (one process, or one test server).
#[derive(Clone)]
pub struct Workers(Arc<Inner>);

struct Inner {
    stop: watch::Sender<bool>,
    handles: Mutex<Vec<(&'static str, JoinHandle<()>)>>,
}

impl Default for Workers {
    fn default() -> Self {
        Workers(Arc::new(Inner {
            stop: watch::channel(false).0,
            handles: Mutex::new(Vec::new()),
        }))
    }
}

impl Workers {
    /// Spawns a named worker that stops when shutdown begins.
    pub fn spawn<F, Fut>(&self, name: &'static str, worker: F)
    where
        F: FnOnce(Stopping) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let handle = tokio::spawn(worker(Stopping(self.0.stop.subscribe())));
        let mut handles = self.0.handles.lock().unwrap_or_else(|e| e.into_inner());
        handles.retain(|(_, h)| !h.is_finished());
        handles.push((name, handle));
    }

    /// Spawns an outbox relay: runs `round` (true when a full batch went
    /// out, so another follows at once), then waits for `ready` (a commit
    /// wrote an event) or a second, until shutdown.
    pub fn spawn_relay<F, Fut, E>(&self, name: &'static str, ready: Arc<Notify>, mut round: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = Result<bool, E>> + Send,
        E: std::fmt::Display,
    {
        self.spawn(name, |mut stopping| async move {
            while !stopping.is_stopping() {
                match round().await {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(e) => tracing::warn!(worker = name, error = %e, "relay round failed"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = ready.notified() => {}
                    _ = stopping.stopped() => {}
                }
            }
        });
    }

    /// Tells every worker to stop and waits for them, at most `bound`.
    pub async fn stop(&self, bound: Duration) {
        self.0.stop.send_replace(true);
        let handles: Vec<_> =
            std::mem::take(&mut *self.0.handles.lock().unwrap_or_else(|e| e.into_inner()));
        let deadline = tokio::time::Instant::now() + bound;
        for (name, h) in handles {
            match tokio::time::timeout_at(deadline, h).await {
                Ok(_) => tracing::info!(worker = name, "worker stopped"),
                Err(_) => tracing::warn!(worker = name, "worker did not stop within the bound"),
            }
        }
    }

    pub fn same(&self, other: &Workers) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// What a worker watches to know when to stop.
#[derive(Clone)]
pub struct Stopping(watch::Receiver<bool>);

impl Stopping {
    /// True once shutdown has begun.
    pub fn is_stopping(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves when shutdown begins.
    pub async fn stopped(&mut self) {
        let _ = self.0.wait_for(|s| *s).await;
    }

    /// Sleeps for `d`, or less when shutdown begins; true when stopping.
    pub async fn sleep(&mut self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = self.stopped() => {}
        }
        self.is_stopping()
    }
}
