//! Host↔device traffic of training, counted where it happens: every blocking read of a
//! device tensor (each drains the queue, so the host cannot prepare the next micro-batch while the
//! GPU works) and every host→device upload (token ids, positions, reference margins). Process-wide
//! counters, read by `bench train`'s profile as differences around the measured steps; nothing else
//! may train in the process meanwhile. [`LaunchCount`] counts kernel launches the same way for
//! the generation and training profiles.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use burn::cubecl::logging::{LaunchObservation, LaunchObserver};

static READS: AtomicUsize = AtomicUsize::new(0);
static UPLOADS: AtomicUsize = AtomicUsize::new(0);

/// Counts one blocking read of device data.
pub fn read() {
    READS.fetch_add(1, Ordering::Relaxed);
}

/// Counts `n` host→device uploads.
pub fn uploaded(n: usize) {
    UPLOADS.fetch_add(n, Ordering::Relaxed);
}

/// The counters so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub reads: usize,
    pub uploads: usize,
}

impl Traffic {
    pub fn now() -> Self {
        Self {
            reads: READS.load(Ordering::Relaxed),
            uploads: UPLOADS.load(Ordering::Relaxed),
        }
    }

    /// What happened between `earlier` and `self`.
    pub fn since(self, earlier: Traffic) -> Traffic {
        Traffic {
            reads: self.reads - earlier.reads,
            uploads: self.uploads - earlier.uploads,
        }
    }
}

/// Kernel launches of the whole process while it is alive, through cubecl's launch observer
/// (told on the issuing thread, without waiting for the device).
pub struct LaunchCount {
    count: Arc<Launches>,
    _watching: LaunchObservation,
}

#[derive(Default)]
struct Launches(AtomicUsize);

impl LaunchObserver for Launches {
    fn launched(&self, _kernel: &'static str) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

impl LaunchCount {
    /// Starts counting.
    pub fn start() -> Self {
        let count = Arc::new(Launches::default());
        let _watching = LaunchObservation::new(count.clone());
        Self { count, _watching }
    }

    /// Launches since [`LaunchCount::start`].
    pub fn now(&self) -> usize {
        self.count.0.load(Ordering::Relaxed)
    }
}
