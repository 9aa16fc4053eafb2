//! Test-only fault injection: makes the next boundary call on this thread panic inside its
//! body, as a bug in the core would.

use std::cell::Cell;

thread_local! {
    static PANIC_NEXT: Cell<bool> = const { Cell::new(false) };
}

/// The next exported call on this thread panics inside the boundary.
pub(crate) fn panic_next_call() {
    PANIC_NEXT.with(|p| p.set(true));
}

/// Called at the start of every boundary body.
pub(crate) fn maybe_panic() {
    if PANIC_NEXT.with(|p| p.replace(false)) {
        panic!("injected panic (a stand-in for a bug in the core)");
    }
}
