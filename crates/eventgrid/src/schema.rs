//! Validation of published events (pure: bytes in, normalised events or an [`ApiError`] out).
//!
//! Event Grid schema: the body is a JSON array; `id`, `subject`, `eventType` and `eventTime` are
//! required strings; `dataVersion` is filled with "" when absent; `metadataVersion` must be "1"
//! when present and is set to "1"; `topic`, when present, must equal the topic's resource id and
//! is filled in when absent. CloudEvents 1.0: `id`, `source`, `specversion` ("1.0") and `type`
//! are required strings.

use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::error::ApiError;

/// 1 MB per event and per request (Azure counts 1,048,576 bytes).
pub const MAX_BYTES: usize = 1024 * 1024;
/// At most 5,000 events per request. Our choice: 413, like the other payload limits (the docs
/// list the number among the size limits and do not give its status).
pub const MAX_EVENTS: usize = 5000;

/// The input schema of a topic (ARM property `inputSchema`). Set per topic with
/// `saldo-eventgrid --input-schema`; events are delivered in the same schema.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
pub enum InputSchema {
    #[default]
    #[value(name = "EventGridSchema")]
    #[serde(rename = "EventGridSchema")]
    EventGrid,
    #[value(name = "CloudEventSchemaV1_0")]
    #[serde(rename = "CloudEventSchemaV1_0")]
    CloudEvents,
}

impl InputSchema {
    pub fn arm_name(self) -> &'static str {
        match self {
            InputSchema::EventGrid => "EventGridSchema",
            InputSchema::CloudEvents => "CloudEventSchemaV1_0",
        }
    }
}

/// One valid, normalised event, ready to store and deliver.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub id: String,
    /// `eventType` (Event Grid) or `type` (CloudEvents): what `includedEventTypes` filters on.
    pub event_type: String,
    /// `subject` ("" when a CloudEvent has none).
    pub subject: String,
    /// `dataVersion` (Event Grid; "" for CloudEvents), sent as the `aeg-data-version` header.
    pub data_version: String,
    pub json: Box<RawValue>,
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("InputJsonInvalid", message)
}

fn required_string(obj: &Map<String, Value>, i: usize, field: &str) -> Result<String, ApiError> {
    match obj.get(field) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::String(_)) => Err(bad(format!(
            "event [{i}]: required property '{field}' is empty"
        ))),
        Some(_) => Err(bad(format!(
            "event [{i}]: property '{field}' must be a string"
        ))),
        None => Err(bad(format!(
            "event [{i}]: required property '{field}' was not set"
        ))),
    }
}

fn check_time(i: usize, field: &str, s: &str) -> Result<(), ApiError> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|_| ())
        .map_err(|_| {
            bad(format!(
                "event [{i}]: '{field}' {s:?} is not an ISO 8601 date-time"
            ))
        })
}

fn finish(
    i: usize,
    obj: Map<String, Value>,
    id: String,
    event_type: String,
    subject: String,
) -> Result<Accepted, ApiError> {
    let data_version = match obj.get("dataVersion") {
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    };
    let text = serde_json::to_string(&Value::Object(obj)).expect("a JSON value serialises");
    if text.len() > MAX_BYTES {
        return Err(ApiError::too_large(format!(
            "event [{i}] is {} bytes; the limit is {MAX_BYTES} bytes per event",
            text.len()
        )));
    }
    let json = RawValue::from_string(text).expect("serde_json output is valid JSON");
    Ok(Accepted {
        id,
        event_type,
        subject,
        data_version,
        json,
    })
}

/// Parses a request body. `content_type` decides between one CloudEvent (structured mode) and
/// a batch; the topic's `schema` decides which fields are required.
pub fn parse_body(
    body: &[u8],
    content_type: &str,
    schema: InputSchema,
    topic_id: &str,
) -> Result<Vec<Accepted>, ApiError> {
    if body.len() > MAX_BYTES {
        return Err(ApiError::too_large(format!(
            "the request is {} bytes; the limit is {MAX_BYTES} bytes per request",
            body.len()
        )));
    }
    let ct = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let is_cloud_ct = ct.starts_with("application/cloudevents");
    match (schema, is_cloud_ct) {
        (InputSchema::EventGrid, true) => {
            return Err(bad(format!(
                "this topic expects the EventGridSchema (application/json), not {ct}"
            )));
        }
        (InputSchema::CloudEvents, false) if ct != "application/json" && !ct.is_empty() => {
            return Err(bad(format!(
                "this topic expects CloudEvents (application/cloudevents-batch+json), not {ct}"
            )));
        }
        _ => {}
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| bad(format!("the body is not valid JSON: {e}")))?;
    let items = match value {
        Value::Array(items) => items,
        // Structured-mode CloudEvent: a single object.
        obj @ Value::Object(_) if ct == "application/cloudevents+json" => vec![obj],
        _ => return Err(bad("the body must be a JSON array of events")),
    };
    if items.len() > MAX_EVENTS {
        return Err(ApiError::too_large(format!(
            "{} events in one request; the limit is {MAX_EVENTS}",
            items.len()
        )));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::Object(obj) => match schema {
                InputSchema::EventGrid => event_grid(i, obj, topic_id),
                InputSchema::CloudEvents => cloud_event(i, obj),
            },
            _ => Err(bad(format!("event [{i}] must be a JSON object"))),
        })
        .collect()
}

fn event_grid(i: usize, mut obj: Map<String, Value>, topic_id: &str) -> Result<Accepted, ApiError> {
    let id = required_string(&obj, i, "id")?;
    let subject = required_string(&obj, i, "subject")?;
    let event_type = required_string(&obj, i, "eventType")?;
    let time = required_string(&obj, i, "eventTime")?;
    check_time(i, "eventTime", &time)?;
    match obj.get("dataVersion") {
        None | Some(Value::Null) => {
            obj.insert("dataVersion".into(), Value::String(String::new()));
        }
        Some(Value::String(_)) => {}
        Some(_) => return Err(bad(format!("event [{i}]: 'dataVersion' must be a string"))),
    }
    match obj.get("metadataVersion") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s == "1" => {}
        Some(other) => {
            return Err(bad(format!(
                "event [{i}]: 'metadataVersion' must be \"1\", got {other}"
            )));
        }
    }
    obj.insert("metadataVersion".into(), Value::String("1".into()));
    match obj.get("topic") {
        None | Some(Value::Null) => {}
        // Resource ids are case-insensitive in Azure.
        Some(Value::String(t)) if t.eq_ignore_ascii_case(topic_id) => {}
        Some(other) => {
            return Err(bad(format!(
                "event [{i}]: 'topic' {other} does not match this topic ({topic_id}); leave it out or send the topic's resource id"
            )));
        }
    }
    obj.insert("topic".into(), Value::String(topic_id.into()));
    finish(i, obj, id, event_type, subject)
}

fn cloud_event(i: usize, obj: Map<String, Value>) -> Result<Accepted, ApiError> {
    let id = required_string(&obj, i, "id")?;
    required_string(&obj, i, "source")?;
    let version = required_string(&obj, i, "specversion")?;
    if version != "1.0" {
        return Err(bad(format!(
            "event [{i}]: 'specversion' must be \"1.0\", got {version:?}"
        )));
    }
    let event_type = required_string(&obj, i, "type")?;
    let subject = match obj.get("subject") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(bad(format!("event [{i}]: 'subject' must be a string"))),
    };
    if let Some(Value::String(t)) = obj.get("time") {
        check_time(i, "time", t)?;
    }
    finish(i, obj, id, event_type, subject)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TOPIC: &str = "/subscriptions/0/resourceGroups/r/providers/Microsoft.EventGrid/topics/t";

    fn eg(events: Value) -> Result<Vec<Accepted>, ApiError> {
        parse_body(
            events.to_string().as_bytes(),
            "application/json",
            InputSchema::EventGrid,
            TOPIC,
        )
    }

    fn good() -> Value {
        json!({"id": "1", "subject": "s", "eventType": "e", "eventTime": "2026-01-01T00:00:00Z", "data": {"x": 1}})
    }

    #[test]
    fn fills_in_topic_data_version_and_metadata_version() {
        let out = eg(json!([good()])).unwrap();
        let v: Value = serde_json::from_str(out[0].json.get()).unwrap();
        assert_eq!(v["topic"], TOPIC);
        assert_eq!(v["dataVersion"], "");
        assert_eq!(v["metadataVersion"], "1");
        assert_eq!(v["data"]["x"], 1);
        let mut e = good();
        e["topic"] = json!(TOPIC.to_uppercase());
        e["dataVersion"] = json!("1.0");
        assert!(eg(json!([e])).is_ok());
    }

    #[test]
    fn refuses_bad_input_with_the_right_status() {
        let status = |r: Result<Vec<Accepted>, ApiError>| r.unwrap_err().status;
        assert_eq!(
            status(parse_body(
                b"{not json",
                "application/json",
                InputSchema::EventGrid,
                TOPIC
            )),
            400
        );
        assert_eq!(status(eg(good())), 400, "a single object is not an array");
        assert_eq!(status(eg(json!([1]))), 400);
        for field in ["id", "subject", "eventType", "eventTime"] {
            let mut e = good();
            e.as_object_mut().unwrap().remove(field);
            let err = eg(json!([e])).unwrap_err();
            assert!(err.message.contains(field), "{err}");
        }
        let mut e = good();
        e["eventTime"] = json!("yesterday");
        assert_eq!(status(eg(json!([e]))), 400);
        let mut e = good();
        e["topic"] = json!("/subscriptions/other");
        assert_eq!(status(eg(json!([e]))), 400);
        let mut e = good();
        e["metadataVersion"] = json!("2");
        assert_eq!(status(eg(json!([e]))), 400);
        let mut e = good();
        e["data"] = json!("x".repeat(MAX_BYTES));
        assert_eq!(status(eg(json!([e]))), 413);
        let many: Vec<Value> = (0..=MAX_EVENTS).map(|_| json!({})).collect();
        assert_eq!(status(eg(Value::Array(many))), 413);
        assert_eq!(
            status(parse_body(
                b"[]",
                "application/cloudevents-batch+json",
                InputSchema::EventGrid,
                TOPIC
            )),
            400
        );
    }

    #[test]
    fn cloud_events() {
        let ce =
            json!({"id": "1", "source": "/s", "specversion": "1.0", "type": "t", "subject": "a/b"});
        let out = parse_body(
            json!([ce]).to_string().as_bytes(),
            "application/cloudevents-batch+json; charset=utf-8",
            InputSchema::CloudEvents,
            TOPIC,
        )
        .unwrap();
        assert_eq!(
            (out[0].event_type.as_str(), out[0].subject.as_str()),
            ("t", "a/b")
        );
        let one = parse_body(
            ce.to_string().as_bytes(),
            "application/cloudevents+json",
            InputSchema::CloudEvents,
            TOPIC,
        )
        .unwrap();
        assert_eq!(one.len(), 1);
        let mut bad = ce.clone();
        bad.as_object_mut().unwrap().remove("source");
        assert!(
            parse_body(
                json!([bad]).to_string().as_bytes(),
                "application/cloudevents-batch+json",
                InputSchema::CloudEvents,
                TOPIC
            )
            .is_err()
        );
    }
}
