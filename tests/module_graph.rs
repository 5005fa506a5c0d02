//! No module of any workspace crate imports a module that imports it back.
//!
//! A cycle between modules (`subscriber` uses `consumer`, which uses
//! `subscriber`) means two files share state that belongs in a third; this
//! test keeps the module graph of every crate acyclic.
//!
//! The graph is read from the sources: an edge `a -> b` for every path into
//! `b` that `a` names (`crate::b::..`, `super::b::..`, `self::b::..` or a
//! child module's name), from `use` items and from paths in code alike.
//! Comments, `mod` declarations, re-exports (`pub use`, `pub(crate) use`:
//! they only give a child's items a shorter name) and `#[cfg(test)]`
//! modules are not edges.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Where a module's source lives and what it names.
struct Module {
    file: PathBuf,
    /// Targets named by this module, with the first line naming each.
    uses: BTreeMap<Vec<String>, usize>,
}

#[test]
fn module_graphs_are_acyclic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut crates = vec![
        root.join("src"),
        root.join("core/src"),
        root.join("idempotency/src"),
        root.join("outbox/src"),
        root.join("testkit/src"),
        root.join("examples/services/src"),
    ];
    for adapter in fs::read_dir(root.join("adapters")).expect("adapters/") {
        crates.push(adapter.expect("adapter dir").path().join("src"));
    }
    let mut report = Vec::new();
    let mut modules_seen = 0;
    for src in &crates {
        let modules = read_crate(src);
        modules_seen += modules.len();
        for cycle in cycles(&modules) {
            let mut lines = vec![format!("cycle in {}:", src.display())];
            for pair in cycle.windows(2) {
                let (from, to) = (&pair[0], &pair[1]);
                let module = &modules[from];
                lines.push(format!(
                    "  {} -> {}   ({}:{})",
                    name(from),
                    name(to),
                    module.file.display(),
                    module.uses[to]
                ));
            }
            report.push(lines.join("\n"));
        }
    }
    assert!(
        modules_seen > 50,
        "read only {modules_seen} modules: the walk is broken"
    );
    assert!(report.is_empty(), "{}", report.join("\n"));
}

/// The graph of its own finder is what this test reads; check the reader on
/// a small made-up crate with a known cycle, so a reader that finds no edges
/// cannot pass the test above.
#[test]
fn a_known_cycle_is_found() {
    let dir = std::env::temp_dir().join(format!("courier-module-graph-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("runtime")).unwrap();
    fs::write(
        dir.join("lib.rs"),
        "mod a;\nmod b;\nmod c;\nmod runtime;\npub use a::A;\n",
    )
    .unwrap();
    fs::write(
        dir.join("a.rs"),
        "// crate::b is only a comment\nuse crate::runtime::Run;\npub struct A;\n",
    )
    .unwrap();
    fs::write(dir.join("b.rs"), "pub struct B;\n").unwrap();
    fs::write(dir.join("c.rs"), "pub struct C(crate::a::A);\n").unwrap();
    fs::write(
        dir.join("runtime/mod.rs"),
        "mod slot;\npub use slot::Slot;\npub struct Run;\nfn f() { let _ = slot::make(); }\n#[cfg(test)]\nmod tests {\n    use crate::b::B;\n}\n",
    )
    .unwrap();
    fs::write(
        dir.join("runtime/slot.rs"),
        "use super::{Run, super::b::B};\npub struct Slot;\n",
    )
    .unwrap();
    let modules = read_crate(&dir);
    let edges = |m: &[&str]| -> Vec<String> {
        let key: Vec<String> = m.iter().map(|s| s.to_string()).collect();
        modules[&key].uses.keys().map(|k| name(k)).collect()
    };
    assert_eq!(edges(&[]), Vec::<String>::new(), "re-exports are not edges");
    assert_eq!(edges(&["a"]), vec!["runtime"]);
    assert_eq!(edges(&["b"]), Vec::<String>::new());
    assert_eq!(edges(&["c"]), vec!["a"]);
    assert_eq!(edges(&["runtime"]), vec!["runtime::slot"]);
    assert_eq!(edges(&["runtime", "slot"]), vec!["b", "runtime"]);
    let found: Vec<Vec<String>> = cycles(&modules)
        .iter()
        .map(|c| c.iter().map(|m| name(m)).collect())
        .collect();
    assert_eq!(
        found,
        vec![vec!["runtime", "runtime::slot", "runtime"]],
        "one cycle"
    );
    let _ = fs::remove_dir_all(&dir);
}

fn name(module: &[String]) -> String {
    if module.is_empty() {
        "crate".to_owned()
    } else {
        module.join("::")
    }
}

/// Every module of the crate whose root is `src/lib.rs` (or `main.rs`), by
/// path, with the modules it names.
fn read_crate(src: &Path) -> BTreeMap<Vec<String>, Module> {
    let mut files = BTreeMap::new();
    collect_files(src, src, &mut files);
    let known: BTreeSet<Vec<String>> = files.keys().cloned().collect();
    files
        .into_iter()
        .map(|(path, file)| {
            let text = fs::read_to_string(&file).expect("source file");
            let uses = named_modules(&path, &text, &known);
            (path, Module { file, uses })
        })
        .collect()
}

fn collect_files(src: &Path, dir: &Path, out: &mut BTreeMap<Vec<String>, PathBuf>) {
    for entry in fs::read_dir(dir).expect("source dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            collect_files(src, &path, out);
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let relative = path.strip_prefix(src).expect("under src");
        let mut segments: Vec<String> = relative
            .iter()
            .map(|s| s.to_string_lossy().trim_end_matches(".rs").to_owned())
            .collect();
        let last = segments.last().map(String::as_str);
        if matches!(last, Some("mod" | "lib" | "main")) {
            segments.pop();
        }
        // Binaries and benches in src/bin are crates of their own.
        if segments.first().is_some_and(|s| s == "bin") {
            continue;
        }
        out.insert(segments, path);
    }
}

/// The known modules that `text`, the source of `module`, names.
fn named_modules(
    module: &[String],
    text: &str,
    known: &BTreeSet<Vec<String>>,
) -> BTreeMap<Vec<String>, usize> {
    let mut uses = BTreeMap::new();
    for (line_no, line) in code_lines(text) {
        let trimmed = line.trim_start();
        if trimmed.starts_with("mod ")
            || trimmed.starts_with("pub mod ")
            || trimmed.starts_with("pub(crate) mod ")
            || trimmed.starts_with("pub use ")
            || trimmed.starts_with("pub(crate) use ")
            || trimmed.starts_with("pub(super) use ")
        {
            continue;
        }
        for path in paths_in(&line) {
            let Some(absolute) = resolve(module, &path, known) else {
                continue;
            };
            // The longest known module the path goes through.
            let target = (0..=absolute.len())
                .rev()
                .map(|n| absolute[..n].to_vec())
                .find(|prefix| known.contains(prefix));
            if let Some(target) = target
                && target != module
            {
                uses.entry(target).or_insert(line_no);
            }
        }
    }
    uses
}

/// Lines of code with their numbers: comments removed, `#[cfg(test)]`
/// modules skipped.
fn code_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut lines = text.lines().enumerate().peekable();
    let mut in_block_comment = false;
    while let Some((index, raw)) = lines.next() {
        let mut line = raw.to_owned();
        if in_block_comment {
            match line.find("*/") {
                Some(end) => {
                    line = line[end + 2..].to_owned();
                    in_block_comment = false;
                }
                None => continue,
            }
        }
        if let Some(start) = line.find("/*") {
            match line[start..].find("*/") {
                Some(end) => line.replace_range(start..start + end + 2, ""),
                None => {
                    line.truncate(start);
                    in_block_comment = true;
                }
            }
        }
        if let Some(start) = line.find("//") {
            line.truncate(start);
        }
        if line.trim() == "#[cfg(test)]"
            && lines
                .peek()
                .is_some_and(|(_, next)| next.trim_start().starts_with("mod "))
        {
            // Skip the test module: up to its closing brace.
            let mut depth = 0i32;
            let mut opened = false;
            for (_, body) in lines.by_ref() {
                depth += body.matches('{').count() as i32;
                opened |= depth > 0;
                depth -= body.matches('}').count() as i32;
                if opened && depth <= 0 || body.trim_end().ends_with(';') && !opened {
                    break;
                }
            }
            continue;
        }
        out.push((index + 1, line));
    }
    out
}

/// Every path in `line` with at least one `::`, as segments, with grouped
/// imports (`a::{b::C, d}`) expanded one level.
fn paths_in(line: &str) -> Vec<Vec<String>> {
    let chars: Vec<char> = line.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let starts_path = is_ident_start(chars[i])
            && (i == 0 || !(is_ident(chars[i - 1]) || chars[i - 1] == ':'))
            && !inside_string(&chars[..i]);
        if !starts_path {
            i += 1;
            continue;
        }
        let (segments, next) = read_path(&chars, i);
        i = next.max(i + 1);
        if segments.len() < 2 && !(i < chars.len() && chars[i] == '{') {
            continue;
        }
        if i + 1 < chars.len() && chars[i] == '{' {
            let end = chars[i..]
                .iter()
                .position(|&c| c == '}')
                .map_or(chars.len(), |p| i + p);
            let inner: String = chars[i + 1..end].iter().collect();
            for item in inner.split(',') {
                let mut full = segments.clone();
                full.extend(
                    item.trim()
                        .split("::")
                        .map(|s| s.trim().trim_start_matches('{').to_owned())
                        .filter(|s| !s.is_empty() && s.chars().all(is_ident)),
                );
                out.push(full);
            }
            i = end;
        } else {
            out.push(segments);
        }
    }
    out
}

/// Reads `a::b::c` from `start`; stops before a `{` that follows `::`.
fn read_path(chars: &[char], start: usize) -> (Vec<String>, usize) {
    let mut segments = Vec::new();
    let mut i = start;
    loop {
        let begin = i;
        while i < chars.len() && is_ident(chars[i]) {
            i += 1;
        }
        if i == begin {
            break;
        }
        segments.push(chars[begin..i].iter().collect());
        if i + 1 < chars.len() && chars[i] == ':' && chars[i + 1] == ':' {
            i += 2;
        } else {
            break;
        }
    }
    (segments, i)
}

fn inside_string(before: &[char]) -> bool {
    before.iter().filter(|&&c| c == '"').count() % 2 == 1
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// `path` as named in `module`, made absolute; `None` for paths outside the
/// crate (other crates, std, local types).
fn resolve(
    module: &[String],
    path: &[String],
    known: &BTreeSet<Vec<String>>,
) -> Option<Vec<String>> {
    let first = path.first()?;
    let mut base: Vec<String> = match first.as_str() {
        "crate" => Vec::new(),
        "self" => module.to_vec(),
        "super" => {
            let mut base = module.to_vec();
            let mut rest = path;
            while rest.first().is_some_and(|s| s == "super") {
                base.pop()?;
                rest = &rest[1..];
            }
            base.extend(rest.iter().cloned());
            return Some(base);
        }
        _ => {
            // A child module named without `self::`.
            let mut child = module.to_vec();
            child.push(first.clone());
            if !known.contains(&child) {
                return None;
            }
            module.to_vec()
        }
    };
    let skip = usize::from(matches!(first.as_str(), "crate" | "self"));
    base.extend(path[skip..].iter().cloned());
    Some(base)
}

/// The cycles of the graph, one per strongly connected component with more
/// than one module, each as a closed walk `[a, b, .., a]`.
fn cycles(modules: &BTreeMap<Vec<String>, Module>) -> Vec<Vec<Vec<String>>> {
    let mut found = Vec::new();
    let mut reported: BTreeSet<Vec<String>> = BTreeSet::new();
    for start in modules.keys() {
        if reported.contains(start) {
            continue;
        }
        if let Some(walk) = shortest_cycle_through(modules, start) {
            reported.extend(walk.iter().cloned());
            found.push(walk);
        }
    }
    found
}

/// The shortest walk from `start` back to itself, by breadth-first search.
fn shortest_cycle_through(
    modules: &BTreeMap<Vec<String>, Module>,
    start: &Vec<String>,
) -> Option<Vec<Vec<String>>> {
    let mut previous: BTreeMap<Vec<String>, Vec<String>> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start.clone()]);
    while let Some(at) = queue.pop_front() {
        for next in modules.get(&at).into_iter().flat_map(|m| m.uses.keys()) {
            if next == start {
                let mut walk = vec![start.clone()];
                let mut cursor = at.clone();
                while &cursor != start {
                    walk.push(cursor.clone());
                    cursor = previous[&cursor].clone();
                }
                walk.push(start.clone());
                walk.reverse();
                return Some(walk);
            }
            if !previous.contains_key(next) {
                previous.insert(next.clone(), at.clone());
                queue.push_back(next.clone());
            }
        }
    }
    None
}
