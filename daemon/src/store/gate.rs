//! A reader-writer gate sharded by thread: a reader takes the read side of its thread's shard
//! only, so readers on different cores never write the same cache line; a writer takes the
//! write side of every shard, in order, so it excludes all readers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Shards of the gate; readers beyond this many threads share them.
const SHARDS: usize = 16;

/// One shard, alone on its cache lines.
#[repr(align(128))]
#[derive(Default)]
struct Shard(RwLock<()>);

/// A gate guarding writer state `T`: readers see no writer at work while they hold it.
pub(crate) struct Gate<T> {
    shards: [Shard; SHARDS],
    state: Mutex<T>,
}

/// Next shard handed to a thread that reads for the first time.
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static MY_SHARD: usize = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS;
}

/// A reader's hold on the gate.
pub(crate) struct ReadHold<'a> {
    _guard: RwLockReadGuard<'a, ()>,
}

/// A writer's hold on the gate: every shard, and the writer state.
pub(crate) struct WriteHold<'a, T> {
    state: MutexGuard<'a, T>,
    _shards: [RwLockWriteGuard<'a, ()>; SHARDS],
}

impl<T> Gate<T> {
    /// A gate over `state`.
    pub(crate) fn new(state: T) -> Self {
        Self {
            shards: Default::default(),
            state: Mutex::new(state),
        }
    }

    /// Holds off writers until the hold is dropped.
    pub(crate) fn read(&self) -> ReadHold<'_> {
        // A thread whose locals are being torn down reads through the first shard.
        let shard = MY_SHARD.try_with(|s| *s).unwrap_or(0);
        let lock = &self.shards[shard].0;
        ReadHold {
            _guard: lock.read().unwrap_or_else(|p| p.into_inner()),
        }
    }

    /// Waits for every reader to leave, then holds them all off, with the writer state.
    pub(crate) fn write(&self) -> WriteHold<'_, T> {
        // Writers queue on the state first, so they take the shards one at a time.
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // In index order (`map` runs front to back), with no allocation.
        let shards = self
            .shards
            .each_ref()
            .map(|s| s.0.write().unwrap_or_else(|p| p.into_inner()));
        WriteHold {
            state,
            _shards: shards,
        }
    }
}

impl<T> std::ops::Deref for WriteHold<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.state
    }
}

impl<T> std::ops::DerefMut for WriteHold<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    #[test]
    fn a_writer_waits_for_readers_on_any_shard() {
        let gate = Arc::new(Gate::new(0u32));
        let in_write = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..2 * SHARDS)
            .map(|_| {
                let (gate, in_write) = (gate.clone(), in_write.clone());
                std::thread::spawn(move || {
                    for _ in 0..2_000 {
                        let _hold = gate.read();
                        assert!(!in_write.load(Ordering::SeqCst), "a reader met a writer");
                    }
                })
            })
            .collect();
        for _ in 0..500 {
            let mut hold = gate.write();
            in_write.store(true, Ordering::SeqCst);
            *hold += 1;
            std::thread::yield_now();
            in_write.store(false, Ordering::SeqCst);
        }
        for r in readers {
            r.join().expect("reader");
        }
        assert_eq!(*gate.write(), 500);
    }
}
