//! The agent's module layers (ARCHITECTURE.md "Module layers"): no cycle
//! among its top-level modules. Read from the sources, `crate::<module>`
//! paths outside test code, so the check needs no compiler plugin.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Fails with the first cycle found, naming every module on it.
pub fn check(src: &Path) -> anyhow::Result<()> {
    let graph = graph(src)?;
    for module in graph.keys() {
        if let Some(cycle) = cycle_through(&graph, module) {
            anyhow::bail!("module cycle in {}: {}", src.display(), cycle.join(" -> "));
        }
    }
    println!("xtask: {} modules of {}, no import cycle", graph.len(), src.display());
    Ok(())
}

fn graph(src: &Path) -> anyhow::Result<Graph> {
    let mut modules = BTreeSet::new();
    for entry in fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
        let path = entry?.path();
        let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_owned();
        if (path.is_dir() || path.extension().is_some_and(|e| e == "rs")) && name != "lib" && name != "main" {
            modules.insert(name);
        }
    }
    let mut graph = Graph::new();
    for module in &modules {
        let mut uses = BTreeSet::new();
        for file in files_of(src, module) {
            let text = fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            for used in crate_paths(without_tests(&text)) {
                if used != *module && modules.contains(&used) {
                    uses.insert(used);
                }
            }
        }
        graph.insert(module.clone(), uses);
    }
    Ok(graph)
}

/// A module's files: `name.rs` and everything under `name/` except tests.
fn files_of(src: &Path, module: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let single = src.join(format!("{module}.rs"));
    if single.is_file() {
        files.push(single);
    }
    let mut dirs = vec![src.join(module)];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for path in entries.flatten().map(|e| e.path()) {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if path.is_dir() && name != "tests" {
                dirs.push(path);
            } else if name.ends_with(".rs") && name != "tests.rs" {
                files.push(path);
            }
        }
    }
    files
}

/// The text before an inline `#[cfg(test)] mod tests`.
fn without_tests(text: &str) -> &str {
    text.find("#[cfg(test)]\nmod tests").map_or(text, |at| &text[..at])
}

/// Top-level names after `crate::`, including those of `use crate::{a, b::c}`.
fn crate_paths(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = matching_brace(group);
            // Only the first segment of each top-level item of the group.
            let mut depth = 0;
            let mut item = String::new();
            for c in group[..end].chars().chain([',']) {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        names.extend(first_segment(item.trim()));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
        } else {
            names.extend(first_segment(rest));
        }
    }
    names
}

fn matching_brace(text: &str) -> usize {
    let mut depth = 1;
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
    }
    text.len()
}

fn first_segment(text: &str) -> Option<String> {
    let name: String = text.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
    (!name.is_empty() && name != "self").then_some(name)
}

/// A path from `start` back to itself, if there is one.
fn cycle_through(graph: &Graph, start: &str) -> Option<Vec<String>> {
    let mut stack = vec![(start.to_owned(), vec![start.to_owned()])];
    let mut seen = BTreeSet::new();
    while let Some((at, path)) = stack.pop() {
        for next in graph.get(&at).into_iter().flatten() {
            if next == start {
                let mut cycle = path.clone();
                cycle.push(start.to_owned());
                return Some(cycle);
            }
            if seen.insert(next.clone()) {
                let mut longer = path.clone();
                longer.push(next.clone());
                stack.push((next.clone(), longer));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_plain_and_grouped_paths() {
        let text = "use crate::{audit::Event, session::{self, Session}, tls};\nlet x = crate::mask::Masker::new();";
        assert_eq!(crate_paths(text), ["audit", "session", "tls", "mask"]);
    }

    #[test]
    fn finds_a_cycle_and_names_it() {
        let mut g = Graph::new();
        g.insert("config".into(), ["intercept".into()].into());
        g.insert("intercept".into(), ["session".into()].into());
        g.insert("session".into(), ["config".into()].into());
        g.insert("audit".into(), BTreeSet::new());
        assert_eq!(
            cycle_through(&g, "config"),
            Some(vec![
                "config".into(),
                "intercept".into(),
                "session".into(),
                "config".into()
            ])
        );
        assert_eq!(cycle_through(&g, "audit"), None);
    }

    #[test]
    fn test_code_is_not_counted() {
        let text = "use crate::audit;\n#[cfg(test)]\nmod tests {\n use crate::config;\n}";
        assert_eq!(crate_paths(without_tests(text)), ["audit"]);
    }
}
