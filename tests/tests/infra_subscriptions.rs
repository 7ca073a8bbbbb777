//! The event subscriptions `infra/` deploys and the ones `saldo up` creates are the same, and
//! the emulator accepts the deployed body as it is (issue 14, SDK and wire fidelity).
//!
//! Reads `infra/modules/event-subscriptions.bicep` (its `properties` block, with the values
//! `infra/main.parameters.json` and `infra/main.bicep` give its parameters) into JSON with a
//! small converter for the object-literal subset of Bicep the module uses.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use saldo_tests::{bin_dir, repo};
use serde_json::{Value, json};

/// The value a parameter of the subscriptions module gets in a deployment.
fn param(name: &str) -> Value {
    let params: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("infra/main.parameters.json")).unwrap(),
    )
    .unwrap();
    if let Some(v) = params["parameters"][name].get("value") {
        return v.clone();
    }
    let main = std::fs::read_to_string(repo().join("infra/main.bicep")).unwrap();
    for line in main.lines() {
        let l = line.trim();
        let rest = l
            .strip_prefix(&format!("param {name} "))
            .or_else(|| l.strip_prefix(&format!("var {name} ")));
        if let Some(rest) = rest
            && let Some((_, v)) = rest.split_once('=')
        {
            return scalar(v);
        }
    }
    // Resource ids and secrets computed at deployment time: a placeholder of the right kind.
    json!(format!(
        "/subscriptions/0/resourceGroups/r/providers/x/{name}"
    ))
}

fn scalar(v: &str) -> Value {
    let v = v.trim();
    if let Some(s) = v.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')) {
        // Interpolations (${...}) become a fixed text: only their shape matters here.
        let mut out = String::new();
        let mut rest = s;
        while let Some(i) = rest.find("${") {
            out.push_str(&rest[..i]);
            out.push('x');
            rest = rest[i..].split_once('}').map(|(_, r)| r).unwrap_or("");
        }
        out.push_str(rest);
        return json!(out);
    }
    if let Ok(n) = v.parse::<i64>() {
        return json!(n);
    }
    match v {
        "true" => json!(true),
        "false" => json!(false),
        ident => param(ident),
    }
}

/// The `properties` of the subscriptions resource in event-subscriptions.bicep, as JSON.
fn infra_properties() -> Value {
    let text =
        std::fs::read_to_string(repo().join("infra/modules/event-subscriptions.bicep")).unwrap();
    let start = text
        .find("resource subscriptions 'Microsoft.EventGrid/topics/eventSubscriptions")
        .expect("the subscriptions resource");
    let mut lines = text[start..]
        .lines()
        .skip_while(|l| l.trim() != "properties: {");
    lines.next().expect("a properties block");
    let mut json_text = String::from("{\n");
    let mut depth = 1;
    for line in lines {
        let l = line.trim();
        if l.is_empty() || l.starts_with("//") {
            continue;
        }
        if l == "}" || l == "]" {
            depth -= 1;
            if depth == 0 {
                break;
            }
            json_text.push_str(l);
            json_text.push_str(",\n");
            continue;
        }
        let (key, value) = match l.split_once(':') {
            Some((k, v)) if !l.starts_with('\'') => (Some(k.trim()), v.trim()),
            _ => (None, l),
        };
        if let Some(k) = key {
            json_text.push_str(&format!("{:?}: ", k));
        }
        if value == "{" || value == "[" {
            depth += 1;
            json_text.push_str(value);
            json_text.push('\n');
        } else {
            json_text.push_str(&scalar(value).to_string());
            json_text.push_str(",\n");
        }
    }
    json_text.push('}');
    // Drop the commas before a closing bracket.
    let mut clean = String::new();
    let chars: Vec<char> = json_text.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        if *c == ',' {
            let next = chars[i + 1..].iter().find(|c| !c.is_whitespace());
            if matches!(next, Some('}') | Some(']')) {
                continue;
            }
        }
        clean.push(*c);
    }
    serde_json::from_str(&clean).unwrap_or_else(|e| panic!("{e}: {clean}"))
}

#[test]
fn local_subscriptions_have_the_settings_infra_deploys() {
    let infra = infra_properties();
    let local = saldo_stack::stack::worker_subscription("http://127.0.0.1:1/api/eventgrid?code=k");
    let wh = |v: &Value, k: &str| v["destination"]["properties"][k].clone();
    for k in ["maxEventsPerBatch", "preferredBatchSizeInKilobytes"] {
        assert_eq!(wh(&local, k), wh(&infra, k), "destination.properties.{k}");
    }
    assert_eq!(
        local["destination"]["endpointType"],
        infra["destination"]["endpointType"]
    );
    for k in ["filter", "retryPolicy", "eventDeliverySchema"] {
        assert_eq!(local[k], infra[k], "{k}");
    }
    let dl = |v: &Value| v["deadLetterWithResourceIdentity"].clone();
    assert_eq!(dl(&local)["identity"], dl(&infra)["identity"]);
    let container =
        |v: &Value| dl(v)["deadLetterDestination"]["properties"]["blobContainerName"].clone();
    assert_eq!(container(&local), container(&infra));
    // Nothing else is set on one side only.
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&local), keys(&infra));
}

#[test]
fn the_emulator_accepts_the_deployed_body_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let mut infra = infra_properties();
    infra["destination"]["properties"]["endpointUrl"] =
        json!("http://127.0.0.1:9/api/eventgrid?code=k");
    let file = dir.path().join("subs.json");
    std::fs::write(
        &file,
        json!([{"name": "worker-infra", "properties": infra}]).to_string(),
    )
    .unwrap();
    // The subscriptions file goes through the same validation as PUT (without the handshake).
    let mut child = Command::new(bin_dir().join("saldo-eventgrid"))
        .args(["--port", "0", "--key", "dGVzdC1rZXk="])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--deadletter-dir")
        .arg(dir.path().join("dl"))
        .arg("--subscriptions")
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let started = line.starts_with("listening on");
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    assert!(
        started,
        "the emulator refused infra's subscription body: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let saved: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("data/subscriptions.json")).unwrap(),
    )
    .unwrap();
    let props = &saved["value"][0]["properties"];
    assert_eq!(
        props["deadLetterWithResourceIdentity"]["deadLetterDestination"]["properties"]["blobContainerName"],
        "deadletter",
        "dead-lettering with the topic's identity is honoured: {props}"
    );
}
