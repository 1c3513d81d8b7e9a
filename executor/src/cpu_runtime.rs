//! A dedicated tokio runtime for query work, so DataFusion's CPU-bound polling never stalls the
//! IO runtime that serves gRPC, Flight and heartbeats.

use std::future::Future;
use std::sync::Mutex;

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

/// Owns the runtime's threads; dropping it shuts them down.
#[derive(Debug)]
pub struct CpuRuntime {
    handle: Handle,
    // Held so the runtime thread lives exactly as long as this value; a std Mutex because it is
    // only touched on drop.
    shutdown_tx: Mutex<Option<oneshot::Sender<()>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl CpuRuntime {
    /// A runtime of `num_threads` threads (at least one) named `<name>-cpu`, on a thread of its
    /// own so it can be dropped from async code.
    pub fn new(name: &str, num_threads: usize) -> std::io::Result<Self> {
        let runtime = Builder::new_multi_thread()
            .worker_threads(num_threads.max(1))
            .thread_name(format!("{name}-cpu"))
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("{name}-cpu-main"))
            .spawn(move || {
                runtime.block_on(async {
                    let _ = shutdown_rx.await;
                });
                runtime.shutdown_background();
            })?;
        Ok(Self {
            handle,
            shutdown_tx: Mutex::new(Some(shutdown_tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Runs `fut` on the CPU runtime.
    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(fut)
    }
}

impl Drop for CpuRuntime {
    fn drop(&mut self) {
        if let Ok(mut tx) = self.shutdown_tx.lock()
            && let Some(tx) = tx.take()
        {
            let _ = tx.send(());
        }
        if let Ok(mut thread) = self.thread.lock()
            && let Some(thread) = thread.take()
        {
            let _ = thread.join();
        }
    }
}
