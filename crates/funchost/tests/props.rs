//! Property tests of the Function App reader: the repository's own `functions-host/` folders,
//! copied, with one `host.json` or `function.json` broken at a time (a value replaced by any
//! JSON, a key removed, or the file replaced by any bytes). Loading either succeeds or fails with
//! a `ConfigError` naming the broken file (or the app folder) and a reason; resolving settings
//! (any `%NAME%` values, any schedule text) and routing any method and path never panic.
//! Cases: `PROPTEST_CASES` (default 256 per property; each writes an app folder).

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use saldo_funchost::config::load_app;
use serde_json::{Value, json};

fn cases() -> u32 {
    saldo_testkit::proptest_cases(256)
}

fn app_dir(app: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../functions-host")
        .join(app)
}

/// The app's JSON files, relative to its folder.
fn files(app: &str) -> Vec<(PathBuf, Value)> {
    let dir = app_dir(app);
    let mut out = vec![(PathBuf::from("host.json"), read(&dir.join("host.json")))];
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.join("function.json").is_file() {
            let rel = PathBuf::from(p.file_name().unwrap()).join("function.json");
            out.push((rel.clone(), read(&dir.join(rel))));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn read(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::from),
        Just(json!("%SALDO_SWEEP_SCHEDULE%")),
        Just(json!("*/5 * * * * *")),
        Just(json!("{id?}")),
        Just(json!(["get", "post"])),
        Just(json!("httpTrigger")),
        Just(json!("timerTrigger")),
    ];
    leaf.prop_recursive(2, 10, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
            prop::collection::btree_map("[a-zA-Z]{1,10}", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn paths(v: &Value, at: String, out: &mut Vec<String>) {
    out.push(at.clone());
    match v {
        Value::Object(m) => m
            .iter()
            .for_each(|(k, c)| paths(c, format!("{at}/{k}"), out)),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, c)| paths(c, format!("{at}/{i}"), out)),
        _ => {}
    }
}

#[derive(Debug, Clone)]
enum Break {
    Replace(Value),
    Remove,
    Bytes(Vec<u8>),
}

fn breakage() -> impl Strategy<Value = Break> {
    prop_oneof![
        6 => any_json().prop_map(Break::Replace),
        3 => Just(Break::Remove),
        1 => prop::collection::vec(any::<u8>(), 0..40).prop_map(Break::Bytes),
    ]
}

/// Writes `app`'s files into `into`, with file `which` broken at the path `pick` selects.
fn write_broken(
    app: &str,
    into: &Path,
    which: prop::sample::Index,
    pick: prop::sample::Index,
    b: &Break,
) -> PathBuf {
    let all = files(app);
    let target = which.index(all.len());
    for (i, (rel, v)) in all.iter().enumerate() {
        let path = into.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        if i != target {
            std::fs::write(&path, serde_json::to_vec_pretty(v).unwrap()).unwrap();
            continue;
        }
        let bytes = match b {
            Break::Bytes(bytes) => bytes.clone(),
            other => {
                let mut v = v.clone();
                let mut ps = vec![];
                paths(&v, String::new(), &mut ps);
                let p = pick.get(&ps).clone();
                match other {
                    Break::Replace(with) if p.is_empty() => v = with.clone(),
                    Break::Replace(with) => *v.pointer_mut(&p).unwrap() = with.clone(),
                    _ if p.is_empty() => v = Value::Null,
                    _ => {
                        let (parent, last) = p.rsplit_once('/').unwrap();
                        match v.pointer_mut(parent).unwrap() {
                            Value::Object(m) => drop(m.remove(last)),
                            Value::Array(a) => drop(a.remove(last.parse::<usize>().unwrap())),
                            _ => unreachable!("a parent is a container"),
                        }
                    }
                }
                serde_json::to_vec(&v).unwrap()
            }
        };
        std::fs::write(&path, bytes).unwrap();
    }
    into.join(&all[target].0)
}

#[test]
fn the_repositorys_apps_load() {
    for app in ["worker", "api"] {
        let dir = tempfile::tempdir().unwrap();
        for (rel, v) in files(app) {
            let p = dir.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, serde_json::to_vec(&v).unwrap()).unwrap();
        }
        load_app(dir.path()).unwrap_or_else(|e| panic!("{app}: {e}"));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn a_broken_file_is_refused_naming_it_or_loads(
        app in prop::sample::select(vec!["worker", "api"]),
        which in any::<prop::sample::Index>(),
        pick in any::<prop::sample::Index>(),
        b in breakage(),
        setting in "\\PC{0,20}",
        method in prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "OPTIONS", "TRACE", "get"]),
        path in "(/[a-z0-9{}?%.]{0,8}){0,4}",
    ) {
        let dir = tempfile::tempdir().unwrap();
        let broken = write_broken(app, dir.path(), which, pick, &b);
        match load_app(dir.path()) {
            Err(e) => {
                let host = dir.path().join("host.json");
                prop_assert!(
                    e.file == broken || e.file == host || e.file == dir.path(),
                    "{} blamed for breaking {}", e.file.display(), broken.display()
                );
                prop_assert!(!e.reason.is_empty());
            }
            Ok(loaded) => {
                // Routing any request and resolving any setting value never panics.
                let _ = loaded.route(method, &path);
                let _ = loaded.http_examples();
                if let Ok(resolved) = loaded.resolve_settings(|_| Some(setting.clone())) {
                    let _ = resolved.route(method, &path);
                }
            }
        }
    }
}
