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
    ("toml::", &["src/config/mod.rs"], "only config parses TOML"),
    (
        "client::legacy",
        &["src/upstream/mod.rs", "src/upstream/connect.rs"],
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

/// Pure modules: no IO, no hyper or Tokio types (ARCHITECTURE.md, "pure cores do no IO").
const PURE: &[&str] = &[
    "src/route.rs",
    "src/upstream/health.rs",
    "src/upstream/headers.rs",
    "src/upstream/rewrite.rs",
    "src/cache/verify.rs",
    "src/cache/index.rs",
    "src/image/range.rs",
    "src/digest.rs",
    "src/outcome.rs",
    "src/image/decide.rs",
];

/// The listed paths that do not exist under `root`.
fn missing(paths: &[&str], root: &Path) -> Vec<String> {
    paths
        .iter()
        .filter(|p| !root.join(p).is_file())
        .map(|p| p.to_string())
        .collect()
}

#[test]
fn every_listed_pure_module_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert_eq!(
        missing(PURE, root),
        Vec::<String>::new(),
        "PURE names files that do not exist: a pure module was moved or renamed"
    );
}

#[test]
fn a_missing_pure_module_is_reported() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert_eq!(
        missing(&["src/route.rs", "src/serve/range.rs"], root),
        ["src/serve/range.rs"]
    );
}

/// Code outside its tests (`#[cfg(test)]` and what follows).
fn code_outside_tests(text: &str) -> String {
    let code = code_of(text);
    match code.find("#[cfg(test)]") {
        Some(at) => code[..at].to_string(),
        None => code,
    }
}

/// (directory, needles its code outside tests must not contain, why)
const KEEPS_OUT: &[(&str, &[&str], &str)] = &[(
    "src/cache/",
    &["sendfile", "ProxyBody", "BytesBody", "Chunk", "hyper"],
    "the cache builds no body and knows no connection (body::follow streams it)",
)];

#[test]
fn the_cache_names_no_body_or_connection() {
    for (path, text) in sources() {
        let code = code_outside_tests(&text);
        for (dir, needles, why) in KEEPS_OUT {
            if !path.starts_with(dir) {
                continue;
            }
            for needle in *needles {
                assert!(!code.contains(needle), "{path} names `{needle}`: {why}");
            }
        }
    }
}

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
    &["writable", "logging"],
    &[
        "auth", "clock", "config", "digest", "disk", "outcome", "route", "sys", "tls",
    ],
];

/// The top-level module a file under src/ belongs to (`src/cache/fill.rs` -> `cache`).
fn top_module(path: &str) -> String {
    let rel = path.trim_start_matches("src/");
    let first = rel.split('/').next().unwrap_or(rel);
    first.trim_end_matches(".rs").to_string()
}

/// The module path of a file under src/ (`src/cache/fill.rs` -> [cache, fill],
/// `src/cache/mod.rs` -> [cache], `src/app.rs` -> [app]).
fn module_path(path: &str) -> Vec<String> {
    let rel = path.trim_start_matches("src/").trim_end_matches(".rs");
    rel.split('/')
        .filter(|p| *p != "mod")
        .map(str::to_string)
        .collect()
}

/// The names right after `prefix` at the start of `rest`: `x` for `x::...`, and every
/// item of a group `{x, y::z}`.
fn names_after(rest: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.trim()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    match rest.strip_prefix('{') {
        Some(group) => {
            let end = group.find('}').unwrap_or(group.len());
            group[..end].split(',').map(ident).collect()
        }
        None => vec![ident(rest)],
    }
}

/// The crate's top-level modules a source names: `crate::x`, `crate::{x, y::z}`, and
/// `super::` paths that climb out of its own module (`super::super::x` in
/// `src/cache/read.rs`, or `super::x` in `src/app.rs`), counting inline `mod m {` blocks.
fn imports_of(path: &str, code: &str) -> Vec<String> {
    let mut found = Vec::new();
    let depth = module_path(path).len();
    // Indentation of the inline `mod` blocks open at each line.
    let mut inline: Vec<usize> = Vec::new();
    for line in code.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if inline.last() == Some(&indent) && trimmed == "}" {
            inline.pop();
        }
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            let before = &rest[..at];
            rest = &rest[at + "crate::".len()..];
            if before.ends_with(|c: char| c.is_alphanumeric() || c == '_') {
                continue; // `foocrate::`, not the crate
            }
            found.extend(names_after(rest));
        }
        let mut rest = line;
        while let Some(at) = rest.find("super::") {
            let before = &rest[..at];
            let mut climbs = 0;
            let mut tail = &rest[at..];
            while let Some(t) = tail.strip_prefix("super::") {
                climbs += 1;
                tail = t;
            }
            rest = tail;
            if before.ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            // Each `super` leaves one level: inline modules first, then the file's own.
            if climbs >= depth + inline.len() {
                found.extend(names_after(tail));
            }
        }
        let is_inline_mod = (trimmed.starts_with("mod ") || trimmed.contains(" mod "))
            && trimmed.ends_with('{')
            && !trimmed.contains("fn ");
        if is_inline_mod {
            inline.push(indent);
        }
    }
    found.retain(|n| !n.is_empty() && n != "self");
    found
}

fn code_of(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What is wrong with `path`'s imports (`code`) against `layers`.
fn layer_violations(path: &str, code: &str, layers: &[&[&str]]) -> Vec<String> {
    let layer_of = |module: &str| layers.iter().position(|layer| layer.contains(&module));
    let module = top_module(path);
    let Some(own) = layer_of(&module) else {
        return vec![format!(
            "{path}: module `{module}` is in no layer of tests/tidy.rs LAYERS (and ARCHITECTURE.md)"
        )];
    };
    let mut wrong = Vec::new();
    for used in imports_of(path, code) {
        if used == module {
            continue;
        }
        match layer_of(&used) {
            None => wrong.push(format!(
                "{path} names `crate::{used}`, which is in no layer"
            )),
            Some(theirs) if theirs <= own => wrong.push(format!(
                "{path} (layer {own}, `{module}`) imports `{used}` (layer {theirs}): dependencies \
                 must point down the layers of ARCHITECTURE.md"
            )),
            Some(_) => {}
        }
    }
    wrong
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
        let wrong = layer_violations(&path, &code_of(&text), LAYERS);
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
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
fn the_layer_check_sees_grouped_plain_and_super_imports() {
    let code = "use crate::{body::Chunk, upstream};\nuse crate::cache::fill;\nlet x = crate::clock::now();";
    assert_eq!(
        imports_of("src/image/mod.rs", code),
        ["body", "upstream", "cache", "clock"]
    );
    // `super::` within the module stays in it; climbing out names a top-level module.
    assert!(imports_of("src/cache/read.rs", "use super::fill::Fill;").is_empty());
    assert_eq!(
        imports_of("src/cache/read.rs", "use super::super::server::X;"),
        ["server"]
    );
    assert_eq!(
        imports_of("src/app.rs", "use super::{image, cache};"),
        ["image", "cache"]
    );
    // An inline module adds a level: `super::super` in a test module of read.rs is `cache`.
    let tests = "mod tests {\n    use super::super::fill::BATCH;\n}\nuse super::super::image::X;";
    assert_eq!(imports_of("src/cache/read.rs", tests), ["image"]);
    // A planted violation by `super::` is reported.
    let planted = "use super::super::server::Server;";
    let wrong = layer_violations("src/cache/read.rs", planted, LAYERS);
    assert!(
        wrong.len() == 1 && wrong[0].contains("imports `server`"),
        "{wrong:?}"
    );
    assert!(layer_violations("src/cache/read.rs", "use super::fill::Fill;", LAYERS).is_empty());
}

/// The layer table of ARCHITECTURE.md (`| layer | modules |`), top to bottom: the modules
/// of each row, as written (`\`app\``).
fn documented_layers(markdown: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut in_table = false;
    for line in markdown.lines() {
        let cells: Vec<&str> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        if cells.len() == 2 && cells[0] == "layer" && cells[1] == "modules" {
            in_table = true;
            continue;
        }
        if !in_table {
            continue;
        }
        if !line.trim().starts_with('|') {
            break;
        }
        if cells.len() != 2 || cells[1].starts_with("---") {
            continue;
        }
        rows.push(
            cells[1]
                .split(',')
                .map(|m| m.trim().trim_matches('`').to_string())
                .collect(),
        );
    }
    rows
}

/// How `documented` differs from `layers`, row by row (each row's modules in any order).
fn layer_table_differences(documented: &[Vec<String>], layers: &[&[&str]]) -> Vec<String> {
    let mut diffs = Vec::new();
    if documented.len() != layers.len() {
        diffs.push(format!(
            "ARCHITECTURE.md has {} layers, LAYERS {}",
            documented.len(),
            layers.len()
        ));
    }
    for (i, (doc, code)) in documented.iter().zip(layers).enumerate() {
        let mut doc: Vec<&str> = doc.iter().map(String::as_str).collect();
        let mut code: Vec<&str> = code.to_vec();
        doc.sort_unstable();
        code.sort_unstable();
        if doc != code {
            diffs.push(format!(
                "layer {i}: ARCHITECTURE.md {doc:?}, LAYERS {code:?}"
            ));
        }
    }
    diffs
}

#[test]
fn architecture_md_lists_the_same_layers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let markdown = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let documented = documented_layers(&markdown);
    let diffs = layer_table_differences(&documented, LAYERS);
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}

#[test]
fn a_layer_table_that_differs_is_reported() {
    let table = "x\n\n  | layer | modules |\n  | --- | --- |\n  | top | `app` |\n  | rest | `b`, `a` |\n\nafter";
    let documented = documented_layers(table);
    assert_eq!(documented, [vec!["app"], vec!["b", "a"]]);
    assert!(layer_table_differences(&documented, &[&["app"], &["a", "b"]]).is_empty());
    let moved = layer_table_differences(&documented, &[&["app", "a"], &["b"]]);
    assert_eq!(moved.len(), 2, "{moved:?}");
    let fewer = layer_table_differences(&documented, &[&["app"]]);
    assert_eq!(fewer.len(), 1, "{fewer:?}");
}

/// No function in src/ is longer than this many lines (declarative tables are split into
/// named helpers): a newcomer reads a function whole.
const MAX_FN_LINES: usize = 100;

/// A line's text after its visibility (`pub`, `pub(crate)`, `pub(super)`, `pub(in path)`)
/// and qualifiers (`const`, `async`, `unsafe`, `extern "C"`, `default`).
fn after_qualifiers(line: &str) -> &str {
    let mut rest = line.trim_start();
    if let Some(r) = rest.strip_prefix("pub(") {
        rest = r.split_once(')').map_or(r, |(_, after)| after).trim_start();
    } else if let Some(r) = rest.strip_prefix("pub ") {
        rest = r.trim_start();
    }
    loop {
        let before = rest;
        for q in [
            "default ",
            "const ",
            "async ",
            "unsafe ",
            "extern \"C\" ",
            "extern ",
        ] {
            rest = rest.strip_prefix(q).unwrap_or(rest);
        }
        if rest == before {
            return rest;
        }
    }
}

/// (name, first line, length) of every `fn` with a body, whatever its visibility: from its
/// signature to the closing brace at the same indentation (rustfmt's layout).
fn functions(text: &str) -> Vec<(String, usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let Some(rest) = after_qualifiers(trimmed).strip_prefix("fn ") else {
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

/// The functions of `text` longer than `MAX_FN_LINES`: (name, line, length).
fn too_long(text: &str) -> Vec<(String, usize, usize)> {
    functions(text)
        .into_iter()
        .filter(|(_, _, len)| *len > MAX_FN_LINES)
        .collect()
}

#[test]
fn no_function_is_longer_than_a_screenful_or_two() {
    for (path, text) in sources().into_iter().filter(|(p, _)| p.starts_with("src/")) {
        if let Some((name, line, len)) = too_long(&text).into_iter().next() {
            panic!(
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

#[test]
fn functions_of_every_visibility_are_measured() {
    for vis in [
        "",
        "pub ",
        "pub(crate) ",
        "pub(super) ",
        "pub(in crate::image) ",
        "pub(super) async ",
        "pub const unsafe ",
    ] {
        let body = "    x();\n".repeat(MAX_FN_LINES);
        let planted = format!("{vis}fn long() {{\n{body}}}\n");
        assert_eq!(
            too_long(&planted),
            [("long".to_string(), 1, MAX_FN_LINES + 2)],
            "`{vis}fn` is measured"
        );
    }
}
