//! Strings and buffers across the boundary: checked inputs, the size-query pattern for
//! outputs, and `connect_str` for borrowed text.

use std::ffi::{CStr, c_char};

use connect_core::{Error, ErrorKind};

use crate::error::err;

/// Borrowed text handed out by libconnect: `len` bytes of UTF-8 at `data`, **not**
/// NUL-terminated and without interior NUL bytes.
///
/// Its lifetime is stated by the function or callback that hands it out (for example "until
/// the connection is freed" or "during the callback only"). An empty string may have a NULL
/// `data`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
#[allow(non_camel_case_types, reason = "C type name")]
pub struct connect_str {
    /// The first byte, or NULL when `len` is 0.
    pub data: *const c_char,
    /// The number of bytes.
    pub len: usize,
}

impl connect_str {
    /// The empty string.
    pub const EMPTY: connect_str = connect_str {
        data: std::ptr::null(),
        len: 0,
    };

    /// Borrows `s`; the caller must keep `s` alive as long as C may read it.
    pub(crate) fn borrow(s: &str) -> connect_str {
        if s.is_empty() {
            return connect_str::EMPTY;
        }
        connect_str {
            data: s.as_ptr().cast(),
            len: s.len(),
        }
    }
}

/// A NUL-terminated UTF-8 input.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that stays valid for `'a`.
pub(crate) unsafe fn try_str<'a>(p: *const c_char, what: &str) -> Result<&'a str, Error> {
    if p.is_null() {
        return Err(err(ErrorKind::NullParameter, format!("{what} is NULL")));
    }
    // SAFETY: non-NULL and NUL-terminated per the caller's contract.
    let c = unsafe { CStr::from_ptr(p) };
    c.to_str()
        .map_err(|e| err(ErrorKind::InvalidParameter, format!("{what}: {e}")))
}

/// A byte input (`ptr`, `len`). NULL is refused even when `len` is 0.
///
/// # Safety
/// `p` is NULL or valid for reads of `len` bytes for `'a`.
pub(crate) unsafe fn try_bytes<'a>(
    p: *const u8,
    len: usize,
    what: &str,
) -> Result<&'a [u8], Error> {
    if p.is_null() {
        return Err(err(ErrorKind::NullParameter, format!("{what} is NULL")));
    }
    // SAFETY: non-NULL and valid for `len` bytes per the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// Checks an output pointer before any work is done, so that nothing is written on failure.
pub(crate) fn try_out<T>(p: *mut T, what: &str) -> Result<*mut T, Error> {
    if p.is_null() {
        return Err(err(ErrorKind::NullParameter, format!("{what} is NULL")));
    }
    Ok(p)
}

/// Writes `value` through an output pointer already checked by [`try_out`].
///
/// # Safety
/// `p` is non-NULL, aligned and valid for one write.
pub(crate) unsafe fn write_out<T>(p: *mut T, value: T) {
    // SAFETY: per the caller's contract.
    unsafe { p.write(value) }
}

/// Validates `buf`/`len`/`out_n` of a size-query output.
fn check_buffer<T>(buf: *mut T, len: usize, out_n: *mut usize) -> Result<(), Error> {
    try_out(out_n, "out_n")?;
    if buf.is_null() && len > 0 {
        return Err(err(
            ErrorKind::NullParameter,
            "buf is NULL but len is not 0 (pass len 0 to ask for the size)",
        ));
    }
    Ok(())
}

/// Copies text out as a NUL-terminated string: on success `*out_n` is the length without the
/// NUL; when `len` is too small, `*out_n` is the size needed (length + 1) and `buf` is
/// untouched.
///
/// # Safety
/// `buf` is NULL or valid for `len` byte writes; `out_n` is NULL or valid for one write.
pub(crate) unsafe fn copy_text_out(
    text: &str,
    buf: *mut c_char,
    len: usize,
    out_n: *mut usize,
) -> Result<(), Error> {
    check_buffer(buf, len, out_n)?;
    let need = text.len() + 1;
    if len < need {
        // SAFETY: `out_n` checked non-NULL above; valid per the caller's contract.
        unsafe { out_n.write(need) };
        return Err(err(
            ErrorKind::InsufficientSize,
            format!("buffer of {len} bytes is too small: {need} needed"),
        ));
    }
    // SAFETY: `buf` is valid for `len >= need` bytes and does not overlap `text` (C memory
    // the library never hands out as a `&str`).
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr(), buf.cast::<u8>(), text.len());
        buf.add(text.len()).write(0);
        out_n.write(text.len());
    }
    Ok(())
}

/// Copies bytes out: on success `*out_n` is the number written; when `len` is too small,
/// `*out_n` is the size needed and `buf` is untouched.
///
/// # Safety
/// `buf` is NULL or valid for `len` byte writes; `out_n` is NULL or valid for one write.
pub(crate) unsafe fn copy_bytes_out(
    bytes: &[u8],
    buf: *mut u8,
    len: usize,
    out_n: *mut usize,
) -> Result<(), Error> {
    check_buffer(buf, len, out_n)?;
    if len < bytes.len() {
        // SAFETY: `out_n` checked non-NULL above; valid per the caller's contract.
        unsafe { out_n.write(bytes.len()) };
        return Err(err(
            ErrorKind::InsufficientSize,
            format!("buffer of {len} bytes is too small: {} needed", bytes.len()),
        ));
    }
    // SAFETY: `buf` is valid for `len >= bytes.len()` bytes and does not overlap `bytes`.
    unsafe {
        if !bytes.is_empty() {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf, bytes.len());
        }
        out_n.write(bytes.len());
    }
    Ok(())
}
