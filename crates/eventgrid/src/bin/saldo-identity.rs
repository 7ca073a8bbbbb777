//! `saldo-identity`: a local stand-in for the managed-identity endpoint that App Service and
//! Azure Functions give every app with an identity (`IDENTITY_ENDPOINT`, `IDENTITY_HEADER`).
//!
//! Protocol (learn.microsoft.com/azure/app-service/overview-managed-identity, "REST endpoint
//! reference"): `GET {IDENTITY_ENDPOINT}?resource=<audience>&api-version=2019-08-01` with the
//! header `X-IDENTITY-HEADER: {IDENTITY_HEADER}`; the answer is
//! `{"access_token","expires_on","resource","token_type":"Bearer","client_id"}`, `expires_on` in
//! seconds since the epoch as a string. The optional `client_id` / `principal_id` / `mi_res_id`
//! select a user-assigned identity; this stand-in has one identity and refuses any other.
//!
//! Tokens are JWTs signed with a key generated at first start (`--key-file`, mode 0600, never
//! committed); `--public-key-file` is written for the emulator (`--entra-public-key-file`).

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use clap::Parser;
use saldo_eventgrid::entra::{Claims, DATA_SENDER_ROLE, Signer};
use serde_json::json;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Local managed-identity endpoint (IDENTITY_ENDPOINT) stand-in"
)]
struct Args {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// 0 picks a free port; the `listening on` line tells which.
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// The secret callers must send as `X-IDENTITY-HEADER` (the app's `IDENTITY_HEADER`).
    #[arg(long, env = "SALDO_IDENTITY_HEADER", hide_env_values = true)]
    header: String,
    /// The signing key (generated here at first start).
    #[arg(long)]
    key_file: PathBuf,
    /// Where to write the public key the emulator verifies tokens with.
    #[arg(long)]
    public_key_file: PathBuf,
    /// Roles the identity holds (comma separated), carried in the token's `roles` claim.
    #[arg(long, default_value = DATA_SENDER_ROLE, value_delimiter = ',')]
    roles: Vec<String>,
    /// The identity's object (principal) id.
    #[arg(long, default_value = "7f3c2a5e-0000-4000-8000-5a1d0c0ffee0")]
    principal_id: String,
    /// The identity's client (application) id.
    #[arg(long, default_value = "5a1d0000-0000-4000-8000-c11e47000001")]
    client_id: String,
    /// Token lifetime in seconds (Entra's managed-identity tokens live about 24 h).
    #[arg(long, default_value_t = 86_400)]
    lifetime_secs: i64,
}

struct Identity {
    args: Args,
    signer: Signer,
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": code, "error_description": message})),
    )
        .into_response()
}

async fn token(
    State(id): State<Arc<Identity>>,
    headers: HeaderMap,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let given = headers
        .get("x-identity-header")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if given != id.args.header {
        return error(
            StatusCode::UNAUTHORIZED,
            "invalid_request",
            "X-IDENTITY-HEADER is missing or does not match IDENTITY_HEADER",
        );
    }
    let Some(resource) = q.get("resource").filter(|r| !r.is_empty()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the resource parameter is required",
        );
    };
    if q.get("api-version").is_none_or(|v| v.is_empty()) {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the api-version parameter is required",
        );
    }
    for (name, mine) in [
        ("client_id", &id.args.client_id),
        ("principal_id", &id.args.principal_id),
    ] {
        if let Some(v) = q.get(name)
            && !v.eq_ignore_ascii_case(mine)
        {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                &format!("no identity with {name} {v} is assigned to this app"),
            );
        }
    }
    if q.contains_key("mi_res_id") {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "this app has no user-assigned identity",
        );
    }
    // The audience is the resource asked for, with or without a trailing slash, as Entra does.
    let aud = resource.trim_end_matches('/');
    let now = chrono::Utc::now().timestamp();
    let roles: Vec<&str> = id.args.roles.iter().map(String::as_str).collect();
    let claims = Claims::new(
        aud,
        &id.args.principal_id,
        &roles,
        now,
        id.args.lifetime_secs,
    );
    let jwt = id.signer.mint(&claims);
    tracing::info!(resource = %resource, "token issued");
    axum::Json(json!({
        "access_token": jwt,
        "expires_on": claims.exp.to_string(),
        "resource": resource,
        "token_type": "Bearer",
        "client_id": id.args.client_id,
    }))
    .into_response()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _telemetry = saldo_telemetry::init("saldo-identity", "local");
    anyhow::ensure!(!args.header.is_empty(), "--header must not be empty");
    let signer = Signer::load_or_create(&args.key_file)?;
    std::fs::write(&args.public_key_file, signer.public_key())?;
    let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port)).await?;
    let addr = listener.local_addr()?;
    let host = args.host.clone();
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/msi/token", get(token))
        .with_state(Arc::new(Identity { args, signer }));
    println!("listening on http://{host}:{}", addr.port());
    use std::io::Write;
    std::io::stdout().flush()?;
    axum::serve(listener, app)
        .with_graceful_shutdown(saldo_process::terminated())
        .await?;
    Ok(())
}
