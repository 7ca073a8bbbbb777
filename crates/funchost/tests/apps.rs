//! The real app folders in functions-host/ parse, and route the way ARCHITECTURE.md says.

mod common;

use saldo_funchost::config::{App, AuthLevel, Match, Trigger, load_app};

fn load(name: &str) -> App {
    let dir = common::repo_root().join("functions-host").join(name);
    load_app(&dir)
        .unwrap_or_else(|e| panic!("{e}"))
        .resolve_settings(|k| {
            k.starts_with("SALDO_")
                .then(|| "*/10 * * * * *".to_string())
        })
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The function that serves `method path`, with its auth level, or None.
fn route(app: &App, method: &str, path: &str) -> Option<(String, AuthLevel)> {
    match app.route(method, path) {
        Match::Found { function, http, .. } => {
            assert!(
                http.forwarded,
                "{} must be forwarded (one httpTrigger + one http output)",
                function.name
            );
            Some((function.name.clone(), http.auth))
        }
        _ => None,
    }
}

#[test]
fn worker_app() {
    let app = load("worker");
    assert_eq!(app.executable, "saldo-worker");
    assert!(app.forwarding);
    assert_eq!(app.route_prefix, "api");
    let names: Vec<&str> = app.functions.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "eventgrid",
            "heartbeat",
            "ledger",
            "outcomes",
            "products",
            "status",
            "sweep"
        ]
    );

    let f = |name: &str| Some((name.to_string(), AuthLevel::Function));
    assert_eq!(route(&app, "POST", "/api/eventgrid"), f("eventgrid"));
    assert_eq!(route(&app, "OPTIONS", "/api/eventgrid"), f("eventgrid"));
    assert!(matches!(
        app.route("GET", "/api/eventgrid"),
        Match::MethodNotAllowed { .. }
    ));
    assert_eq!(route(&app, "GET", "/api/products"), f("products"));
    assert_eq!(route(&app, "GET", "/api/products/abc"), f("products"));
    assert_eq!(route(&app, "GET", "/api/ledger"), f("ledger"));
    assert_eq!(route(&app, "GET", "/api/ledger/tx-1"), f("ledger"));
    assert_eq!(route(&app, "GET", "/api/outcomes/tx-1"), f("outcomes"));
    assert_eq!(route(&app, "GET", "/api/outcomes"), None);
    assert_eq!(
        route(&app, "GET", "/api/status"),
        Some(("status".into(), AuthLevel::Anonymous))
    );
    assert_eq!(
        route(&app, "GET", "/api/heartbeat"),
        None,
        "timers are not HTTP routes"
    );
    assert_eq!(route(&app, "POST", "/api/products"), None);

    for (name, setting) in [
        ("heartbeat", "%SALDO_HEARTBEAT_SCHEDULE%"),
        ("sweep", "%SALDO_SWEEP_SCHEDULE%"),
    ] {
        let Trigger::Timer(t) = &app.function(name).unwrap().trigger else {
            panic!("{name} is a timer");
        };
        assert_eq!(t.schedule_text, setting);
        assert!(t.schedule.is_some());
    }
}

#[test]
fn api_app() {
    let app = load("api");
    assert_eq!(app.executable, "saldo-api");
    let names: Vec<&str> = app.functions.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "nodes",
            "openapi",
            "orders",
            "products",
            "reconcile",
            "stock",
            "transactions"
        ]
    );
    // The reconciler is a timer: no HTTP route reaches it.
    assert!(matches!(
        app.function("reconcile").unwrap().trigger,
        Trigger::Timer(_)
    ));
    assert_eq!(route(&app, "POST", "/api/reconcile"), None);
    let a = |name: &str| Some((name.to_string(), AuthLevel::Anonymous));
    assert_eq!(route(&app, "GET", "/api/products"), a("products"));
    assert_eq!(route(&app, "GET", "/api/products/7"), a("products"));
    // Setting a quantity is its own function, so that Azure never routes PUT /api/products.
    assert_eq!(route(&app, "PUT", "/api/products/7"), a("stock"));
    assert_eq!(route(&app, "PUT", "/api/products"), None);
    assert_eq!(route(&app, "POST", "/api/orders"), a("orders"));
    assert_eq!(
        route(&app, "GET", "/api/transactions/abc"),
        a("transactions")
    );
    assert_eq!(route(&app, "GET", "/api/transactions"), a("transactions"));
    assert_eq!(route(&app, "GET", "/api/nodes"), a("nodes"));
    assert_eq!(route(&app, "GET", "/api/openapi.json"), a("openapi"));
    assert!(matches!(
        app.route("DELETE", "/api/products/7"),
        Match::MethodNotAllowed { .. }
    ));
}

#[test]
fn worker_schedules_are_app_settings() {
    let dir = common::repo_root().join("functions-host/worker");
    let err = load_app(&dir)
        .unwrap()
        .resolve_settings(|_| None)
        .unwrap_err();
    assert!(err.to_string().contains("SALDO_"), "{err}");
}

#[test]
fn http_examples_route_back_to_their_function() {
    for name in ["worker", "api"] {
        let app = load(name);
        let examples = app.http_examples();
        assert!(!examples.is_empty());
        for e in &examples {
            let got = route(&app, &e.method, &e.path).map(|(f, _)| f);
            assert_eq!(got.as_deref(), Some(e.function.as_str()), "{name}: {e:?}");
        }
    }
    assert_eq!(load("worker").timer_functions(), ["heartbeat", "sweep"]);
}
