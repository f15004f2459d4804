//! Issue 12: the source tree in layers. Every file of `src/` is a unit
//! (`proxy/upstream.rs` is `proxy::upstream`, a `mod.rs` its folder); each
//! unit has a layer, and a unit may import (`crate::…` anywhere in its
//! code) only from its own layer or below, and never in a cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers from the bottom: each folder of `src/` is one, and so is
/// each of the few files at the top (`lib.rs`, `main.rs`, `fuzzing.rs`,
/// with the tools). A unit not listed here fails the test.
const LAYERS: &[(&str, &[&str])] = &[
    ("shared primitives", &["base"]),
    ("configuration", &["config"]),
    ("policies", &["policy"]),
    ("upstreams", &["upstream"]),
    ("shared state", &["cluster"]),
    ("runtime", &["runtime"]),
    ("certificates", &["certs"]),
    ("connections", &["conn"]),
    ("request pipeline", &["proxy"]),
    ("operations", &["ops"]),
    ("tools", &["tools", "fuzzing", "lib", "main"]),
];

/// The layer of a unit: the one of its folder (its first path segment).
fn layer_of(unit: &str) -> Option<usize> {
    let top = unit.split("::").next().unwrap_or(unit);
    LAYERS.iter().position(|(_, tops)| tops.contains(&top))
}

fn units() -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, prefix: &str, out: &mut BTreeMap<String, PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_stem().unwrap().to_str().unwrap().to_string();
            if path.is_dir() {
                walk(&path, &format!("{prefix}{name}::"), out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let unit = if name == "mod" {
                    prefix.trim_end_matches("::").to_string()
                } else {
                    format!("{prefix}{name}")
                };
                out.insert(unit, path);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        "",
        &mut out,
    );
    out
}

/// The code of a file without comments and string literals, so a path
/// named in a doc comment or a message is not an import.
fn code_of(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let line = line.split("//").next().unwrap_or("");
        let mut in_str = false;
        let mut prev = ' ';
        for c in line.chars() {
            if c == '"' && prev != '\\' {
                in_str = !in_str;
            } else if !in_str {
                out.push(c);
            }
            prev = c;
        }
        out.push('\n');
    }
    out
}

/// Every unit a file refers to: `crate::a::b` paths, the names inside
/// `crate::{…}` groups, and `super::x` from a file in a folder.
fn imports(unit: &str, text: &str, all: &BTreeMap<String, PathBuf>) -> BTreeSet<String> {
    let code = code_of(text);
    let resolve = |path: &str| -> Option<String> {
        // The path's segments up to the first that is not a plain name
        // (`Shared;`, `x(`, `{a, b}` end it after their name).
        let mut parts: Vec<&str> = Vec::new();
        for seg in path.split("::") {
            let seg = seg.trim_start();
            let end = seg
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(seg.len());
            if end == 0 {
                break;
            }
            parts.push(&seg[..end]);
            if end < seg.len() {
                break;
            }
        }
        // `crate::Shared`, `crate::Server`: the re-exports of lib.rs.
        if parts
            .first()
            .is_some_and(|p| p.starts_with(char::is_uppercase))
        {
            return Some("server".to_string());
        }
        (1..=parts.len())
            .rev()
            .map(|n| parts[..n].join("::"))
            .find(|u| all.contains_key(u))
    };
    let mut out = BTreeSet::new();
    let mut add = |path: &str| {
        if let Some(u) = resolve(path) {
            if u != unit {
                out.insert(u);
            }
        }
    };
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for item in group.split(',') {
                add(item.trim());
            }
        } else {
            add(rest);
        }
    }
    // `super::` in `a::b` is `a`; in a folder's `mod.rs` it is the crate.
    // `super::*` is a test module's glob of its own file: not an import.
    if let Some((parent, _)) = unit.rsplit_once("::") {
        for (i, _) in code.match_indices("super::") {
            let rest = &code[i + "super::".len()..];
            if rest.starts_with('*') {
                continue;
            }
            let rest = rest.strip_prefix('{').unwrap_or(rest);
            for item in rest[..rest.find(['}', ';']).unwrap_or(rest.len())].split(',') {
                add(&format!("{parent}::{}", item.trim()));
            }
        }
    }
    out
}

#[test]
fn imports_go_down_the_layers_and_never_in_a_cycle() {
    let all = units();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut problems = Vec::new();
    for (unit, path) in &all {
        let Some(own) = layer_of(unit) else {
            problems.push(format!("{unit} ({}) has no layer", path.display()));
            continue;
        };
        let deps = imports(unit, &std::fs::read_to_string(path).unwrap(), &all);
        for dep in &deps {
            let theirs = layer_of(dep).unwrap_or(usize::MAX);
            if theirs > own {
                problems.push(format!(
                    "{unit} ({}) imports {dep} ({}): upward",
                    LAYERS[own].0,
                    LAYERS.get(theirs).map_or("no layer", |l| l.0)
                ));
            }
            edges.entry(unit.clone()).or_default().insert(dep.clone());
        }
    }
    // Cycles (same-layer imports included).
    fn visit(
        u: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
        found: &mut Vec<String>,
    ) {
        state.insert(u.to_string(), 1);
        stack.push(u.to_string());
        for v in edges.get(u).into_iter().flatten() {
            match state.get(v.as_str()).copied().unwrap_or(0) {
                0 => visit(v, edges, state, stack, found),
                1 => {
                    let start = stack.iter().position(|s| s == v).unwrap();
                    found.push(format!("cycle: {} -> {v}", stack[start..].join(" -> ")));
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(u.to_string(), 2);
    }
    let mut state = BTreeMap::new();
    for u in all.keys() {
        if state.get(u.as_str()).copied().unwrap_or(0) == 0 {
            visit(u, &edges, &mut state, &mut Vec::new(), &mut problems);
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// The checker itself: paths, groups and `super::` are read, comments
/// are not, and an upward import is reported.
#[test]
fn the_layer_check_sees_an_upward_import() {
    let all = units();
    let deps = imports(
        "base::clock",
        "use crate::upstream::pool::Client;\nfn f() { crate::ops::server::x(); }\n// crate::tools::cli\n",
        &all,
    );
    assert_eq!(
        deps.into_iter().collect::<Vec<_>>(),
        ["ops::server", "upstream::pool"]
    );
    let grouped = imports(
        "policy::headers",
        "use crate::{config, certs::x};\nuse super::rate_limit::RateLimit;\n",
        &all,
    );
    assert_eq!(
        grouped.into_iter().collect::<Vec<_>>(),
        ["certs", "config", "policy::rate_limit"]
    );
    assert!(layer_of("base::clock") < layer_of("upstream::pool"));
    assert!(layer_of("conn") < layer_of("proxy::upgrade"));
}
