//! Winograd's transformed kernels U = G g Gᵀ ([`super::winograd`]) kept between calls while
//! the weights they came from live: a sampling run multiplies by the same weights at every
//! step, and transforming them at every call was a measurable share of a sampling step
//! (docs/speed.md).
//!
//! The key is the weights' storage itself, held weakly. A flex tensor shares its storage
//! through an `Arc` and writes to it only through `Arc::get_mut` (which refuses while a `Weak`
//! to it exists) or `Arc::make_mut` (which then moves the values to a new allocation). So a
//! `Weak` that still reaches its storage proves the values unchanged since U was computed from
//! them; weights that are dropped or rewritten leave entries that no longer reach anything,
//! and those are dropped at the next insertion.
//!
//! Only the inference path (burn's plain flex backend) asks for it: under autodiff the weights
//! change at every optimiser step.

use std::any::Any;
use std::sync::{Arc, Mutex, Weak};

/// Values all entries may hold together (256 MB natively, 64 MB in the browser): past that a
/// call transforms its kernels as if there were no cache.
const MAX_VALUES: usize = if cfg!(target_arch = "wasm32") { 1 << 24 } else { 1 << 26 };

/// Which weights a U came from: their storage, where they start in it, and their shape
/// [C_out, C_in].
pub(super) struct Owner {
    storage: Weak<dyn Any + Send + Sync>,
    start: usize,
    shape: [usize; 2],
}

impl Owner {
    pub fn new<T: Any + Send + Sync>(storage: &Arc<T>, start: usize, shape: [usize; 2]) -> Self {
        let storage: Weak<dyn Any + Send + Sync> = Arc::downgrade(storage) as Weak<T>;
        Self { storage, start, shape }
    }

    /// Whether `self` still reaches its storage and names the same weights as `other`.
    fn same(&self, other: &Owner) -> bool {
        self.storage.strong_count() > 0
            && Weak::ptr_eq(&self.storage, &other.storage)
            && (self.start, self.shape) == (other.start, other.shape)
    }
}

struct Entry {
    owner: Owner,
    u: Arc<[f32]>,
}

static CACHE: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

fn entries() -> std::sync::MutexGuard<'static, Vec<Entry>> {
    // A panic while the lock was held cannot leave an entry half written (entries are pushed
    // whole), so a poisoned cache is still a valid one.
    CACHE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The U kept for `owner`'s weights, if any.
pub(super) fn get(owner: &Owner) -> Option<Arc<[f32]>> {
    entries().iter().find(|e| e.owner.same(owner)).map(|e| Arc::clone(&e.u))
}

/// Keeps `u` for `owner`'s weights, where it fits within [`MAX_VALUES`] once the entries of
/// weights that are gone have been dropped, and unless another thread has just kept the same
/// (the shards of a batch meet the same weights at once).
pub(super) fn put(owner: Owner, u: &[f32]) {
    let mut entries = entries();
    entries.retain(|e| e.owner.storage.strong_count() > 0);
    if entries.iter().any(|e| e.owner.same(&owner)) {
        return;
    }
    let held: usize = entries.iter().map(|e| e.u.len()).sum();
    if held + u.len() <= MAX_VALUES {
        entries.push(Entry { owner, u: Arc::from(u) });
    }
}
