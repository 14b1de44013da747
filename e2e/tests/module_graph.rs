//! Modules import downward only: in each crate, no module uses one that
//! (directly or through others) uses it back.
//!
//! A node is a top-level module, or the second level under a folder
//! (`discovery/cluster`, `layers/retry`: a folder's own files such as
//! `layers/retry/policy.rs` belong to it). Edges are the `crate::` and
//! `super::` paths of each file outside its tests, braces expanded, and a
//! folder's `use child::...` lines; an item a folder re-exports
//! (`pub use model::RouteTable`) counts as an edge to the child that defines
//! it. A folder and its own children may refer to each other (the parent
//! declares and re-exports them).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module paths of a crate's source files (`["discovery", "model"]`) with
/// their text, tests and comments removed; `bin/` and `tests.rs` skipped.
fn sources(root: &Path) -> Vec<(Vec<String>, String)> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("readable source dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                if !path.ends_with("bin") {
                    dirs.push(path);
                }
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path
                .strip_prefix(root)
                .expect("under root")
                .with_extension("");
            let mut module: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(
                module.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                module.pop();
            }
            if module.last().is_some_and(|m| m == "tests") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("readable source");
            out.push((module, strip(&text)));
        }
    }
    out
}

/// The text without its trailing test module and without comments.
fn strip(text: &str) -> String {
    let code = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    code.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The paths written at `text[at..]` (after `crate::` or `super::`), braces
/// expanded: `a::{b::C, d}` gives `[a, b, C]` and `[a, d]`.
fn paths_at(text: &str) -> Vec<Vec<String>> {
    fn parse(s: &[char], i: &mut usize) -> Vec<Vec<String>> {
        let mut prefix = Vec::new();
        loop {
            while *i < s.len() && s[*i].is_whitespace() {
                *i += 1;
            }
            if *i < s.len() && s[*i] == '{' {
                *i += 1;
                let mut all = Vec::new();
                loop {
                    for tail in parse(s, i) {
                        all.push(prefix.iter().cloned().chain(tail).collect());
                    }
                    while *i < s.len() && s[*i].is_whitespace() {
                        *i += 1;
                    }
                    match s.get(*i) {
                        Some(',') => *i += 1,
                        Some('}') => {
                            *i += 1;
                            break;
                        }
                        _ => break,
                    }
                    while *i < s.len() && s[*i].is_whitespace() {
                        *i += 1;
                    }
                    if s.get(*i) == Some(&'}') {
                        *i += 1;
                        break;
                    }
                }
                return all;
            }
            let start = *i;
            while *i < s.len() && is_ident(s[*i]) {
                *i += 1;
            }
            if *i == start {
                return vec![prefix];
            }
            prefix.push(s[start..*i].iter().collect());
            if s.get(*i) == Some(&':') && s.get(*i + 1) == Some(&':') {
                *i += 2;
            } else {
                return vec![prefix];
            }
        }
    }
    let chars: Vec<char> = text.chars().take(400).collect();
    parse(&chars, &mut 0)
}

struct Crate {
    root: PathBuf,
    /// (folder module, item) -> the child module that defines it.
    reexports: BTreeMap<(Vec<String>, String), String>,
}

impl Crate {
    fn is_module(&self, path: &[String]) -> bool {
        let p = path.iter().fold(self.root.clone(), |p, s| p.join(s));
        p.is_dir() || p.with_extension("rs").is_file()
    }

    /// The node a module path is part of.
    fn node(&self, module: &[String]) -> Option<String> {
        let first = module.first()?;
        if module.len() > 1 && self.root.join(first).is_dir() {
            Some(format!("{first}/{}", module[1]))
        } else {
            Some(first.clone())
        }
    }

    /// The node a written path (from the crate root) refers to.
    fn target(&self, path: &[String]) -> Option<String> {
        let mut module: Vec<String> = Vec::new();
        for segment in path {
            let mut next = module.clone();
            next.push(segment.clone());
            if self.is_module(&next) {
                module = next;
            } else {
                if let Some(child) = self.reexports.get(&(module.clone(), segment.clone())) {
                    module.push(child.clone());
                }
                break;
            }
        }
        self.node(&module)
    }
}

/// Every edge `from -> to` between nodes of the crate at `root`.
fn edges(root: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let files = sources(root);
    let mut krate = Crate {
        root: root.to_path_buf(),
        reexports: BTreeMap::new(),
    };
    for (module, text) in &files {
        for (i, _) in text.match_indices("pub use ") {
            let rest = &text[i + "pub use ".len()..];
            let rest = rest.strip_prefix("self::").unwrap_or(rest);
            for path in paths_at(rest) {
                if let (Some(child), Some(item)) = (path.first(), path.last()) {
                    let mut m = module.clone();
                    m.push(child.clone());
                    if path.len() > 1 && krate.is_module(&m) {
                        krate
                            .reexports
                            .insert((module.clone(), item.clone()), child.clone());
                    }
                }
            }
        }
    }
    let related = |a: &str, b: &str| {
        a == b || a.starts_with(&format!("{b}/")) || b.starts_with(&format!("{a}/"))
    };
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, text) in &files {
        let Some(me) = krate.node(module) else {
            continue;
        };
        let mut targets = Vec::new();
        for keyword in ["crate::", "super::"] {
            for (i, _) in text.match_indices(keyword) {
                if text[..i].chars().next_back().is_some_and(is_ident) {
                    continue;
                }
                let mut base: Vec<String> = Vec::new();
                let mut rest = &text[i + keyword.len()..];
                if keyword == "super::" {
                    base = module.clone();
                    base.pop(); // the parent of this module
                    while let Some(r) = rest.strip_prefix("super::") {
                        base.pop();
                        rest = r;
                    }
                }
                for path in paths_at(rest) {
                    targets.push(base.iter().cloned().chain(path).collect::<Vec<_>>());
                }
            }
        }
        // A folder's own `use child::...` lines.
        if root.join(module.join("/")).is_dir() || module.is_empty() {
            for (i, _) in text.match_indices("use ") {
                let rest = &text[i + 4..];
                let rest = rest.strip_prefix("self::").unwrap_or(rest);
                for path in paths_at(rest) {
                    targets.push(module.iter().cloned().chain(path).collect());
                }
            }
        }
        for target in targets {
            if let Some(to) = krate.target(&target) {
                if !related(&me, &to) {
                    graph.entry(me.clone()).or_default().insert(to);
                }
            }
        }
    }
    graph
}

/// The nodes that reach themselves again, each cycle once (Tarjan's SCCs).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Walk<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        found: Vec<Vec<String>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, v: &'a str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            for w in self.graph.get(v).into_iter().flatten() {
                if !self.index.contains_key(w.as_str()) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w.as_str()]);
                    self.low.insert(v, low);
                } else if self.stack.contains(&w.as_str()) {
                    let low = self.low[v].min(self.index[w.as_str()]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    component.push(w.to_string());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !walk.index.contains_key(v.as_str()) {
            walk.visit(v);
        }
    }
    walk.found
}

fn crate_src(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(name)
        .join("src")
}

#[test]
fn every_crate_imports_downward_only() {
    let mut report = Vec::new();
    for name in ["proxy", "control-plane", "crds", "api"] {
        let graph = edges(&crate_src(name));
        for cycle in cycles(&graph) {
            let edges: Vec<String> = cycle
                .iter()
                .flat_map(|a| {
                    graph[a]
                        .iter()
                        .filter(|b| cycle.contains(b))
                        .map(move |b| format!("{a} -> {b}"))
                })
                .collect();
            report.push(format!("{name}: {}", edges.join(", ")));
        }
    }
    assert!(report.is_empty(), "module cycles:\n{}", report.join("\n"));
}

#[test]
fn the_checker_sees_a_cycle_through_braces_and_reexports() {
    let dir = std::env::temp_dir().join(format!("trellis-graph-{}", std::process::id()));
    let file = |path: &str, text: &str| {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("dir");
        std::fs::write(p, text).expect("write");
    };
    file("lib.rs", "pub mod a;\npub mod b;\n");
    file("a/mod.rs", "mod inner;\npub use inner::Thing;\n");
    file(
        "a/inner.rs",
        "use crate::b::{x::Other, Y};\npub struct Thing;\n",
    );
    file("b/mod.rs", "pub mod x;\npub struct Y;\n");
    file(
        "b/x.rs",
        "// crate::a::Thing in a comment is no edge\npub struct Other(crate::a::Thing);\n",
    );
    let graph = edges(&dir);
    let found = cycles(&graph);
    std::fs::remove_dir_all(&dir).expect("cleanup");
    assert_eq!(
        found,
        vec![vec!["a/inner".to_string(), "b/x".to_string()]],
        "{graph:?}"
    );
}
