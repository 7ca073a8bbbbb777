//! The regions' Event Grid subscriptions (as Azure deploys them) and what their hosts report
//! of their instances.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::json;

use super::{DEADLETTER_CONTAINER, Stack};
use crate::manifest::NodeEntry;

/// The `properties` of a region's event subscription, as `infra/modules/event-subscriptions.bicep`
/// deploys it (the same batching, filter, retry policy and dead-lettering with the topic's
/// identity; `tests/tests/infra_subscriptions.rs` checks that the two agree).
pub fn worker_subscription(endpoint_url: &str) -> serde_json::Value {
    json!({
        "eventDeliverySchema": "EventGridSchema",
        "destination": {"endpointType": "WebHook", "properties": {
            "endpointUrl": endpoint_url,
            "maxEventsPerBatch": 10,
            "preferredBatchSizeInKilobytes": 64
        }},
        "filter": {"includedEventTypes": [
            saldo_core::events::RECORD_UPDATED,
            saldo_core::events::TRANSACTION_COMPLETED,
            saldo_core::events::NODE_HEARTBEAT
        ]},
        "retryPolicy": {"maxDeliveryAttempts": 30, "eventTimeToLiveInMinutes": 1440},
        "deadLetterWithResourceIdentity": {
            "identity": {"type": "SystemAssigned"},
            "deadLetterDestination": {"endpointType": "StorageBlob", "properties": {
                "resourceId": "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/saldo-local/providers/Microsoft.Storage/storageAccounts/saldolocal",
                "blobContainerName": DEADLETTER_CONTAINER
            }}
        }
    })
}

impl Stack {
    /// One Event Grid subscription per region, to that region's webhook. Creating it runs the
    /// validation handshake against the worker, through its host, so a broken webhook fails here.
    pub(super) async fn subscribe_workers(&self) -> Result<()> {
        let topic = self.manifest.topic.as_ref().expect("checked by caller");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(40))
            .build()?;
        for node in &self.manifest.nodes {
            let name = format!("worker-{}", node.region);
            let body = json!({"properties": worker_subscription(&format!(
                "{}/api/eventgrid?code={}",
                node.url, node.function_key
            ))});
            let resp = http
                .put(format!("{}/subscriptions/{name}", topic.management))
                .header("aeg-sas-key", &topic.key)
                .json(&body)
                .send()
                .await
                .with_context(|| format!("creating subscription {name}"))?;
            if !resp.status().is_success() {
                let status = resp.status();
                bail!(
                    "creating subscription {name} failed ({status}): {}",
                    resp.text().await.unwrap_or_default()
                );
            }
        }
        Ok(())
    }
}

/// The handler processes a host reports (empty if it cannot be asked; bounded by a timeout).
pub async fn host_instances(url: &str, master_key: &str) -> Vec<crate::manifest::InstanceEntry> {
    let Ok(client) = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
    else {
        return Vec::new();
    };
    let status = client
        .get(format!("{url}/admin/host/status"))
        .header("x-functions-key", master_key)
        .send()
        .await;
    match status {
        Ok(r) => match r.json::<serde_json::Value>().await {
            Ok(v) => crate::manifest::InstanceEntry::from_host_status(&v),
            Err(_) => Vec::new(),
        },
        Err(_) => Vec::new(),
    }
}

/// Base URLs of every handler process of a region (each instance answers `/api/status` with
/// its own counters, which live in its memory): the instances' own loopback ports as the host
/// reports them now, or the region's URL if the host reports none.
pub async fn instance_urls(node: &NodeEntry) -> Vec<String> {
    let ports: Vec<u16> = host_instances(&node.url, &node.master_key)
        .await
        .into_iter()
        .filter_map(|i| i.port)
        .collect();
    if ports.is_empty() {
        return vec![node.url.clone()];
    }
    // Handlers listen on 127.0.0.1 inside their host (as an instance's worker process does).
    ports
        .into_iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect()
}
