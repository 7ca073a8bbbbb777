//! Event subscriptions, shaped like the ARM resource `Microsoft.EventGrid/eventSubscriptions`:
//! parsing and validation of the `properties`, the filter, and the ARM body we answer with.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::schema::InputSchema;

/// Azure allows at most 500 subscriptions per topic.
pub const MAX_SUBSCRIPTIONS: usize = 500;

/// Every field Azure defines is either honoured, or accepted as the read-only part of our own
/// answer (so a GET can be PUT back), or refused with a 400 that names it: nothing is silently
/// ignored (`deny_unknown_fields` refuses anything else, naming the field).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Properties {
    pub destination: Destination,
    #[serde(default)]
    pub filter: Filter,
    #[serde(default)]
    pub retry_policy: RetryPolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_destination: Option<DeadLetterDestination>,
    /// Dead-lettering with the topic's managed identity (what `infra/` deploys). Honoured: the
    /// destination is used; the identity is what Azure writes the blob with (locally, files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_with_resource_identity: Option<DeadLetterWithIdentity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_delivery_schema: Option<InputSchema>,
    /// Honoured: kept and returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    /// Read-only in ARM (our answers carry them): accepted and ignored.
    #[serde(default, skip_serializing)]
    pub topic: Option<Value>,
    #[serde(default, skip_serializing)]
    pub provisioning_state: Option<Value>,
    /// Known to Azure, not implemented here: refused by [`Subscription::new`] with a 400.
    #[serde(default, skip_serializing)]
    pub delivery_with_resource_identity: Option<Value>,
    #[serde(default, skip_serializing)]
    pub expiration_time_utc: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeadLetterWithIdentity {
    pub identity: ResourceIdentity,
    pub dead_letter_destination: DeadLetterDestination,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceIdentity {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_assigned_identity: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Destination {
    pub endpoint_type: String,
    pub properties: WebHook,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebHook {
    pub endpoint_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_events_per_batch: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_batch_size_in_kilobytes: Option<u32>,
    /// Read-only in ARM: accepted and ignored.
    #[serde(default, skip_serializing)]
    pub endpoint_base_url: Option<Value>,
    /// Known to Azure, not implemented here: refused with a 400.
    #[serde(default, skip_serializing)]
    pub delivery_attribute_mappings: Option<Value>,
    #[serde(default, skip_serializing)]
    pub azure_active_directory_tenant_id: Option<Value>,
    #[serde(default, skip_serializing)]
    pub azure_active_directory_application_id_or_uri: Option<Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Filter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub included_event_types: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_begins_with: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_ends_with: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_subject_case_sensitive: Option<bool>,
    /// Not implemented by the emulator: a subscription that uses them is refused rather than
    /// silently receiving events it asked not to get.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advanced_filters: Option<Vec<Value>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_delivery_attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_time_to_live_in_minutes: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeadLetterDestination {
    pub endpoint_type: String,
    pub properties: BlobContainer,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BlobContainer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_id: Option<String>,
    pub blob_container_name: String,
}

/// A validated subscription: everything the delivery engine needs, in usable units.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    pub name: String,
    pub properties: Properties,
    pub endpoint_url: String,
    pub schema: InputSchema,
    pub max_events_per_batch: usize,
    pub preferred_batch_bytes: usize,
    pub max_attempts: u32,
    pub ttl: Duration,
    /// Blob container name under the dead-letter directory; `None`: failed events are dropped.
    pub dead_letter_container: Option<String>,
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("InvalidRequest", message)
}

/// ARM names for event subscriptions: 3..64 characters, letters, digits and hyphens.
pub fn check_name(name: &str) -> Result<(), ApiError> {
    if !(3..=64).contains(&name.len())
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(bad(format!(
            "subscription name {name:?} must be 3 to 64 characters of letters, digits and '-'"
        )));
    }
    Ok(())
}

fn in_range(what: &str, v: Option<u32>, lo: u32, hi: u32, default: u32) -> Result<u32, ApiError> {
    let v = v.unwrap_or(default);
    if !(lo..=hi).contains(&v) {
        return Err(bad(format!("{what} must be {lo}..{hi}, got {v}")));
    }
    Ok(v)
}

/// The webhook's URL: a WebHook destination with an http(s) URL.
fn webhook_url(dest: &Destination) -> Result<reqwest::Url, ApiError> {
    if !dest.endpoint_type.eq_ignore_ascii_case("WebHook") {
        return Err(bad(format!(
            "endpointType {:?} is not supported; use WebHook",
            dest.endpoint_type
        )));
    }
    let url = reqwest::Url::parse(&dest.properties.endpoint_url).map_err(|e| {
        bad(format!(
            "endpointUrl {:?} is not a URL: {e}",
            dest.properties.endpoint_url
        ))
    })?;
    // Azure demands https; locally everything is plain http on loopback.
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(bad("endpointUrl must be http or https"));
    }
    Ok(url)
}

/// A delivery schema, if given, must be the topic's: the emulator does not convert.
fn check_delivery_schema(asked: Option<InputSchema>, topic: InputSchema) -> Result<(), ApiError> {
    if let Some(s) = asked
        && s != topic
    {
        return Err(bad(format!(
            "eventDeliverySchema {} differs from the topic's input schema {}; the emulator does not convert",
            s.arm_name(),
            topic.arm_name()
        )));
    }
    Ok(())
}

/// Fields Azure knows and the emulator does not implement are refused, naming the field, rather
/// than silently ignored.
fn refuse_unimplemented(properties: &Properties) -> Result<(), ApiError> {
    let webhook = &properties.destination.properties;
    let not_implemented = [
        (
            "deliveryWithResourceIdentity",
            properties.delivery_with_resource_identity.is_some(),
        ),
        (
            "expirationTimeUtc",
            properties.expiration_time_utc.is_some(),
        ),
        (
            "destination.properties.deliveryAttributeMappings",
            webhook.delivery_attribute_mappings.is_some(),
        ),
        (
            "destination.properties.azureActiveDirectoryTenantId",
            webhook.azure_active_directory_tenant_id.is_some(),
        ),
        (
            "destination.properties.azureActiveDirectoryApplicationIdOrUri",
            webhook
                .azure_active_directory_application_id_or_uri
                .is_some(),
        ),
    ];
    if let Some((field, _)) = not_implemented.iter().find(|(_, set)| *set) {
        return Err(bad(format!(
            "{field} is not implemented by the local emulator; remove it (the emulator refuses what it would otherwise silently ignore)"
        )));
    }
    if properties
        .filter
        .advanced_filters
        .as_ref()
        .is_some_and(|f| !f.is_empty())
    {
        return Err(bad(
            "advancedFilters are not supported by the local emulator",
        ));
    }
    Ok(())
}

/// The blob container failed events go to, from `deadLetterDestination` or
/// `deadLetterWithResourceIdentity` (one of them at most); `None`: they are dropped.
fn dead_letter_container(properties: &Properties) -> Result<Option<String>, ApiError> {
    let with_identity = match &properties.dead_letter_with_resource_identity {
        None => None,
        Some(w) => {
            let ok = match w.identity.kind.as_str() {
                "SystemAssigned" => w.identity.user_assigned_identity.is_none(),
                "UserAssigned" => w.identity.user_assigned_identity.is_some(),
                _ => false,
            };
            if !ok {
                return Err(bad(
                    "deadLetterWithResourceIdentity.identity must be {\"type\": \"SystemAssigned\"} or {\"type\": \"UserAssigned\", \"userAssignedIdentity\": ...}",
                ));
            }
            Some(&w.dead_letter_destination)
        }
    };
    if with_identity.is_some() && properties.dead_letter_destination.is_some() {
        return Err(bad(
            "set deadLetterDestination or deadLetterWithResourceIdentity, not both",
        ));
    }
    let Some(d) = properties
        .dead_letter_destination
        .as_ref()
        .or(with_identity)
    else {
        return Ok(None);
    };
    if !d.endpoint_type.eq_ignore_ascii_case("StorageBlob") {
        return Err(bad(
            "deadLetterDestination.endpointType must be StorageBlob",
        ));
    }
    let c = &d.properties.blob_container_name;
    // Blob container naming rules (3-63 lower-case letters, digits, hyphens).
    if !(3..=63).contains(&c.len())
        || !c
            .chars()
            .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-')
    {
        return Err(bad(format!(
            "blobContainerName {c:?} is not a valid container name"
        )));
    }
    Ok(Some(c.clone()))
}

impl Subscription {
    /// Validates `properties` for a subscription called `name` on a topic with `schema`. The
    /// checks run in a fixed order, so that a body with several faults is refused for the same
    /// one every time.
    pub fn new(name: &str, properties: Properties, schema: InputSchema) -> Result<Self, ApiError> {
        check_name(name)?;
        let url = webhook_url(&properties.destination)?;
        check_delivery_schema(properties.event_delivery_schema, schema)?;
        refuse_unimplemented(&properties)?;
        let webhook = &properties.destination.properties;
        let max_events = in_range(
            "maxEventsPerBatch",
            webhook.max_events_per_batch,
            1,
            5000,
            1,
        )?;
        let preferred_kb = in_range(
            "preferredBatchSizeInKilobytes",
            webhook.preferred_batch_size_in_kilobytes,
            1,
            1024,
            64,
        )?;
        let rp = &properties.retry_policy;
        let max_attempts = in_range("maxDeliveryAttempts", rp.max_delivery_attempts, 1, 30, 30)?;
        let ttl_min = in_range(
            "eventTimeToLiveInMinutes",
            rp.event_time_to_live_in_minutes,
            1,
            1440,
            1440,
        )?;
        let dead_letter_container = dead_letter_container(&properties)?;
        Ok(Self {
            name: name.to_string(),
            endpoint_url: url.to_string(),
            schema,
            max_events_per_batch: max_events as usize,
            preferred_batch_bytes: preferred_kb as usize * 1024,
            max_attempts,
            ttl: Duration::from_secs(u64::from(ttl_min) * 60),
            dead_letter_container,
            properties,
        })
    }

    /// Does an event with this type and subject go to this subscription?
    pub fn matches(&self, event_type: &str, subject: &str) -> bool {
        let f = &self.properties.filter;
        // Event types compare case-insensitively, as in Azure.
        if let Some(types) = &f.included_event_types
            && !types.is_empty()
            && !types.iter().any(|t| t.eq_ignore_ascii_case(event_type))
        {
            return false;
        }
        let sensitive = f.is_subject_case_sensitive.unwrap_or(false);
        let norm = |s: &str| {
            if sensitive {
                s.to_string()
            } else {
                s.to_lowercase()
            }
        };
        let subject = norm(subject);
        if let Some(p) = f.subject_begins_with.as_deref().filter(|p| !p.is_empty())
            && !subject.starts_with(&norm(p))
        {
            return false;
        }
        if let Some(p) = f.subject_ends_with.as_deref().filter(|p| !p.is_empty())
            && !subject.ends_with(&norm(p))
        {
            return false;
        }
        true
    }

    /// The ARM resource body. Like Azure, the full endpoint URL (which may hold a key in its
    /// query) is not returned, only `endpointBaseUrl`.
    pub fn arm(&self, topic_id: &str) -> Value {
        let mut props = serde_json::to_value(&self.properties).expect("properties serialise");
        let base = self
            .endpoint_url
            .split('?')
            .next()
            .unwrap_or_default()
            .to_string();
        let wh = &mut props["destination"]["properties"];
        wh.as_object_mut()
            .expect("webhook properties are an object")
            .remove("endpointUrl");
        wh["endpointBaseUrl"] = json!(base);
        wh["maxEventsPerBatch"] = json!(self.max_events_per_batch);
        wh["preferredBatchSizeInKilobytes"] = json!(self.preferred_batch_bytes / 1024);
        props["retryPolicy"] = json!({
            "maxDeliveryAttempts": self.max_attempts,
            "eventTimeToLiveInMinutes": self.ttl.as_secs() / 60,
        });
        props["topic"] = json!(topic_id);
        props["provisioningState"] = json!("Succeeded");
        props["eventDeliverySchema"] = json!(self.schema.arm_name());
        json!({
            "id": format!("{topic_id}/providers/Microsoft.EventGrid/eventSubscriptions/{}", self.name),
            "name": self.name,
            "type": "Microsoft.EventGrid/eventSubscriptions",
            "properties": props,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(v: Value) -> Properties {
        serde_json::from_value(v).unwrap()
    }

    fn sub(filter: Value) -> Subscription {
        Subscription::new(
            "west",
            props(json!({"destination": {"endpointType": "WebHook", "properties": {"endpointUrl": "http://127.0.0.1:1/api/eventgrid?code=k"}}, "filter": filter})),
            InputSchema::EventGrid,
        )
        .unwrap()
    }

    #[test]
    fn defaults() {
        let s = sub(json!({}));
        assert_eq!(
            (s.max_events_per_batch, s.max_attempts, s.ttl.as_secs()),
            (1, 30, 86400)
        );
        assert!(s.dead_letter_container.is_none());
        let arm = s.arm("/t");
        assert_eq!(
            arm["properties"]["destination"]["properties"]["endpointBaseUrl"],
            "http://127.0.0.1:1/api/eventgrid"
        );
        assert!(
            arm["properties"]["destination"]["properties"]
                .get("endpointUrl")
                .is_none()
        );
    }

    #[test]
    fn filters() {
        let s = sub(
            json!({"includedEventTypes": ["recordUpdated"], "subjectBeginsWith": "warehouse/", "subjectEndsWith": "/orange"}),
        );
        assert!(s.matches("recordUpdated", "warehouse/products/orange"));
        assert!(s.matches("RECORDUPDATED", "Warehouse/products/ORANGE"));
        assert!(!s.matches("other", "warehouse/products/orange"));
        assert!(!s.matches("recordUpdated", "shop/products/orange"));
        assert!(!s.matches("recordUpdated", "warehouse/products/apple"));
        let s = sub(json!({"subjectBeginsWith": "Warehouse/", "isSubjectCaseSensitive": true}));
        assert!(!s.matches("x", "warehouse/a"));
        assert!(s.matches("x", "Warehouse/a"));
        assert!(sub(json!({"includedEventTypes": []})).matches("any", ""));
    }

    #[test]
    fn refusals() {
        let base = json!({"destination": {"endpointType": "WebHook", "properties": {"endpointUrl": "http://h/x"}}});
        let try_ = |patch: &dyn Fn(&mut Value), name: &str| {
            let mut v = base.clone();
            patch(&mut v);
            Subscription::new(name, props(v), InputSchema::EventGrid)
        };
        assert!(try_(&|_| {}, "ok-name").is_ok());
        assert!(try_(&|_| {}, "a").is_err());
        assert!(try_(&|_| {}, "bad_name").is_err());
        assert!(
            try_(
                &|v| v["destination"]["properties"]["endpointUrl"] = json!("not a url"),
                "ok-name"
            )
            .is_err()
        );
        assert!(
            try_(
                &|v| v["destination"]["properties"]["maxEventsPerBatch"] = json!(5001),
                "ok-name"
            )
            .is_err()
        );
        assert!(
            try_(
                &|v| v["retryPolicy"] = json!({"maxDeliveryAttempts": 31}),
                "ok-name"
            )
            .is_err()
        );
        assert!(
            try_(
                &|v| v["retryPolicy"] = json!({"eventTimeToLiveInMinutes": 0}),
                "ok-name"
            )
            .is_err()
        );
        assert!(try_(&|v| v["deadLetterDestination"] = json!({"endpointType": "StorageBlob", "properties": {"blobContainerName": "Bad_Name"}}), "ok-name").is_err());
        assert!(
            try_(
                &|v| v["filter"] = json!({"advancedFilters": [{"operatorType": "BoolEquals"}]}),
                "ok-name"
            )
            .is_err()
        );
    }
}
