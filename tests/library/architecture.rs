//! The layering the README describes, enforced: each library module imports
//! only from layers below it, and no function outside tests grows past
//! [`MAX_FN_LINES`] without a comment saying why. And the clone is the
//! whole project: no script or test reads files beside it.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Each top-level library module and its layer, bottom (0) to top. A module
/// may use modules of a strictly lower layer, and itself.
const LAYERS: &[(&str, u8)] = &[
    ("error", 0),
    ("memory", 0),
    ("metrics", 0),
    ("location", 1),
    ("ops", 1),
    ("config", 2),
    ("aws", 3),
    ("model", 4),
    ("decode", 5),
    ("preprocess", 5),
    ("classify", 6),
    ("bench", 7),
    ("inputs", 7),
    ("app", 8),
    ("http", 9),
    ("jobs", 9),
    ("lambda", 10),
    ("serve", 10),
    ("fuzzing", 11),
];

/// Longest function body, in lines, that needs no justification.
const MAX_FN_LINES: usize = 80;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The library's files by top-level module (`src/http/oip.rs` is `http`);
/// the binary (`main.rs`, `cli/`) and `lib.rs` are not library modules.
fn library_files() -> Vec<(String, PathBuf)> {
    let src = common::root().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    files
        .into_iter()
        .filter_map(|f| {
            let rel = f.strip_prefix(&src).unwrap().to_path_buf();
            let first = rel.components().next()?.as_os_str().to_str()?.to_string();
            let module = first.trim_end_matches(".rs").to_string();
            (!["main", "lib", "cli"].contains(&module.as_str())).then_some((module, f))
        })
        .collect()
}

/// Code lines before the file's `#[cfg(test)]`, comments dropped; none for
/// a test-only file (`#![cfg(test)]`).
fn code_lines(file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap();
    if text.lines().any(|l| l.trim() == "#![cfg(test)]") {
        return Vec::new();
    }
    text.lines()
        .take_while(|l| l.trim() != "#[cfg(test)]")
        .map(|l| l.split("//").next().unwrap_or("").to_string())
        .collect()
}

/// Every `crate::NAME` a line mentions.
fn crate_paths(line: &str) -> Vec<String> {
    line.match_indices("crate::")
        .filter(|(i, _)| !line[..*i].ends_with(|c: char| c.is_alphanumeric() || c == '_'))
        .map(|(i, m)| {
            line[i + m.len()..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

#[test]
fn every_library_module_has_a_layer() {
    for (module, file) in library_files() {
        assert!(
            LAYERS.iter().any(|(m, _)| *m == module),
            "{} is in module {module}, which has no layer in tests/library/architecture.rs",
            file.display()
        );
    }
}

#[test]
fn modules_import_only_from_layers_below() {
    let layer: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    let mut violations = Vec::new();
    for (module, file) in library_files() {
        let Some(&own) = layer.get(module.as_str()) else {
            continue;
        };
        for (n, line) in code_lines(&file).iter().enumerate() {
            assert!(
                !line.contains("onnx_lambda::"),
                "{}:{}: the library names itself by crate name",
                file.display(),
                n + 1
            );
            for target in crate_paths(line) {
                match layer.get(target.as_str()) {
                    Some(&l) if target == module || l < own => {}
                    _ => violations.push(format!(
                        "{}:{}: {module} (layer {own}) uses crate::{target} (layer {:?})",
                        file.display(),
                        n + 1,
                        layer.get(target.as_str())
                    )),
                }
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

/// The checker itself catches what it should.
#[test]
fn the_import_checker_sees_paths_in_use_lines_and_expressions() {
    assert_eq!(crate_paths("use crate::app::App;"), ["app"]);
    assert_eq!(
        crate_paths("let x = crate::jobs::f(crate::http::g());"),
        ["jobs", "http"]
    );
    assert!(crate_paths("use onnx_crate::x;").is_empty());
}

/// Whether a (trimmed) line starts a function: any visibility (`pub`,
/// `pub(crate)`, `pub(in path)`), then any of `const`, `async`, `unsafe`,
/// `extern "ABI"`, then `fn `.
fn is_fn_signature(line: &str) -> bool {
    let mut rest = line;
    if let Some(r) = rest.strip_prefix("pub") {
        rest = match r.strip_prefix('(') {
            Some(inner) => match inner.split_once(')') {
                Some((_, after)) => after,
                None => return false,
            },
            None => r,
        }
        .trim_start();
    }
    loop {
        let before = rest;
        for q in ["const ", "async ", "unsafe "] {
            rest = rest.strip_prefix(q).unwrap_or(rest);
        }
        if let Some(r) = rest.strip_prefix("extern ") {
            rest = r.trim_start();
            if rest.starts_with('"') {
                rest = rest[1..]
                    .split_once('"')
                    .map_or("", |(_, a)| a)
                    .trim_start();
            }
        }
        if rest == before {
            break;
        }
    }
    rest.starts_with("fn ")
}

#[test]
fn the_function_finder_sees_every_kind_of_signature() {
    for f in [
        "fn a() {",
        "pub fn a() {",
        "pub(crate) async fn a() {",
        "pub(in crate::ops) unsafe fn a() {",
        "pub(super) const fn a() {",
        "const unsafe fn a() {",
        "unsafe extern \"C\" fn a() {",
        "pub async unsafe fn a() {",
    ] {
        assert!(is_fn_signature(f), "{f}");
    }
    for not in [
        "let fnord = 1;",
        "pub struct Fn;",
        "// fn a()",
        "impl Fn for X {",
    ] {
        assert!(!is_fn_signature(not), "{not}");
    }
}

/// Modules name their grandparents' items through `crate::` paths, not
/// `super::super::`: a move then breaks loudly at the import.
#[test]
fn no_super_super_imports() {
    let mut files = Vec::new();
    rust_files(&common::root().join("src"), &mut files);
    let mut found = Vec::new();
    for file in files {
        for (n, line) in std::fs::read_to_string(&file).unwrap().lines().enumerate() {
            if line
                .split("//")
                .next()
                .unwrap_or("")
                .contains("super::super::")
            {
                found.push(format!("{}:{}", file.display(), n + 1));
            }
        }
    }
    assert!(found.is_empty(), "super::super:: in\n{}", found.join("\n"));
}

/// Function bodies over `MAX_FN_LINES` lines, unless the line before the
/// signature (or a doc line) says why with "long because".
#[test]
fn functions_stay_short_or_say_why() {
    let mut files = Vec::new();
    rust_files(&common::root().join("src"), &mut files);
    let mut long = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let lines: Vec<&str> = text
            .lines()
            .take_while(|l| l.trim() != "#[cfg(test)]")
            .collect();
        for (i, line) in lines.iter().enumerate() {
            let t = line.trim_start();
            if !is_fn_signature(t) {
                continue;
            }
            let indent = line.len() - t.len();
            let end = lines[i..]
                .iter()
                .position(|l| {
                    l.len() > indent && l.trim() == "}" && l.len() - l.trim_start().len() == indent
                })
                .map(|p| i + p);
            let Some(end) = end else { continue };
            let justified = lines[..i]
                .iter()
                .rev()
                .take_while(|l| {
                    l.trim_start().starts_with("///") || l.trim_start().starts_with("#[")
                })
                .any(|l| l.contains("long because"));
            if end - i > MAX_FN_LINES && !justified {
                long.push(format!("{}:{}: {} lines", file.display(), i + 1, end - i));
            }
        }
    }
    assert!(
        long.is_empty(),
        "functions over {MAX_FN_LINES} lines:\n{}",
        long.join("\n")
    );
}

/// A clone builds and tests with nothing beside it: CI runs in a clean
/// clone wherever it is put. `scripts/arm64.sh` read its photos from
/// `../shared/images` and failed, without a message, in a clone elsewhere.
#[test]
fn nothing_reads_beside_the_clone() {
    fn text_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy();
            if path.is_dir() {
                if !["target", "data", ".venv", ".venv-bench"].contains(&&*name) {
                    text_files(&path, out);
                }
            } else if ["rs", "sh", "py", "toml", "yaml", "lua", "run"]
                .iter()
                .any(|e| name.ends_with(&format!(".{e}")) || name == *e)
            {
                out.push(path);
            }
        }
    }
    let root = common::root();
    let mut files = Vec::new();
    for dir in [
        "scripts", "tests", "src", "benches", "examples", "fuzz", ".ci",
    ] {
        text_files(&root.join(dir), &mut files);
    }
    assert!(files.iter().any(|f| f.ends_with("scripts/arm64.sh")));
    assert!(files.iter().any(|f| f.ends_with(".ci/run")));
    let this = Path::new(file!()).file_name().unwrap();
    let outside: Vec<String> = files
        .iter()
        .filter(|f| f.file_name() != Some(this))
        .filter(|f| std::fs::read_to_string(f).is_ok_and(|t| t.contains("../shared")))
        .map(|f| f.display().to_string())
        .collect();
    assert!(
        outside.is_empty(),
        "files reading beside the clone: {outside:?}"
    );
}
