//! Connection slots: at most `server.max_connections` client connections. When every slot is
//! taken and another client connects, an idle connection (no request in progress) is closed
//! to make room: first the oldest of those that never completed a request head (slowloris,
//! port scanners, clients that connect ahead and never ask), then the keep-alive connection
//! idle longest. Clients that hold connections without using them (slowloris, pools
//! of forgotten keep-alives) can delay others by one accept, never lock them out; only
//! connections busy with requests make a newcomer wait.
//!
//! A connection told to close is closed only between requests (`server::serve_until_closed`):
//! a request that reached the proxy before the close is answered, with `Connection: close`,
//! and the connection ends after that answer. Such a connection is busy again, so the
//! newcomer that asked closes another idle one (`Slot::busy`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::{oneshot, Notify};

pub struct Slots {
    max: usize,
    inner: Mutex<Inner>,
    freed: Notify,
}

#[derive(Default)]
struct Inner {
    open: usize,
    next_id: u64,
    /// Idle connections by (served a request yet, idle since, id); the sender closes that
    /// connection. Never-served connections sort first.
    idle: BTreeMap<IdleKey, oneshot::Sender<()>>,
    /// Per open connection: requests in progress and, when idle, its key in `idle`.
    conns: std::collections::HashMap<u64, ConnState>,
    /// Idle connections closed to make room (for metrics and tests).
    shed: u64,
    /// Connections told to close whose slot is not free yet: a newcomer closes another one
    /// only when none is on its way out (one close per newcomer, not one per wake-up).
    closing: usize,
}

type IdleKey = (bool, Instant, u64);

struct ConnState {
    busy: usize,
    idle_key: Option<IdleKey>,
    /// Kept while busy, so the connection can be made idle (and closable) again.
    close: Option<oneshot::Sender<()>>,
    /// Told to close to make room, and counted in `Inner::closing` (until it ends, or turns
    /// out to have a request on its way: then it is busy, and the newcomer looks again).
    closing: bool,
}

/// One open connection's slot; frees it on drop.
pub struct Slot {
    slots: Arc<Slots>,
    id: u64,
    /// Set by the connection's task once it has been told to close (to make room, or the
    /// drain): every response from then on says `Connection: close`.
    closing: AtomicBool,
    /// A request has been handled on this connection (so a response may still be going out).
    served: AtomicBool,
}

/// A request in progress on a connection; the connection is idle again when every one of
/// its `Busy` guards is dropped (the response body finished or was abandoned).
pub struct Busy {
    slots: Arc<Slots>,
    id: u64,
}

impl Slots {
    pub fn new(max: usize) -> Arc<Slots> {
        Arc::new(Slots {
            max: max.max(1),
            inner: Mutex::new(Inner::default()),
            freed: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for a connection just accepted, and the signal that closes it. Waits only
    /// while every slot holds a connection with a request in progress.
    pub async fn acquire(self: &Arc<Self>) -> (Slot, oneshot::Receiver<()>) {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut guard = self.lock();
                let inner = &mut *guard;
                if inner.open < self.max {
                    inner.open += 1;
                    inner.next_id += 1;
                    let id = inner.next_id;
                    let (tx, rx) = oneshot::channel();
                    let key = (false, Instant::now(), id);
                    inner.idle.insert(key, tx);
                    inner.conns.insert(
                        id,
                        ConnState {
                            busy: 0,
                            idle_key: Some(key),
                            close: None,
                            closing: false,
                        },
                    );
                    return (
                        Slot {
                            slots: Arc::clone(self),
                            id,
                            closing: AtomicBool::new(false),
                            served: AtomicBool::new(false),
                        },
                        rx,
                    );
                }
                // Full: close an idle connection (never served first, then idle longest),
                // unless one is closing already; its slot frees when its task ends.
                if inner.closing == 0 {
                    if let Some((key, close)) = inner.idle.pop_first() {
                        if let Some(c) = inner.conns.get_mut(&key.2) {
                            c.idle_key = None;
                            c.closing = true;
                            inner.closing += 1;
                        }
                        inner.shed += 1;
                        let _ = close.send(());
                    }
                }
            }
            freed.await;
        }
    }

    /// Idle connections closed to make room since start.
    pub fn shed(&self) -> u64 {
        self.lock().shed
    }

    /// Open connections.
    pub fn open(&self) -> usize {
        self.lock().open
    }
}

impl Slot {
    /// Mark a request in progress on this connection (not closable until it is done). A
    /// connection told to close whose request was on its way is not freeing its slot soon:
    /// the newcomer that chose it is woken to close another.
    pub fn busy(&self) -> Busy {
        self.served.store(true, Ordering::Relaxed);
        let mut guard = self.slots.lock();
        let inner = &mut *guard;
        let mut wake = false;
        if let Some(c) = inner.conns.get_mut(&self.id) {
            c.busy += 1;
            if let Some(key) = c.idle_key.take() {
                c.close = inner.idle.remove(&key);
            }
            if c.closing {
                c.closing = false;
                inner.closing = inner.closing.saturating_sub(1);
                wake = true;
            }
        }
        drop(guard);
        if wake {
            self.slots.freed.notify_waiters();
        }
        Busy {
            slots: Arc::clone(&self.slots),
            id: self.id,
        }
    }

    /// A request is in progress on this connection.
    pub fn is_busy(&self) -> bool {
        self.slots
            .lock()
            .conns
            .get(&self.id)
            .is_some_and(|c| c.busy > 0)
    }

    /// A request has been handled on this connection.
    pub fn has_served(&self) -> bool {
        self.served.load(Ordering::Relaxed)
    }

    /// From now on, every response on this connection says `Connection: close`.
    pub fn close_after_response(&self) {
        self.closing.store(true, Ordering::Relaxed);
    }

    /// Whether responses on this connection must say `Connection: close`.
    pub fn must_close(&self) -> bool {
        self.closing.load(Ordering::Relaxed)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut guard = self.slots.lock();
        let inner = &mut *guard;
        let Some(c) = inner.conns.get_mut(&self.id) else {
            return;
        };
        c.busy = c.busy.saturating_sub(1);
        if c.busy == 0 {
            if let Some(close) = c.close.take() {
                let key = (true, Instant::now(), self.id);
                c.idle_key = Some(key);
                inner.idle.insert(key, close);
                drop(guard);
                // A newcomer waiting for a full house may close this one now.
                self.slots.freed.notify_waiters();
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        {
            let mut inner = self.slots.lock();
            if let Some(c) = inner.conns.remove(&self.id) {
                if let Some(key) = c.idle_key {
                    inner.idle.remove(&key);
                }
                if c.closing {
                    inner.closing = inner.closing.saturating_sub(1);
                }
            }
            inner.open = inner.open.saturating_sub(1);
        }
        self.slots.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A client arriving: its `acquire`, in a task of its own.
    fn newcomer(slots: &Arc<Slots>) -> tokio::task::JoinHandle<(Slot, oneshot::Receiver<()>)> {
        let slots = Arc::clone(slots);
        tokio::spawn(async move { slots.acquire().await })
    }

    #[tokio::test]
    async fn a_full_house_closes_the_longest_idle_connection() {
        let slots = Slots::new(2);
        let (a, mut a_close) = slots.acquire().await;
        tokio::time::sleep(Duration::from_millis(2)).await;
        let (b, mut b_close) = slots.acquire().await;
        let busy_b = b.busy();
        // Both taken; a is idle, b is busy: a third client makes a close.
        let third = newcomer(&slots);
        tokio::time::timeout(Duration::from_secs(2), &mut a_close)
            .await
            .expect("the idle connection is told to close")
            .expect("signal");
        assert!(
            b_close.try_recv().is_err(),
            "a busy connection is never closed"
        );
        assert!(
            !third.is_finished(),
            "the slot frees only when a's task ends"
        );
        drop(a);
        let (c, _c_close) = tokio::time::timeout(Duration::from_secs(2), third)
            .await
            .expect("a slot")
            .expect("task");
        assert_eq!(slots.open(), 2);
        assert_eq!(slots.shed(), 1);
        // c gets a request; b's ends, so b is now the only idle one and is closed next.
        let busy_c = c.busy();
        drop(busy_b);
        let fourth = newcomer(&slots);
        tokio::time::timeout(Duration::from_secs(2), &mut b_close)
            .await
            .expect("b closed")
            .expect("signal");
        drop(b);
        let _ = tokio::time::timeout(Duration::from_secs(2), fourth)
            .await
            .expect("a slot")
            .expect("task");
        drop(busy_c);
        drop(c);
    }

    #[tokio::test]
    async fn connections_that_never_sent_a_request_go_before_idle_keep_alives() {
        let slots = Slots::new(2);
        let (served, mut served_close) = slots.acquire().await;
        drop(served.busy()); // one request answered, now idle (the older of the two)
        tokio::time::sleep(Duration::from_millis(2)).await;
        let (silent, mut silent_close) = slots.acquire().await;
        let newcomer = newcomer(&slots);
        tokio::time::timeout(Duration::from_secs(2), &mut silent_close)
            .await
            .expect("the never-served connection is closed")
            .expect("signal");
        assert!(served_close.try_recv().is_err(), "the keep-alive stays");
        drop(silent);
        let _ = tokio::time::timeout(Duration::from_secs(2), newcomer)
            .await
            .expect("a slot")
            .expect("task");
        drop(served);
    }

    #[tokio::test]
    async fn a_newcomer_closes_one_connection_not_one_per_wake_up() {
        let slots = Slots::new(3);
        let (a, mut a_close) = slots.acquire().await;
        let (b, mut b_close) = slots.acquire().await;
        let (c, mut c_close) = slots.acquire().await;
        let (b_busy, c_busy) = (b.busy(), c.busy());
        let newcomer = newcomer(&slots);
        tokio::time::timeout(Duration::from_secs(2), &mut a_close)
            .await
            .expect("a closed")
            .expect("signal");
        // While a is on its way out, b and c finish requests (each wakes the newcomer).
        drop(b_busy);
        drop(c_busy);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(b_close.try_recv().is_err() && c_close.try_recv().is_err());
        assert_eq!(slots.shed(), 1);
        drop(a);
        let _ = tokio::time::timeout(Duration::from_secs(2), newcomer)
            .await
            .expect("a slot")
            .expect("task");
        drop((b, c));
    }

    #[tokio::test]
    async fn a_connection_told_to_close_that_gets_a_request_lets_the_newcomer_close_another() {
        let slots = Slots::new(2);
        let (a, mut a_close) = slots.acquire().await;
        tokio::time::sleep(Duration::from_millis(2)).await;
        let (b, mut b_close) = slots.acquire().await;
        let newcomer = newcomer(&slots);
        tokio::time::timeout(Duration::from_secs(2), &mut a_close)
            .await
            .expect("a told to close")
            .expect("signal");
        // a's request had reached it: a is busy and answers before it closes, so the
        // newcomer closes b instead of waiting for that answer.
        let a_busy = a.busy();
        tokio::time::timeout(Duration::from_secs(2), &mut b_close)
            .await
            .expect("b told to close")
            .expect("signal");
        assert_eq!(slots.shed(), 2);
        drop(b);
        let _ = tokio::time::timeout(Duration::from_secs(2), newcomer)
            .await
            .expect("a slot")
            .expect("task");
        // a, once answered, is not offered to the next newcomer again (it is closing).
        drop(a_busy);
        assert!(slots.lock().idle.is_empty());
        drop(a);
    }

    #[tokio::test]
    async fn when_every_connection_is_busy_a_newcomer_waits() {
        let slots = Slots::new(1);
        let (a, mut a_close) = slots.acquire().await;
        let busy = a.busy();
        let waiting = newcomer(&slots);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        assert!(a_close.try_recv().is_err());
        drop(busy);
        drop(a);
        tokio::time::timeout(Duration::from_secs(2), waiting)
            .await
            .expect("a slot once the busy connection ended")
            .expect("task");
    }
}
