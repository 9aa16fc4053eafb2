//! Opaque handles. Each C handle type is a zero-sized Rust struct tied by [`Castable`] to the
//! Rust value it stands for and to one ownership kind, `Box` (exclusive, `T *` in C) or `Arc`
//! (shared and thread-safe, `const T *` in C), so the wrong cast or the wrong free does not
//! compile (ARCHITECTURE.md, C ABI conventions).

use std::sync::Arc;

use connect_core::{Error, ErrorKind};

use crate::error::err;

/// Marker: the handle owns a `Box<RustType>`.
#[derive(Debug)]
pub(crate) struct OwnershipBox;
/// Marker: the handle owns one strong count of an `Arc<RustType>`.
#[derive(Debug)]
pub(crate) struct OwnershipArc;

/// Ties a C handle type to its Rust value and ownership kind.
pub(crate) trait Castable {
    /// [`OwnershipBox`] or [`OwnershipArc`].
    type Ownership;
    /// The Rust value behind the handle.
    type RustType;
    /// The handle's C name, for error messages.
    const NAME: &'static str;
}

/// The error for a NULL handle of type `C`, named as C sees it.
fn null_handle<C: Castable>() -> Error {
    err(ErrorKind::NullParameter, format!("{} is NULL", C::NAME))
}

/// Moves `value` to the heap and hands out the exclusive pointer.
pub(crate) fn box_into_ptr<C>(value: C::RustType) -> *mut C
where
    C: Castable<Ownership = OwnershipBox>,
{
    Box::into_raw(Box::new(value)).cast::<C>()
}

/// Borrows the value behind an exclusive handle.
///
/// # Safety
/// `p` is NULL or a pointer from [`box_into_ptr`] for the same `C` that was not freed, and no
/// other reference to the value is alive for `'a` (C's "needs external synchronization").
pub(crate) unsafe fn try_box_mut<'a, C>(p: *mut C) -> Result<&'a mut C::RustType, Error>
where
    C: Castable<Ownership = OwnershipBox>,
{
    if p.is_null() {
        return Err(null_handle::<C>());
    }
    // SAFETY: per the caller's contract the pointer came from `Box::into_raw` of a
    // `C::RustType` and is exclusively ours for `'a`.
    Ok(unsafe { &mut *p.cast::<C::RustType>() })
}

/// Frees an exclusive handle; NULL is ignored.
///
/// # Safety
/// `p` is NULL or a live pointer from [`box_into_ptr`] for the same `C`, freed only once.
pub(crate) unsafe fn free_box<C>(p: *mut C)
where
    C: Castable<Ownership = OwnershipBox>,
{
    if p.is_null() {
        return;
    }
    // SAFETY: per the caller's contract; ownership returns to Rust exactly once.
    drop(unsafe { Box::from_raw(p.cast::<C::RustType>()) });
}

/// Hands out one strong count of `value` as a shared pointer.
pub(crate) fn arc_into_ptr<C>(value: Arc<C::RustType>) -> *const C
where
    C: Castable<Ownership = OwnershipArc>,
{
    Arc::into_raw(value).cast::<C>()
}

/// Borrows the value behind a shared handle.
///
/// # Safety
/// `p` is NULL or a pointer from [`arc_into_ptr`] for the same `C` whose count is still held
/// by the caller for `'a`.
pub(crate) unsafe fn try_arc<'a, C>(p: *const C) -> Result<&'a C::RustType, Error>
where
    C: Castable<Ownership = OwnershipArc>,
{
    if p.is_null() {
        return Err(null_handle::<C>());
    }
    // SAFETY: per the caller's contract the pointer came from `Arc::into_raw` and a strong
    // count is held for `'a`; `RustType` is `Sync` for every shared handle.
    Ok(unsafe { &*p.cast::<C::RustType>() })
}

/// A new strong count of the value behind a shared handle.
///
/// # Safety
/// As for [`try_arc`].
pub(crate) unsafe fn try_clone_arc<C>(p: *const C) -> Result<Arc<C::RustType>, Error>
where
    C: Castable<Ownership = OwnershipArc>,
{
    if p.is_null() {
        return Err(null_handle::<C>());
    }
    let raw = p.cast::<C::RustType>();
    // SAFETY: `raw` came from `Arc::into_raw` and its count is held by the caller, so adding
    // one and rebuilding an `Arc` that owns the new count is sound.
    unsafe {
        Arc::increment_strong_count(raw);
        Ok(Arc::from_raw(raw))
    }
}

/// Gives back the strong count held by a shared handle; NULL is ignored.
///
/// # Safety
/// `p` is NULL or a pointer from [`arc_into_ptr`] for the same `C`, released only once.
pub(crate) unsafe fn free_arc<C>(p: *const C)
where
    C: Castable<Ownership = OwnershipArc>,
{
    if p.is_null() {
        return;
    }
    // SAFETY: per the caller's contract; the count handed out is returned exactly once.
    drop(unsafe { Arc::from_raw(p.cast::<C::RustType>()) });
}

/// Shared handles (`const T *` in C) are used from any number of threads at once, and
/// exclusive ones move between threads: both facts are checked here at compile time.
const _: () = {
    const fn shared<T: Send + Sync>() {}
    const fn exclusive<T: Send>() {}
    shared::<crate::agent::AgentInner>();
    shared::<crate::service::ServiceInner>();
    exclusive::<crate::agent::AgentConfigBuilder>();
    exclusive::<crate::service::Authorization>();
    exclusive::<crate::net::ListenerInner>();
    exclusive::<crate::net::Conn>();
};
