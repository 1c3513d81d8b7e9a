//! The structure `docs/ARCHITECTURE.md` draws, checked: dependencies between the workspace's
//! crates point one way (read from `cargo metadata`), and no crate's modules import each other
//! in a cycle, except a parent and its child (read from the sources with `syn`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use syn::visit::Visit;

/// What a crate may depend on among the workspace's crates (normal and build dependencies).
/// Anything else is a forbidden edge.
const ALLOWED: &[(&str, &[&str])] = &[
    ("ember-config", &[]),
    ("ember-planner", &["ember-config"]),
    ("ember-delta", &["ember-planner"]),
    ("ember-protocol", &["ember-planner"]),
    (
        "ember-executor",
        &["ember-config", "ember-planner", "ember-protocol"],
    ),
    (
        "ember-coordinator",
        &[
            "ember-config",
            "ember-planner",
            "ember-delta",
            "ember-protocol",
        ],
    ),
    (
        "ember-pgwire",
        &["ember-config", "ember-planner", "ember-coordinator"],
    ),
    (
        "ember-flight-sql",
        &[
            "ember-config",
            "ember-planner",
            "ember-protocol",
            "ember-coordinator",
        ],
    ),
    (
        "ember-server",
        &[
            "ember-config",
            "ember-planner",
            "ember-protocol",
            "ember-executor",
            "ember-coordinator",
            "ember-pgwire",
            "ember-flight-sql",
            "ember-kubernetes",
            "ember-http",
        ],
    ),
    ("ember-http", &["ember-config", "ember-coordinator"]),
    (
        "ember-kubernetes",
        &["ember-config", "ember-protocol", "ember-coordinator"],
    ),
    ("ember-sql-tests", &[]),
];

/// Outside crates some workspace crates must not use: the planner has no network; the
/// coordinator speaks no client protocol.
const FORBIDDEN_EXTERNAL: &[(&str, &[&str])] = &[
    (
        "ember-planner",
        &[
            "tonic",
            "arrow-flight",
            "pgwire",
            "hyper",
            "axum",
            "reqwest",
        ],
    ),
    (
        "ember-coordinator",
        &[
            "pgwire",
            "datafusion-pg-catalog",
            "arrow-flight",
            "kube",
            "k8s-openapi",
            "axum",
        ],
    ),
    ("ember-config", &["datafusion", "tonic", "tokio"]),
];

fn metadata() -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(workspace)
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON")
}

/// Each workspace package: its name, manifest dir, library source, and the packages it depends
/// on (normal and build dependencies).
struct Package {
    name: String,
    lib: Option<PathBuf>,
    dependencies: BTreeSet<String>,
}

fn packages(metadata: &Value) -> Vec<Package> {
    let packages = metadata["packages"].as_array().expect("packages");
    packages
        .iter()
        .map(|package| {
            let dependencies = package["dependencies"]
                .as_array()
                .expect("dependencies")
                .iter()
                .filter(|d| d["kind"].is_null() || d["kind"] == "build")
                .map(|d| d["name"].as_str().expect("a name").to_string())
                .collect();
            let lib = package["targets"]
                .as_array()
                .expect("targets")
                .iter()
                .find(|t| {
                    t["kind"]
                        .as_array()
                        .is_some_and(|k| k.iter().any(|k| k == "lib"))
                })
                .map(|t| PathBuf::from(t["src_path"].as_str().expect("a src path")));
            Package {
                name: package["name"].as_str().expect("a name").to_string(),
                lib,
                dependencies,
            }
        })
        .collect()
}

/// The forbidden edges among `packages`, as `crate -> dependency` lines.
fn forbidden_edges(packages: &[Package]) -> Vec<String> {
    let workspace: BTreeSet<&str> = packages.iter().map(|p| p.name.as_str()).collect();
    let allowed: HashMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let forbidden: HashMap<&str, &[&str]> = FORBIDDEN_EXTERNAL.iter().copied().collect();
    let mut edges = vec![];
    for package in packages {
        let Some(allowed) = allowed.get(package.name.as_str()) else {
            edges.push(format!(
                "{}: a workspace crate the architecture test does not know",
                package.name
            ));
            continue;
        };
        for dependency in &package.dependencies {
            let internal = workspace.contains(dependency.as_str());
            let refused = forbidden
                .get(package.name.as_str())
                .is_some_and(|f| f.contains(&dependency.as_str()));
            if (internal && !allowed.contains(&dependency.as_str())) || refused {
                edges.push(format!("{} -> {dependency}", package.name));
            }
        }
    }
    edges
}

#[test]
fn crate_dependencies_point_one_way() {
    let packages = packages(&metadata());
    assert!(
        packages.len() >= ALLOWED.len(),
        "cargo metadata lists {} packages",
        packages.len()
    );
    let edges = forbidden_edges(&packages);
    assert!(
        edges.is_empty(),
        "forbidden dependencies (see docs/ARCHITECTURE.md):\n{}",
        edges.join("\n")
    );
}

#[test]
fn the_dependency_check_catches_a_forbidden_edge() {
    // The check itself can fail: an executor dependency of the coordinator, a frontend
    // depending on the other, and the planner on the network are all refused.
    let mut packages = packages(&metadata());
    for package in &mut packages {
        match package.name.as_str() {
            "ember-coordinator" => {
                package.dependencies.insert("ember-executor".into());
            }
            "ember-pgwire" => {
                package.dependencies.insert("ember-flight-sql".into());
            }
            "ember-planner" => {
                package.dependencies.insert("tonic".into());
            }
            _ => {}
        }
    }
    let edges = forbidden_edges(&packages);
    for expected in [
        "ember-coordinator -> ember-executor",
        "ember-pgwire -> ember-flight-sql",
        "ember-planner -> tonic",
    ] {
        assert!(
            edges.iter().any(|e| e == expected),
            "{expected} not caught: {edges:?}"
        );
    }
}

/// A crate's modules, by path (`crate`, `crate::scheduler`, `crate::scheduler::state`), each
/// with its source file; test-only modules are left out.
fn modules(lib: &Path) -> BTreeMap<String, PathBuf> {
    let mut modules = BTreeMap::new();
    collect_modules("crate", lib, true, &mut modules);
    modules
}

fn collect_modules(path: &str, file: &Path, owns_dir: bool, out: &mut BTreeMap<String, PathBuf>) {
    out.insert(path.to_string(), file.to_path_buf());
    let source = std::fs::read_to_string(file).expect("a source file");
    let syntax = syn::parse_file(&source).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    // Children of `a.rs` live in `a/`; of `a/mod.rs` and `lib.rs` in their own directory.
    let dir = if owns_dir {
        file.parent().expect("a directory").to_path_buf()
    } else {
        file.with_extension("")
    };
    for item in syntax.items {
        let syn::Item::Mod(module) = item else {
            continue;
        };
        if module.content.is_some() || is_test_only(&module.attrs) {
            continue;
        }
        let name = module.ident.to_string();
        let child_path = format!("{path}::{name}");
        let flat = dir.join(format!("{name}.rs"));
        let nested = dir.join(&name).join("mod.rs");
        let explicit = module.attrs.iter().find_map(|a| {
            let syn::Meta::NameValue(nv) = &a.meta else {
                return None;
            };
            if !nv.path.is_ident("path") {
                return None;
            }
            match &nv.value {
                syn::Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Str(s),
                    ..
                }) => Some(dir.join(s.value())),
                _ => None,
            }
        });
        match (explicit, flat.exists(), nested.exists()) {
            (Some(file), _, _) => collect_modules(&child_path, &file, true, out),
            (None, true, _) => collect_modules(&child_path, &flat, false, out),
            (None, false, true) => collect_modules(&child_path, &nested, true, out),
            (None, false, false) => panic!("no file for module {child_path} in {}", dir.display()),
        }
    }
}

fn is_test_only(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.parse_args::<syn::Ident>()
                .is_ok_and(|ident| ident == "test")
    })
}

/// The paths a module's code names (in `use` items and anywhere else), outside inline test
/// modules, as segment lists.
#[derive(Default)]
struct Paths {
    found: Vec<Vec<String>>,
}

impl<'ast> Visit<'ast> for Paths {
    fn visit_item_mod(&mut self, module: &'ast syn::ItemMod) {
        if !is_test_only(&module.attrs) {
            syn::visit::visit_item_mod(self, module);
        }
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        let mut prefixes = vec![];
        use_paths(&item.tree, &mut vec![], &mut prefixes);
        self.found.extend(prefixes);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        self.found
            .push(path.segments.iter().map(|s| s.ident.to_string()).collect());
        syn::visit::visit_path(self, path);
    }
}

fn use_paths(tree: &syn::UseTree, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match tree {
        syn::UseTree::Path(path) => {
            prefix.push(path.ident.to_string());
            use_paths(&path.tree, prefix, out);
            prefix.pop();
        }
        syn::UseTree::Name(name) => {
            let mut path = prefix.clone();
            path.push(name.ident.to_string());
            out.push(path);
        }
        syn::UseTree::Rename(rename) => {
            let mut path = prefix.clone();
            path.push(rename.ident.to_string());
            out.push(path);
        }
        syn::UseTree::Glob(_) => out.push(prefix.clone()),
        syn::UseTree::Group(group) => {
            for tree in &group.items {
                use_paths(tree, prefix, out);
            }
        }
    }
}

fn parent(module: &str) -> Option<&str> {
    module.rsplit_once("::").map(|(parent, _)| parent)
}

/// The module a path named from `module` leads to, if it is one of the crate's (the deepest
/// module along it).
fn resolve(module: &str, path: &[String], modules: &BTreeMap<String, PathBuf>) -> Option<String> {
    let mut segments = path.iter().peekable();
    let mut current = match segments.peek()?.as_str() {
        "crate" => {
            segments.next();
            "crate".to_string()
        }
        "self" => {
            segments.next();
            module.to_string()
        }
        "super" => {
            let mut current = module.to_string();
            while segments.peek().is_some_and(|s| *s == "super") {
                segments.next();
                current = parent(&current)?.to_string();
            }
            current
        }
        // A child module named without a prefix (`use child::Item;`).
        first if modules.contains_key(&format!("{module}::{first}")) => module.to_string(),
        _ => return None,
    };
    for segment in segments {
        let next = format!("{current}::{segment}");
        if !modules.contains_key(&next) {
            break;
        }
        current = next;
    }
    Some(current)
}

/// The edge between two modules as the cycle check sees it: between the children of their
/// nearest common ancestor (so a module stands for its descendants), or none when one contains
/// the other.
fn sibling_edge(from: &str, to: &str) -> Option<(String, String)> {
    let from_parts: Vec<&str> = from.split("::").collect();
    let to_parts: Vec<&str> = to.split("::").collect();
    let common = from_parts
        .iter()
        .zip(&to_parts)
        .take_while(|(a, b)| a == b)
        .count();
    if common == from_parts.len() || common == to_parts.len() {
        return None;
    }
    Some((
        from_parts[..=common].join("::"),
        to_parts[..=common].join("::"),
    ))
}

/// Module import cycles of the crate whose library is `lib`, each as a list of modules.
fn module_cycles(lib: &Path) -> Vec<Vec<String>> {
    let modules = modules(lib);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, file) in &modules {
        let source = std::fs::read_to_string(file).expect("a source file");
        let syntax = syn::parse_file(&source).expect("parses");
        let mut paths = Paths::default();
        paths.visit_file(&syntax);
        for path in paths.found {
            if let Some(target) = resolve(module, &path, &modules)
                && let Some((from, to)) = sibling_edge(module, &target)
            {
                graph.entry(from).or_default().insert(to);
            }
        }
    }
    strongly_connected(&graph)
        .into_iter()
        .filter(|component| component.len() > 1)
        .collect()
}

/// Tarjan's strongly connected components.
fn strongly_connected(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: HashMap<&'a str, usize>,
        low: HashMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        components: Vec<Vec<String>>,
    }
    fn visit<'a>(state: &mut State<'a>, node: &'a str) {
        let n = state.index.len();
        state.index.insert(node, n);
        state.low.insert(node, n);
        state.stack.push(node);
        state.on_stack.insert(node);
        if let Some(next) = state.graph.get(node) {
            for next in next {
                let next = next.as_str();
                if !state.index.contains_key(next) {
                    visit(state, next);
                    let low = state.low[next].min(state.low[node]);
                    state.low.insert(node, low);
                } else if state.on_stack.contains(next) {
                    let low = state.index[next].min(state.low[node]);
                    state.low.insert(node, low);
                }
            }
        }
        if state.low[node] == state.index[node] {
            let mut component = vec![];
            while let Some(top) = state.stack.pop() {
                state.on_stack.remove(top);
                component.push(top.to_string());
                if top == node {
                    break;
                }
            }
            state.components.push(component);
        }
    }
    let mut state = State {
        graph,
        index: HashMap::new(),
        low: HashMap::new(),
        stack: vec![],
        on_stack: BTreeSet::new(),
        components: vec![],
    };
    for node in graph.keys() {
        if !state.index.contains_key(node.as_str()) {
            visit(&mut state, node);
        }
    }
    state.components
}

#[test]
fn no_crate_has_module_import_cycles() {
    let packages = packages(&metadata());
    let mut checked = 0;
    let mut cycles = vec![];
    for package in &packages {
        let Some(lib) = &package.lib else { continue };
        checked += 1;
        for cycle in module_cycles(lib) {
            cycles.push(format!("{}: {}", package.name, cycle.join(" <-> ")));
        }
    }
    assert!(checked >= 8, "only {checked} library crates checked");
    assert!(
        cycles.is_empty(),
        "module import cycles:\n{}",
        cycles.join("\n")
    );
}

#[test]
fn the_cycle_check_catches_a_cycle() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let write = |name: &str, text: &str| {
        std::fs::write(dir.path().join(name), text).expect("write a source file");
    };
    write("lib.rs", "mod engine;\nmod frontend;\nmod store;\n");
    write(
        "engine.rs",
        "use crate::frontend::Tag;\npub struct Engine;\n",
    );
    write("frontend.rs", "mod encode;\npub struct Tag;\n");
    std::fs::create_dir(dir.path().join("frontend")).expect("a module dir");
    write(
        "frontend/encode.rs",
        "fn f(_: crate::engine::Engine) {}\nuse super::Tag;\n",
    );
    write(
        "store.rs",
        "use crate::engine::Engine;\n#[cfg(test)]\nmod tests;\n",
    );
    let cycles = module_cycles(&dir.path().join("lib.rs"));
    assert_eq!(cycles.len(), 1, "{cycles:?}");
    let mut cycle = cycles[0].clone();
    cycle.sort();
    assert_eq!(cycle, ["crate::engine", "crate::frontend"]);
}
