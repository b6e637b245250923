//! Bounds on what clients can make the proxy hold: connections
//! ([`ConnectionLimit`], [`Admission`]), bytes buffered for requests and
//! responses ([`MemoryBudget`]), and time spent writing to a client that has
//! stopped reading ([`StallGuard`]).
//!
//! The budget works like a broker's memory pool (`queued.max.request.bytes`):
//! a frame's body is read only once its bytes are granted, so a connection
//! whose budget is spent simply stops being read; nothing is dropped. A frame
//! larger than the whole budget still goes through when nothing else holds
//! any (it could never fit otherwise).

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::AsyncWrite;
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tokio::time::Sleep;

/// Bytes that may be held at once, shared by everything charged to it.
#[derive(Debug)]
pub struct MemoryBudget {
    capacity: usize,
    used: AtomicUsize,
    /// Charges waiting now for bytes to come back (shared by budgets that
    /// are reported together, such as every connection's own).
    waiting: Arc<AtomicUsize>,
    freed: Notify,
}

impl MemoryBudget {
    pub fn new(capacity: usize) -> Arc<MemoryBudget> {
        MemoryBudget::counting_waits_in(capacity, Arc::default())
    }

    /// A budget whose waiting charges are counted in `waiting`.
    pub fn counting_waits_in(capacity: usize, waiting: Arc<AtomicUsize>) -> Arc<MemoryBudget> {
        Arc::new(MemoryBudget {
            capacity,
            used: AtomicUsize::new(0),
            waiting,
            freed: Notify::new(),
        })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes charged now.
    pub fn used(&self) -> usize {
        self.used.load(Relaxed)
    }

    /// Charges waiting now (in every budget sharing the count): reads held
    /// back until memory comes back.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Relaxed)
    }

    /// Waits until `bytes` fit (or nothing at all is charged), then charges
    /// them. Cancel-safe: nothing is charged until it returns, and a wait
    /// given up stops counting in [`MemoryBudget::waiting`].
    pub async fn charge(self: &Arc<Self>, bytes: usize) -> Charge {
        let mut waited = false;
        let mut _counted: Option<Waiting<'_>> = None;
        loop {
            // Registered before the check, so a release in between wakes it.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.try_take(bytes) {
                return Charge {
                    budget: Some(self.clone()),
                    bytes,
                    waited,
                };
            }
            if !waited {
                waited = true;
                self.waiting.fetch_add(1, Relaxed);
                _counted = Some(Waiting(self));
            }
            freed.await;
        }
    }

    /// Charges `bytes` without waiting, past the capacity if need be: for
    /// bytes already in memory that must be counted so that new reads wait.
    pub fn force(self: &Arc<Self>, bytes: usize) -> Charge {
        self.used.fetch_add(bytes, Relaxed);
        Charge {
            budget: Some(self.clone()),
            bytes,
            waited: false,
        }
    }

    fn try_take(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Relaxed, Relaxed, |used| {
                let fits = used
                    .checked_add(bytes)
                    .is_some_and(|total| total <= self.capacity);
                (fits || used == 0).then_some(used + bytes)
            })
            .is_ok()
    }

    fn release(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Relaxed);
        self.freed.notify_waiters();
    }
}

/// One charge counted in [`MemoryBudget::waiting`] until it is dropped.
struct Waiting<'a>(&'a MemoryBudget);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Relaxed);
    }
}

/// Bytes charged to a budget, given back when dropped.
#[derive(Debug, Default)]
pub struct Charge {
    budget: Option<Arc<MemoryBudget>>,
    bytes: usize,
    waited: bool,
}

impl Charge {
    /// A charge of nothing (a locally made answer, counted nowhere).
    pub fn none() -> Charge {
        Charge::default()
    }

    /// Whether the budget was spent when this was asked for, so it waited.
    pub fn waited(&self) -> bool {
        self.waited
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if let Some(budget) = self.budget.take() {
            budget.release(self.bytes);
        }
    }
}

/// A writer that fails with `TimedOut` when the peer accepts no byte for
/// `limit`: a client that stopped reading its responses would otherwise hold
/// its connection's buffered responses (and their share of the budget)
/// forever. Any progress restarts the clock.
pub(crate) struct StallGuard<W> {
    inner: W,
    limit: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<W> StallGuard<W> {
    pub(crate) fn new(inner: W, limit: Duration) -> StallGuard<W> {
        StallGuard {
            inner,
            limit,
            stalled: None,
        }
    }

    /// Called when the inner writer is not ready: errors once it has not been
    /// ready for the whole limit.
    fn check(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Error> {
        let limit = self.limit;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        ready!(timer.as_mut().poll(cx));
        self.stalled = None;
        Poll::Ready(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("the client accepted no bytes of its responses for {limit:?} (listen.write_timeout)"),
        ))
    }

    fn progress<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        match poll {
            Poll::Ready(result) => {
                self.stalled = None;
                Poll::Ready(result)
            }
            Poll::Pending => self.check(cx).map(Err),
        }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for StallGuard<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.progress(cx, poll)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.progress(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.progress(cx, poll)
    }
}

/// Which connection limit refused a client.
#[derive(Debug, Clone, Copy)]
pub enum ConnectionLimit {
    Total,
    PerIp,
}

impl ConnectionLimit {
    pub fn key(self) -> &'static str {
        match self {
            ConnectionLimit::Total => "listen.max_connections",
            ConnectionLimit::PerIp => "listen.max_connections_per_ip",
        }
    }
}

/// A connection's place under the limits; given back when it is dropped.
pub(crate) struct Admission {
    pub(crate) _permit: OwnedSemaphorePermit,
    pub(crate) ip: IpAddr,
    pub(crate) per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut per_ip = self.per_ip.lock().expect("per-ip lock");
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_charge_waits_until_bytes_are_freed() {
        let budget = MemoryBudget::new(100);
        let first = budget.charge(60).await;
        let second = budget.charge(40).await;
        assert_eq!(budget.used(), 100);
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.charge(30).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "30 more bytes do not fit in 100");
        assert_eq!(budget.waiting(), 1);
        assert!(!first.waited());
        drop(first);
        let third = waiting.await.unwrap();
        assert!(third.waited());
        assert_eq!(budget.waiting(), 0);
        assert_eq!(budget.used(), 70);
        drop((second, third));
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn a_wait_given_up_stops_counting_and_charges_nothing() {
        let budget = MemoryBudget::new(100);
        let full = budget.charge(100).await;
        let gave_up = tokio::time::timeout(Duration::from_millis(50), budget.charge(10)).await;
        assert!(gave_up.is_err(), "10 more bytes do not fit in 100");
        assert_eq!(budget.waiting(), 0);
        assert_eq!(budget.used(), 100);
        drop(full);
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn budgets_can_share_one_count_of_waits() {
        let waiting = Arc::new(AtomicUsize::new(0));
        let a = MemoryBudget::counting_waits_in(10, waiting.clone());
        let b = MemoryBudget::counting_waits_in(10, waiting.clone());
        let _full = (a.charge(10).await, b.charge(10).await);
        let pending = [a.clone(), b.clone()]
            .map(|budget| tokio::spawn(async move { drop(budget.charge(1).await) }));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(waiting.load(Relaxed), 2);
        assert_eq!(a.waiting(), 2);
        for p in pending {
            p.abort();
            let _ = p.await;
        }
        assert_eq!(waiting.load(Relaxed), 0);
    }

    #[tokio::test]
    async fn a_frame_larger_than_the_budget_goes_alone() {
        let budget = MemoryBudget::new(100);
        let big = budget.charge(500).await;
        assert_eq!(budget.used(), 500);
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.charge(1).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        drop(big);
        drop(waiting.await.unwrap());
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn forced_charges_count_and_hold_back_new_ones() {
        let budget = MemoryBudget::new(100);
        let forced = budget.force(150);
        assert_eq!(budget.used(), 150);
        let cancelled = tokio::time::timeout(Duration::from_millis(50), budget.charge(1)).await;
        assert!(cancelled.is_err(), "over capacity: new charges wait");
        assert_eq!(budget.used(), 150, "a cancelled charge takes nothing");
        drop(forced);
        drop(budget.charge(100).await);
        assert_eq!(budget.used(), 0);
        drop(Charge::none());
    }

    // Paused time: the reader's 50 ms steps and the 200 ms limit are the
    // runtime's clock, not the machine's, so a loaded machine cannot stretch
    // a step past the limit.
    #[tokio::test(start_paused = true)]
    async fn a_writer_nobody_reads_times_out_and_one_that_reads_does_not() {
        let (client, mut server) = tokio::io::duplex(1024);
        let mut guarded = StallGuard::new(client, Duration::from_millis(200));
        // Read slowly but steadily: 10 KiB at 1 KiB per 50 ms never stalls
        // for 200 ms.
        let reader = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut buf = vec![0; 1024];
            let mut total = 0;
            while total < 10 * 1024 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                total += server.read(&mut buf).await.unwrap();
            }
            server
        });
        guarded.write_all(&[1; 10 * 1024]).await.unwrap();
        let _server = reader.await.unwrap();
        // Now nobody reads: the duplex fills, then the write times out.
        let err = guarded.write_all(&[2; 10 * 1024]).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("listen.write_timeout"), "{err}");
    }
}
