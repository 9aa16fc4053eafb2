//! The committed header is what the pinned cbindgen makes of the sources, its result codes
//! are the core's error table, its version macros are Cargo's, and it compiles cleanly as C11
//! and C++17. `CONNECT_BLESS=1 cargo test -p connect-ffi --test header` rewrites it.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use connect::connect_result;
use connect_core::ErrorKind;
use support::root;

fn header_path() -> PathBuf {
    root().join("include/connect.h")
}

fn generate() -> String {
    let crate_dir = env!("CARGO_MANIFEST_DIR");
    let config = cbindgen::Config::from_file(Path::new(crate_dir).join("cbindgen.toml")).unwrap();
    let mut out = Vec::new();
    cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen failed")
        .write(&mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn committed_header_is_up_to_date() {
    let fresh = generate();
    let path = header_path();
    if std::env::var_os("CONNECT_BLESS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &fresh).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != fresh {
        let first = committed
            .lines()
            .zip(fresh.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(committed.lines().count().min(fresh.lines().count()));
        panic!(
            "include/connect.h is stale (first difference at line {}); run `make header` or \
             CONNECT_BLESS=1 cargo test -p connect-ffi --test header",
            first + 1
        );
    }
}

/// `CONNECT_RESULT_NAME = N` pairs of the header's `connect_result` enum.
fn header_results() -> Vec<(String, u32)> {
    let text = std::fs::read_to_string(header_path()).unwrap();
    let start = text
        .find("enum connect_result\n")
        .expect("connect_result enum");
    let body = &text[start..text[start..].find("};").unwrap() + start];
    body.lines()
        .filter_map(|l| {
            let l = l.trim().trim_end_matches(',');
            let (name, value) = l.split_once(" = ")?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

#[test]
fn result_codes_are_the_core_error_table_both_ways() {
    // Every core kind has a connect_result of the same number and name.
    for kind in ErrorKind::ALL {
        let r = connect_result::from_code(kind.code())
            .unwrap_or_else(|| panic!("no connect_result for {}", kind.name()));
        assert_eq!(r.kind(), Some(*kind));
        let c_name = std::ffi::CStr::from_ptr_safe(connect::error::connect_result_name(r.code()));
        assert_eq!(c_name, kind.name());
    }
    // Every connect_result but OK is a core kind.
    for r in connect_result::ALL {
        if *r == connect_result::Ok {
            assert_eq!(r.code(), 0);
            continue;
        }
        assert!(r.kind().is_some(), "{r:?} is not in the core table");
    }
    assert_eq!(connect_result::ALL.len(), ErrorKind::ALL.len() + 1);
    // And the header says the same.
    let mut expected: Vec<(String, u32)> = vec![("CONNECT_RESULT_OK".into(), 0)];
    expected.extend(
        ErrorKind::ALL
            .iter()
            .map(|k| (format!("CONNECT_RESULT_{}", k.name()), k.code())),
    );
    assert_eq!(header_results(), expected);
}

trait FromPtrSafe {
    fn from_ptr_safe(p: *const std::ffi::c_char) -> String;
}

impl FromPtrSafe for std::ffi::CStr {
    fn from_ptr_safe(p: *const std::ffi::c_char) -> String {
        assert!(!p.is_null());
        // SAFETY: the library returns static NUL-terminated strings.
        unsafe { std::ffi::CStr::from_ptr(p) }
            .to_str()
            .unwrap()
            .to_owned()
    }
}

#[test]
fn version_macros_match_cargo_and_connect_version() {
    let text = std::fs::read_to_string(header_path()).unwrap();
    let value = |name: &str| -> u32 {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("#define {name} ")))
            .unwrap_or_else(|| panic!("{name} missing"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let major: u32 = env!("CARGO_PKG_VERSION_MAJOR").parse().unwrap();
    let minor: u32 = env!("CARGO_PKG_VERSION_MINOR").parse().unwrap();
    let patch: u32 = env!("CARGO_PKG_VERSION_PATCH").parse().unwrap();
    assert_eq!(value("CONNECT_VERSION_MAJOR"), major);
    assert_eq!(value("CONNECT_VERSION_MINOR"), minor);
    assert_eq!(value("CONNECT_VERSION_PATCH"), patch);
    assert!(text.contains(
        "((CONNECT_VERSION_MAJOR * 1000000) + (CONNECT_VERSION_MINOR * 1000) + CONNECT_VERSION_PATCH)"
    ));
    let v = std::ffi::CStr::from_ptr_safe(connect::connect_version());
    assert_eq!(v, format!("libconnect/{major}.{minor}.{patch}"));
    // The computed number, as a C compiler sees it.
    let dir = std::env::temp_dir().join(format!("connect-version-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("v.c");
    std::fs::write(
        &src,
        "#include <stdio.h>\n#include \"connect.h\"\nint main(void) { printf(\"%d\", CONNECT_VERSION_NUMBER); return 0; }\n",
    )
    .unwrap();
    let exe = dir.join("v");
    let ok = Command::new("cc")
        .arg("-std=c11")
        .arg("-I")
        .arg(root().join("include"))
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .status()
        .unwrap()
        .success();
    assert!(ok, "cc failed");
    let out = Command::new(&exe).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        (major * 1_000_000 + minor * 1000 + patch).to_string()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn compiles(compiler: &str, std: &str, ext: &str) {
    let dir = std::env::temp_dir().join(format!("connect-hdr-{}-{ext}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join(format!("h.{ext}"));
    std::fs::write(
        &src,
        "#include \"connect.h\"\n#include \"connect.h\"\nint main(void) { return CONNECT_OK == CONNECT_RESULT_OK ? 0 : 1; }\n",
    )
    .unwrap();
    let out = Command::new(compiler)
        .args([
            std,
            "-Wall",
            "-Wextra",
            "-Wpedantic",
            "-Werror",
            "-fsyntax-only",
        ])
        .arg("-I")
        .arg(root().join("include"))
        .arg(&src)
        .output()
        .unwrap_or_else(|e| panic!("{compiler}: {e}"));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "{compiler} {std}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn header_compiles_as_c11_and_cpp17_without_warnings() {
    compiles("cc", "-std=c11", "c");
    compiles("c++", "-std=c++17", "cpp");
}

#[test]
fn every_function_is_documented_with_the_template() {
    let text = std::fs::read_to_string(header_path()).unwrap();
    let mut functions = 0;
    for (i, line) in text.lines().enumerate() {
        // Declarations start at column 0 with a lower-case type; doc lines are indented.
        let is_fn = line.starts_with(|c: char| c.is_ascii_lowercase())
            && !line.starts_with("typedef")
            && !line.starts_with("enum")
            && line.contains("connect_")
            && line.contains('(');
        if !is_fn {
            continue;
        }
        functions += 1;
        // The comment block just above the declaration.
        let before: Vec<&str> = text.lines().take(i).collect();
        let start = before
            .iter()
            .rposition(|l| l.trim_start().starts_with("/*"))
            .unwrap();
        let doc = before[start..].join("\n");
        let name = line.split('(').next().unwrap();
        assert!(
            doc.contains("Thread safety:"),
            "{name} lacks `Thread safety:`"
        );
        assert!(doc.contains("Returns:"), "{name} lacks `Returns:`");
        if line.trim_start().starts_with("connect_result ") {
            assert!(doc.contains("Parameters:"), "{name} lacks `Parameters:`");
            assert!(
                doc.contains("Memory and lifetimes:"),
                "{name} lacks `Memory and lifetimes:`"
            );
        }
    }
    assert!(functions > 40, "only {functions} functions found");
}
