//! How many submissions are prepared at once (`limits.max_submissions_preparing`), and whose
//! turn is next.
//!
//! A submission's preparation (parsing and checking the bundle, its pseudonyms and relations,
//! sealing its documents) is most of the CPU it costs. Without a bound, a bulk load of 64 or 256
//! submissions at once is prepared all together, and every other request (a clinician's read, a
//! search, an audit query) takes its turn among all of them on the same cores. With the bound,
//! the rest wait, their bodies already read, without costing any CPU, and the other requests
//! never wait for a slot: they queue behind a few preparations only. A submission gives its slot
//! back once sealed, before it waits for the group commit, so the groups fill as before.
//!
//! A freed slot goes to the HIS systems waiting in turn (round robin by certificate CN), each
//! system's own submissions in arrival order: a system doing a bulk load does not put another
//! system's submission behind all of its own.
//!
//! The slot is taken after the body is read: a client uploading slowly holds its own
//! connection, not a slot.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

/// The preparation slots, the submissions waiting for one, and whose turn is next.
#[derive(Debug)]
pub struct Admission {
    size: u32,
    state: Mutex<State>,
}

/// Under the one lock, a slot is never free while a submission waits: a freed slot is handed on
/// at once, and a submission that finds one free takes it.
#[derive(Debug, Default)]
struct State {
    /// Slots given out.
    taken: u32,
    /// Each waiting system's submissions, oldest first.
    queues: HashMap<String, VecDeque<Waiter>>,
    /// The systems with a submission waiting, in the order their turns come.
    turns: VecDeque<String>,
    waited: u64,
    next_id: u64,
}

#[derive(Debug)]
struct Waiter {
    id: u64,
    admit: oneshot::Sender<()>,
}

/// A slot held by one submission; given back (to the next system's turn) when dropped.
#[derive(Debug)]
pub struct Slot {
    admission: Arc<Admission>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.admission.lock();
        s.taken -= 1;
        Admission::hand_on(&mut s);
    }
}

/// A submission's place in a queue while it waits; dropped before its turn (the client went
/// away), it leaves the queue, and dropped after it (admitted but no longer there to take the
/// slot), it gives the slot on.
struct Place {
    admission: Arc<Admission>,
    system: String,
    id: u64,
    admitted: bool,
}

impl Drop for Place {
    fn drop(&mut self) {
        if self.admitted {
            return;
        }
        let mut s = self.admission.lock();
        let mut still_queued = false;
        if let Some(q) = s.queues.get_mut(&self.system) {
            if let Some(i) = q.iter().position(|w| w.id == self.id) {
                q.remove(i);
                still_queued = true;
            }
            if q.is_empty() {
                s.queues.remove(&self.system);
                s.turns.retain(|t| *t != self.system);
            }
        }
        if !still_queued {
            // The turn came and the slot was handed over while this request was going away.
            s.taken -= 1;
            Admission::hand_on(&mut s);
        }
    }
}

impl Admission {
    pub fn new(size: u32) -> Arc<Admission> {
        Arc::new(Admission { size: size.max(1), state: Mutex::new(State::default()) })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Gives a freed slot to the next waiting system in turn, if any waits.
    fn hand_on(s: &mut State) {
        while let Some(system) = s.turns.pop_front() {
            let Some(q) = s.queues.get_mut(&system) else { continue };
            let Some(w) = q.pop_front() else {
                s.queues.remove(&system);
                continue;
            };
            if q.is_empty() {
                s.queues.remove(&system);
            } else {
                s.turns.push_back(system);
            }
            s.taken += 1;
            // A receiver gone means its `Place` is being dropped right now, waiting for this
            // lock: it finds itself no longer queued and gives the slot on.
            let _ = w.admit.send(());
            return;
        }
    }

    /// A slot for a submission of `system`, at once when one is free and nobody waits, else when
    /// its turn comes. Dropped while waiting, the request leaves the queue.
    pub async fn admit(self: &Arc<Self>, system: &str) -> Slot {
        let (rx, mut place) = {
            let mut s = self.lock();
            if s.taken < self.size && s.turns.is_empty() {
                s.taken += 1;
                return Slot { admission: self.clone() };
            }
            let id = s.next_id;
            s.next_id += 1;
            s.waited += 1;
            let (tx, rx) = oneshot::channel();
            let q = s.queues.entry(system.to_owned()).or_default();
            q.push_back(Waiter { id, admit: tx });
            if q.len() == 1 {
                s.turns.push_back(system.to_owned());
            }
            (rx, Place { admission: self.clone(), system: system.to_owned(), id, admitted: false })
        };
        // The sender stays in the queue until it admits this place, or this place is dropped.
        rx.await.expect("a waiting submission's sender is kept until it is admitted");
        place.admitted = true;
        Slot { admission: self.clone() }
    }

    /// Submissions being prepared now.
    pub fn preparing(&self) -> u32 {
        self.lock().taken
    }

    /// Submissions waiting for a slot now.
    pub fn waiting(&self) -> u64 {
        self.lock().queues.values().map(|q| q.len() as u64).sum()
    }

    /// Submissions that had to wait for a slot, since the start.
    pub fn waited(&self) -> u64 {
        self.lock().waited
    }

    pub fn size(&self) -> u32 {
        self.size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A submission of `system` asking for a slot on a task of its own, once it waits.
    async fn queued(a: &Arc<Admission>, system: &'static str) -> tokio::task::JoinHandle<Slot> {
        let before = a.waiting();
        let task = {
            let a = a.clone();
            tokio::spawn(async move { a.admit(system).await })
        };
        while a.waiting() == before {
            tokio::task::yield_now().await;
        }
        task
    }

    /// Lets the runtime run every task that can.
    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_submission_beyond_the_slots_waits_for_one_given_back_and_a_given_up_wait_leaves_the_queue() {
        let a = Admission::new(1);
        let first = a.admit("his").await;
        assert_eq!((a.preparing(), a.waiting(), a.waited()), (1, 0, 0));

        let waiter = queued(&a, "his").await;
        settle().await;
        assert!(!waiter.is_finished(), "the second submission must wait while the only slot is held");
        assert_eq!((a.preparing(), a.waiting(), a.waited()), (1, 1, 1));

        drop(first);
        let second = waiter.await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((a.preparing(), a.waiting(), a.waited()), (1, 0, 1));

        // A wait given up (its request dropped) is no longer counted, and takes no slot.
        let given_up = queued(&a, "his").await;
        given_up.abort();
        assert!(given_up.await.is_err_and(|e| e.is_cancelled()));
        assert_eq!((a.preparing(), a.waiting(), a.waited()), (1, 0, 2));
        drop(second);
        assert_eq!(a.preparing(), 0);
        let _third = a.admit("his").await;
        assert_eq!((a.preparing(), a.waited()), (1, 2));
    }

    #[tokio::test]
    async fn a_freed_slot_goes_to_the_systems_in_turn_each_in_arrival_order() {
        let a = Admission::new(1);
        let held = a.admit("bulk").await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // Five of the bulk loader's submissions queued before the ward's one and the lab's two.
        for (system, n) in [("bulk", 1), ("bulk", 2), ("bulk", 3), ("bulk", 4), ("bulk", 5), ("ward", 1), ("lab", 1), ("lab", 2)] {
            let before = a.waiting();
            let (a2, order) = (a.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let slot = a2.admit(system).await;
                order.lock().unwrap_or_else(|p| p.into_inner()).push(format!("{system}{n}"));
                // Prepared; the slot goes on when dropped.
                drop(slot);
            }));
            while a.waiting() == before {
                tokio::task::yield_now().await;
            }
        }
        drop(held);
        for t in tasks {
            t.await.unwrap_or_else(|e| panic!("{e}"));
        }
        let order = order.lock().unwrap_or_else(|p| p.into_inner()).clone();
        assert_eq!(order, ["bulk1", "ward1", "lab1", "bulk2", "lab2", "bulk3", "bulk4", "bulk5"]);
        assert_eq!((a.preparing(), a.waiting(), a.waited()), (0, 0, 8));
    }

    #[tokio::test]
    async fn a_slot_handed_to_a_request_already_gone_goes_on_to_the_next() {
        let a = Admission::new(1);
        let held = a.admit("his").await;
        let gone = queued(&a, "his").await;
        let next = queued(&a, "lab").await;
        // The slot is handed to `gone` (first in turn) and `gone` is dropped before it runs.
        drop(held);
        gone.abort();
        let _ = gone.await;
        let slot = next.await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((a.preparing(), a.waiting()), (1, 0));
        drop(slot);
        assert_eq!(a.preparing(), 0);
    }

    #[test]
    fn no_slot_is_zero_slots() {
        assert_eq!(Admission::new(0).size(), 1);
    }
}
