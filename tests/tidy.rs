//! Tidy checks over the source tree: module docs, banned test attributes, and the dependency
//! rules of ARCHITECTURE.md (which module may name which library).

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn sources() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["src", "tests", "bench", "benches"] {
        rust_files(&root.join(dir), &mut files);
    }
    files.sort();
    assert!(
        files.len() > 10,
        "source tree not found from {}",
        root.display()
    );
    files
        .into_iter()
        .map(|p| {
            let text =
                std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            let rel = p.strip_prefix(root).unwrap_or(&p).display().to_string();
            (rel, text)
        })
        .collect()
}

#[test]
fn every_file_starts_with_a_module_doc() {
    for (path, text) in sources() {
        assert!(
            text.starts_with("//!"),
            "{path} must start with a //! line saying what it is for"
        );
    }
}

#[test]
fn no_ignored_or_should_panic_tests() {
    let banned = [concat!("#[", "ignore"), concat!("#[", "should_panic")];
    for (path, text) in sources() {
        for b in banned {
            assert!(
                !text.contains(b),
                "{path} uses {b}]: assert the behaviour instead"
            );
        }
    }
}

/// (needle, the only src/ files allowed to contain it, why)
const RULES: &[(&str, &[&str], &str)] = &[
    ("toml::", &["src/config.rs"], "only config parses TOML"),
    (
        "client::legacy",
        &["src/upstream/mod.rs"],
        "only upstream builds an HTTP client",
    ),
    (
        "prometheus",
        &["src/metrics.rs"],
        "only metrics names the prometheus crate",
    ),
    (
        "unsafe",
        &["src/sys.rs"],
        "only sys may contain unsafe code",
    ),
    ("libc::", &["src/sys.rs"], "only sys calls libc"),
    (
        "SystemTime::now",
        &["src/clock.rs", "src/cache/store.rs"],
        "the wall clock is read through clock::now (store compares with file times)",
    ),
];

/// Pure modules: no IO, no hyper or Tokio types.
const PURE: &[&str] = &[
    "src/route.rs",
    "src/upstream/health.rs",
    "src/upstream/headers.rs",
    "src/upstream/rewrite.rs",
    "src/cache/verify.rs",
    "src/cache/index.rs",
    "src/serve/range.rs",
];

#[test]
fn dependency_rules_hold() {
    for (path, text) in sources().into_iter().filter(|(p, _)| p.starts_with("src/")) {
        let code: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        for (needle, allowed, why) in RULES {
            if code.contains(needle) {
                assert!(
                    allowed.contains(&path.as_str()),
                    "{path} contains `{needle}`: {why}"
                );
            }
        }
        if PURE.contains(&path.as_str()) {
            for needle in ["tokio", "hyper", "std::fs", "std::net::Tcp"] {
                assert!(
                    !code.contains(needle),
                    "{path} is a pure module but names `{needle}`"
                );
            }
        }
    }
}
