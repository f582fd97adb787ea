//! What the store tells the layer above when a block is committed. The gateway passes a
//! [`CommitListener`] down (its audit export), so the store depends on nothing above it.
//!
//! Boundary: a notification after the fact. A listener learns of a block only once the block and
//! its indexes are flushed; it cannot veto or delay the commit, and it must not block.

use std::sync::{Arc, RwLock};

use medgate_ledger::Block;

/// Told of every committed block, once, in height order.
pub trait CommitListener: Send + Sync + 'static {
    /// `block` is on disk (flushed). Called on the committing task: return quickly.
    fn committed(&self, block: &Block);
}

/// The listeners of one store, shared by its clones.
#[derive(Clone, Default)]
pub(crate) struct Listeners(Arc<RwLock<Vec<Arc<dyn CommitListener>>>>);

impl std::fmt::Debug for Listeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.read().map(|l| l.len()).unwrap_or(0);
        f.debug_struct("Listeners").field("count", &n).finish()
    }
}

impl Listeners {
    pub(crate) fn add(&self, listener: Arc<dyn CommitListener>) {
        self.0.write().unwrap_or_else(|p| p.into_inner()).push(listener);
    }

    pub(crate) fn committed(&self, block: &Block) {
        for l in self.0.read().unwrap_or_else(|p| p.into_inner()).iter() {
            l.committed(block);
        }
    }
}
