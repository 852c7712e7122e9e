//! The source tree's layering: no two top-level modules of the library import each other,
//! directly or through others, and neither do the command line's files
//! (docs/architecture.md, "Rules that keep it so").

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out
}

/// The source without comments and without its unit tests (which may reach anywhere).
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
    let lines = text.lines().filter(|l| !l.trim_start().starts_with("//"));
    lines.collect::<Vec<_>>().join("\n")
}

/// The names after `crate::` (and inside `use crate::{...}`) that are among `modules`.
fn uses(code: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        let names: Vec<&str> = match rest.strip_prefix('{') {
            Some(group) => group
                .split('}')
                .next()
                .unwrap_or("")
                .split([',', ' ', '\n'])
                .collect(),
            None => vec![rest],
        };
        for n in names {
            let name: String = n
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            // The crate's error is the model layer's, re-exported at the root.
            let name = if name == "Error" || name == "Result" {
                "clip".to_string()
            } else {
                name
            };
            if modules.contains(&name) {
                out.insert(name);
            }
        }
    }
    out
}

/// A cycle of the graph, if there is one (depth-first search).
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == n) {
            return Some(path[at..].iter().cloned().chain([n.to_string()]).collect());
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for next in graph.get(n).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

/// The graph of `dir`'s top-level modules (files and folders), `skip` left out.
fn module_graph(dir: &Path, skip: &[&str]) -> BTreeMap<String, BTreeSet<String>> {
    let mut files: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        let name = p.file_stem().unwrap().to_string_lossy().into_owned();
        if skip.contains(&name.as_str()) {
            continue;
        }
        let sources = if p.is_dir() { rust_files(&p) } else { vec![p] };
        files.entry(name).or_default().extend(sources);
    }
    let modules: BTreeSet<String> = files.keys().cloned().collect();
    let graph = files.iter().map(|(m, paths)| {
        let mut deps: BTreeSet<String> = paths
            .iter()
            .flat_map(|p| uses(&code(p), &modules))
            .collect();
        deps.remove(m);
        (m.clone(), deps)
    });
    graph.collect()
}

#[test]
fn library_modules_import_one_way() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let graph = module_graph(&root.join("src"), &["bin", "lib"]);
    assert!(graph.len() > 10, "read the source tree: {graph:?}");
    assert!(
        graph["runner"].contains("methods"),
        "the reader sees imports: {graph:?}"
    );
    assert_eq!(cycle(&graph), None, "an import cycle among src/'s modules");
}

#[test]
fn command_line_files_import_one_way() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let graph = module_graph(&root.join("src/bin/clip-adapter"), &["main"]);
    assert!(
        graph["sweep"].contains("methods"),
        "the reader sees imports: {graph:?}"
    );
    assert_eq!(
        cycle(&graph),
        None,
        "an import cycle among the command line's files"
    );
}

#[test]
fn a_cycle_is_found() {
    let g: BTreeMap<String, BTreeSet<String>> = [("a", "b"), ("b", "c"), ("c", "a"), ("d", "a")]
        .iter()
        .map(|(x, y)| (x.to_string(), BTreeSet::from([y.to_string()])))
        .collect();
    assert_eq!(cycle(&g).map(|c| c.len()), Some(4));
}
