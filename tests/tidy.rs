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
    "src/digest.rs",
    "src/outcome.rs",
    "src/serve/range.rs",
    "src/image/decide.rs",
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

/// The layers of ARCHITECTURE.md, top to bottom: a module may import only modules of a lower
/// layer (never one of its own layer, never one above). `main.rs` and `lib.rs` stand apart.
const LAYERS: &[&[&str]] = &[
    &["app"],
    &["server"],
    &["image", "manage", "state"],
    &["prefetch", "grants", "identity"],
    &["fetch"],
    &["cache", "upstream"],
    &["error", "metrics"],
    &["body"],
    &["sendfile"],
    &["writable"],
    &[
        "auth", "clock", "config", "digest", "disk", "outcome", "route", "sys", "tls",
    ],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// The top-level module a file under src/ belongs to (`src/cache/fill.rs` -> `cache`).
fn top_module(path: &str) -> String {
    let rel = path.trim_start_matches("src/");
    let first = rel.split('/').next().unwrap_or(rel);
    first.trim_end_matches(".rs").to_string()
}

/// The crate's top-level modules a source names: `crate::x`, and `crate::{x, y::z}`.
fn crate_imports(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                found.push(name);
            }
        } else {
            found.push(
                rest.chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect(),
            );
        }
    }
    found.retain(|n| !n.is_empty());
    found
}

fn code_of(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn dependencies_point_down_the_layers() {
    let mut seen = std::collections::BTreeSet::new();
    for (path, text) in sources().into_iter().filter(|(p, _)| p.starts_with("src/")) {
        let module = top_module(&path);
        if module == "main" || module == "lib" {
            continue;
        }
        seen.insert(module.clone());
        let Some(own) = layer_of(&module) else {
            panic!("{path}: module `{module}` is in no layer of tests/tidy.rs LAYERS (and ARCHITECTURE.md)");
        };
        for used in crate_imports(&code_of(&text)) {
            if used == module {
                continue;
            }
            let Some(theirs) = layer_of(&used) else {
                panic!("{path} names `crate::{used}`, which is in no layer");
            };
            assert!(
                theirs > own,
                "{path} (layer {own}, `{module}`) imports `{used}` (layer {theirs}): dependencies \
                 must point down the layers of ARCHITECTURE.md"
            );
        }
    }
    for layer in LAYERS {
        for module in *layer {
            assert!(
                seen.contains(*module),
                "LAYERS names `{module}`, which has no source"
            );
        }
    }
}

#[test]
fn the_layer_check_sees_grouped_and_plain_imports() {
    let code = "use crate::{body::Chunk, upstream};\nuse crate::cache::fill;\nlet x = crate::clock::now();";
    assert_eq!(crate_imports(code), ["body", "upstream", "cache", "clock"]);
}

/// No function in src/ is longer than this many lines (declarative tables are split into
/// named helpers): a newcomer reads a function whole.
const MAX_FN_LINES: usize = 100;

/// (name, first line, length) of every `fn` with a body: from its signature to the closing
/// brace at the same indentation (rustfmt's layout).
fn functions(text: &str) -> Vec<(String, usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let sig = ["pub ", "pub(crate) ", "async ", "const ", "unsafe "]
            .iter()
            .fold(trimmed, |s, p| s.strip_prefix(p).unwrap_or(s));
        let sig = ["async ", "unsafe "]
            .iter()
            .fold(sig, |s, p| s.strip_prefix(p).unwrap_or(s));
        let Some(rest) = sig.strip_prefix("fn ") else {
            continue;
        };
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let close = " ".repeat(indent) + "}";
        let end = lines[i..]
            .iter()
            .position(|l| l.starts_with(&close) && l.len() - l.trim_start().len() == indent);
        if let Some(end) = end {
            out.push((name, i + 1, end + 1));
        }
    }
    out
}

#[test]
fn no_function_is_longer_than_a_screenful_or_two() {
    for (path, text) in sources().into_iter().filter(|(p, _)| p.starts_with("src/")) {
        for (name, line, len) in functions(&text) {
            assert!(
                len <= MAX_FN_LINES,
                "{path}:{line}: fn {name} is {len} lines (at most {MAX_FN_LINES}): split it into named steps"
            );
        }
    }
}

#[test]
fn function_lengths_are_measured_from_signature_to_brace() {
    let text = "fn a() {\n    x();\n}\n\n    pub async fn b(\n        y: u8,\n    ) {\n    }\n";
    assert_eq!(
        functions(text),
        [("a".to_string(), 1, 3), ("b".to_string(), 5, 4)]
    );
}
