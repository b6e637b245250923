//! Wake-ups inside one connection's task, taken at once.
//!
//! A connection is one tokio task: its request reader, response reader and
//! response writer are joined futures (`connection.rs`), and they hand each
//! request on through channels: the reader queues the request's entry for
//! the response reader and its slot for the writer; the response reader
//! hands the answer to the slot. Each hand-off wakes the task from inside
//! its own poll. tokio takes a task that wakes itself while running for a
//! yield: it goes to the back of the worker's queue and another worker is
//! unparked to steal it. Measured on a Produce path (docs/performance.md,
//! "The produce path around the codec"), that was the second worker woken
//! about once per request, for nothing but to carry the task over: a
//! futex wake and two context switches each, and the task moved between
//! cores.
//!
//! [`InlineWakes`] gives the future its own waker: a wake that comes while
//! the future is being polled is answered by polling it again at once; a
//! wake from outside (a socket ready, another task) goes to the task's
//! waker as before. It polls again only while the task has coop budget
//! left and at most [`ROUNDS`] times, then yields as tokio would have, so
//! a connection that always has work does not keep its worker from others.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicU8;
use std::sync::atomic::Ordering::{AcqRel, Release};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures::task::AtomicWaker;

/// How many times one poll of the task polls the future again for wakes
/// from inside it, before yielding.
pub(crate) const ROUNDS: usize = 16;

/// The future is being polled.
const POLLING: u8 = 1;
/// It was woken while being polled.
const NOTIFIED: u8 = 2;

/// A future whose wakes from inside its own poll are taken at once.
pub(crate) struct InlineWakes<F> {
    fut: Pin<Box<F>>,
    state: Arc<State>,
    /// Made once: a waker that stays the same lets the channels inside keep
    /// the one they registered.
    waker: Waker,
}

struct State {
    flags: AtomicU8,
    /// The task's own waker, for wakes from outside.
    task: AtomicWaker,
}

impl<F: Future> InlineWakes<F> {
    pub(crate) fn new(fut: F) -> Self {
        let state = Arc::new(State {
            flags: AtomicU8::new(0),
            task: AtomicWaker::new(),
        });
        InlineWakes {
            fut: Box::pin(fut),
            waker: Waker::from(state.clone()),
            state,
        }
    }
}

// === impl InlineWakes ===

impl<F: Future> Future for InlineWakes<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        this.state.task.register(cx.waker());
        let mut inner = Context::from_waker(&this.waker);
        for _ in 0..ROUNDS {
            this.state.flags.store(POLLING, Release);
            if let Poll::Ready(out) = this.fut.as_mut().poll(&mut inner) {
                this.state.flags.store(0, Release);
                return Poll::Ready(out);
            }
            // Out of the poll: a wake from now on goes to the task. One that
            // came during it means something is ready now.
            if this.state.flags.swap(0, AcqRel) & NOTIFIED == 0 {
                return Poll::Pending;
            }
            if !tokio::task::coop::has_budget_remaining() {
                break;
            }
        }
        // Still woken: come back after the others, as tokio would.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

// === impl State ===

impl Wake for State {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.flags.fetch_or(NOTIFIED, AcqRel) & POLLING == 0 {
            self.task.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    /// A task waker that counts its wakes.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Relaxed);
        }
    }

    impl Count {
        fn get(&self) -> usize {
            self.0.load(Relaxed)
        }
    }

    /// Ready on its `n`th poll; before that, wakes itself with `wake`.
    fn ready_after(n: usize, wake: impl Fn(&Waker) + Unpin) -> impl Future<Output = usize> {
        let mut polls = 0;
        std::future::poll_fn(move |cx| {
            polls += 1;
            if polls >= n {
                return Poll::Ready(polls);
            }
            wake(cx.waker());
            Poll::Pending
        })
    }

    fn poll_once<F: Future>(f: &mut InlineWakes<F>, task: &Arc<Count>) -> Poll<F::Output> {
        let waker = Waker::from(task.clone());
        Pin::new(f).poll(&mut Context::from_waker(&waker))
    }

    #[tokio::test]
    async fn a_wake_from_inside_the_poll_is_polled_at_once_not_sent_to_the_task() {
        let task = Arc::new(Count::default());
        let mut f = InlineWakes::new(ready_after(3, |w| w.wake_by_ref()));
        assert_eq!(poll_once(&mut f, &task), Poll::Ready(3));
        assert_eq!(task.get(), 0, "the task was never rescheduled");
    }

    #[tokio::test]
    async fn a_wake_from_another_thread_during_the_poll_is_not_lost() {
        let task = Arc::new(Count::default());
        let mut f = InlineWakes::new(ready_after(2, |w| {
            let w = w.clone();
            std::thread::spawn(move || w.wake()).join().unwrap();
        }));
        assert_eq!(poll_once(&mut f, &task), Poll::Ready(2));
    }

    #[tokio::test]
    async fn a_wake_from_outside_goes_to_the_task() {
        let task = Arc::new(Count::default());
        let (tx, rx) = tokio::sync::oneshot::channel::<u8>();
        let mut f = InlineWakes::new(rx);
        assert!(poll_once(&mut f, &task).is_pending());
        assert_eq!(task.get(), 0);
        tx.send(7).unwrap();
        assert_eq!(task.get(), 1);
        assert_eq!(poll_once(&mut f, &task), Poll::Ready(Ok(7)));
    }

    #[tokio::test]
    async fn a_future_that_always_wakes_itself_still_yields() {
        let task = Arc::new(Count::default());
        let mut f = InlineWakes::new(ready_after(usize::MAX, |w| w.wake_by_ref()));
        assert!(poll_once(&mut f, &task).is_pending());
        assert_eq!(task.get(), 1, "rescheduled once, after {ROUNDS} polls");
    }
}
