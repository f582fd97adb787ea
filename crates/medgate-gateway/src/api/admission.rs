//! How many submissions are prepared at once (`limits.max_submissions_preparing`).
//!
//! A submission's preparation (parsing and checking the bundle, its pseudonyms and relations,
//! sealing its documents) is most of the CPU it costs. Without a bound, a bulk load of 64 or 256
//! submissions at once is prepared all together, and every other request (a clinician's read, a
//! search, an audit query) takes its turn among all of them on the same cores. With the bound,
//! the rest wait in arrival order, their bodies already read, without costing any CPU, and the
//! other requests never wait for a slot: they queue behind a few preparations only. A
//! submission gives its slot back once sealed, before it waits for the group commit, so the
//! groups fill as before.
//!
//! The slot is taken after the body is read: a client uploading slowly holds its own
//! connection, not a slot.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The preparation slots and how many submissions wait for one.
#[derive(Debug)]
pub struct Admission {
    slots: Arc<Semaphore>,
    size: u32,
    waiting: AtomicU64,
    waited: AtomicU64,
}

impl Admission {
    pub fn new(size: u32) -> Admission {
        let size = size.max(1);
        Admission { slots: Arc::new(Semaphore::new(size as usize)), size, waiting: AtomicU64::new(0), waited: AtomicU64::new(0) }
    }

    /// Waits for a slot, in arrival order; the slot is given back when the permit is dropped.
    /// Dropped while waiting (the client went away), the wait leaves the queue.
    pub async fn admit(&self) -> OwnedSemaphorePermit {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return p;
        }
        self.waited.fetch_add(1, Ordering::Relaxed);
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let _counted = Counted(&self.waiting);
        // The semaphore is never closed.
        self.slots.clone().acquire_owned().await.expect("the preparation slots are never closed")
    }

    /// Submissions being prepared now.
    pub fn preparing(&self) -> u32 {
        self.size - u32::try_from(self.slots.available_permits()).unwrap_or(self.size).min(self.size)
    }

    /// Submissions waiting for a slot now.
    pub fn waiting(&self) -> u64 {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Submissions that had to wait for a slot, since the start.
    pub fn waited(&self) -> u64 {
        self.waited.load(Ordering::Relaxed)
    }

    pub fn size(&self) -> u32 {
        self.size
    }
}

/// Takes one off a count when dropped (a wait that ended, or was given up).
struct Counted<'a>(&'a AtomicU64);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A submission asking for a slot on a task of its own, once it waits in the queue.
    async fn queued(a: &Arc<Admission>) -> tokio::task::JoinHandle<OwnedSemaphorePermit> {
        let before = a.waiting();
        let task = {
            let a = a.clone();
            tokio::spawn(async move { a.admit().await })
        };
        while a.waiting() == before {
            tokio::task::yield_now().await;
        }
        task
    }

    #[tokio::test]
    async fn a_submission_beyond_the_slots_waits_for_one_given_back_and_a_given_up_wait_leaves_the_queue() {
        let a = Arc::new(Admission::new(1));
        let first = a.admit().await;
        assert_eq!((a.preparing(), a.waiting(), a.waited()), (1, 0, 0));

        let waiter = queued(&a).await;
        assert!(!waiter.is_finished(), "the second submission must wait while the only slot is held");
        assert_eq!((a.preparing(), a.waiting(), a.waited()), (1, 1, 1));

        drop(first);
        let second = waiter.await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((a.preparing(), a.waiting(), a.waited()), (1, 0, 1));

        // A wait given up (its request dropped) is no longer counted, and takes no slot.
        let given_up = queued(&a).await;
        given_up.abort();
        assert!(given_up.await.is_err_and(|e| e.is_cancelled()));
        assert_eq!((a.preparing(), a.waiting(), a.waited()), (1, 0, 2));
        drop(second);
        assert_eq!(a.preparing(), 0);
        let _third = a.admit().await;
        assert_eq!((a.preparing(), a.waited()), (1, 2));
    }

    #[test]
    fn no_slot_is_zero_slots() {
        assert_eq!(Admission::new(0).size(), 1);
    }
}
