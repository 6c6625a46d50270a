//! Connection threads: the HTTP and gRPC front ends serve each connection on one of a few runtimes of
//! one worker thread each (one per core by default, `--connection-threads`), for the connection's whole
//! life.
//!
//! On the shared multi-threaded runtime a connection's task ran wherever a worker picked it up: woken by
//! its socket on one core, stolen by the other, woken by a batch computed on either. Its buffers, its
//! socket's state and the allocations it made moved between the cores with it, and a freed buffer went
//! back to the heap of the thread that allocated it. On the 2-core development VM under wrk 32
//! connections that cost about 5 µs of CPU per request, measured as 16.5 µs per request with the
//! runtime's two workers free to use both cores and 11.4 µs with the same two pinned to one core (the
//! canned server: 9.8 and 8.8). Here a connection, its requests, the batches its thread's requests form
//! ([`crate::gather`]) and their answers stay on one thread.
//!
//! A new connection goes to the thread serving the fewest open connections (the next in turn among
//! equals), so long-lived gRPC channels and short HTTP connections spread alike. Each runtime is tokio's
//! multi-threaded one with a single worker, not the current-thread one: nothing to steal from, but
//! `block_in_place` still hands the thread's other connections to a stand-in while a lone request
//! computes in place ([`crate::direct`]).

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::{Handle, Runtime};
use tokio::task::JoinSet;

/// The connection threads; dropping this stops them (each drops its runtime, and with it any task still
/// on it, once the front ends have closed their connections).
pub struct ConnThreads {
    threads: Box<[Thread]>,
    next: AtomicUsize,
}

struct Thread {
    handle: Handle,
    /// Connections open on this thread (on a cache line of its own: counted by the accept loops).
    open: Arc<Open>,
    /// Taken when the threads stop.
    runtime: Option<Runtime>,
}

#[repr(align(128))]
#[derive(Default)]
struct Open(AtomicUsize);

/// The number of connection threads by default: one per core the process may use.
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl ConnThreads {
    /// Starts `count` threads; `None` for 0 (connections then run on the caller's runtime).
    pub fn start(count: usize) -> io::Result<Option<Arc<ConnThreads>>> {
        if count == 0 {
            return Ok(None);
        }
        let mut threads = Vec::with_capacity(count);
        for i in 0..count {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name(format!("keel-conn-{i}"))
                .enable_all()
                // An idle thread hands back the memory a burst left in its heap (see alloc.rs).
                .on_thread_park(crate::alloc::idle)
                .build()?;
            threads.push(Thread {
                handle: runtime.handle().clone(),
                open: Arc::default(),
                runtime: Some(runtime),
            });
        }
        Ok(Some(Arc::new(ConnThreads {
            threads: threads.into(),
            next: AtomicUsize::new(0),
        })))
    }

    /// Open connections per thread.
    pub fn open(&self) -> Vec<usize> {
        self.threads
            .iter()
            .map(|t| t.open.0.load(Ordering::Relaxed))
            .collect()
    }

    /// The thread with the fewest open connections, from the next in turn.
    fn pick(&self) -> &Thread {
        let n = self.threads.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        (0..n)
            .map(|i| &self.threads[(start + i) % n])
            .min_by_key(|t| t.open.0.load(Ordering::Relaxed))
            .unwrap_or(&self.threads[start])
    }
}

/// Stops the threads without waiting for them: the front ends have closed their connections by then, and
/// a runtime may not be dropped (joined) from async code, where the last front end lets go of this.
impl Drop for ConnThreads {
    fn drop(&mut self) {
        for thread in self.threads.iter_mut() {
            if let Some(runtime) = thread.runtime.take() {
                runtime.shutdown_background();
            }
        }
    }
}

/// Counts a connection open on its thread until its task ends (or is dropped unpolled).
struct OpenGuard(Arc<Open>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Spawns a connection's task into `set`: on a connection thread when there are any, else on the
/// caller's runtime.
pub fn spawn<F>(threads: Option<&ConnThreads>, set: &mut JoinSet<()>, task: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let Some(threads) = threads else {
        set.spawn(task);
        return;
    };
    let thread = threads.pick();
    thread.open.0.fetch_add(1, Ordering::Relaxed);
    let open = OpenGuard(thread.open.clone());
    set.spawn_on(
        async move {
            let _open = open;
            task.await;
        },
        &thread.handle,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    /// Each connection runs on a connection thread, the least busy one; a finished one counts no more.
    /// Dropped from async code, the threads stop without a panic.
    #[tokio::test]
    async fn connections_spread_over_the_threads_and_stay_on_theirs() {
        assert!(ConnThreads::start(0).unwrap().is_none());
        let threads = ConnThreads::start(3).unwrap().unwrap();
        assert_eq!(threads.open(), vec![0, 0, 0]);
        let mut set = JoinSet::new();
        let mut held = Vec::new();
        let (names_tx, mut names) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..6 {
            let (release, released) = oneshot::channel::<()>();
            held.push(release);
            let names_tx = names_tx.clone();
            spawn(Some(&threads), &mut set, async move {
                let before = std::thread::current().name().map(String::from);
                let _ = released.await;
                // After an await, still on the same thread.
                let after = std::thread::current().name().map(String::from);
                let _ = names_tx.send((before, after));
            });
        }
        // Two each while all six are open.
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while threads.open() != vec![2, 2, 2] {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("two connections per thread");
        drop(held);
        while set.join_next().await.is_some() {}
        assert_eq!(threads.open(), vec![0, 0, 0]);
        drop(names_tx);
        let mut seen = std::collections::BTreeMap::new();
        while let Some((before, after)) = names.recv().await {
            assert_eq!(before, after, "a connection stays on its thread");
            *seen.entry(before.unwrap()).or_insert(0) += 1;
        }
        assert_eq!(
            seen.into_iter().collect::<Vec<_>>(),
            vec![
                ("keel-conn-0".to_string(), 2),
                ("keel-conn-1".to_string(), 2),
                ("keel-conn-2".to_string(), 2)
            ]
        );
        // Without threads, the caller's runtime runs it.
        let mut set = JoinSet::new();
        spawn(None, &mut set, async {});
        assert!(set.join_next().await.unwrap().is_ok());
    }
}
