//! The validation handshake a new or moved webhook endpoint must pass (synchronous echo, the
//! manual validationUrl, or the CloudEvents OPTIONS request). One attempt: Azure documents no
//! retry (a handshake that does not complete fails the create; see ARCHITECTURE.md), so the
//! caller that creates the subscription is the one that retries.

use chrono::Utc;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::error::ApiError;
use crate::policy::{self};
use crate::schema::InputSchema;
use crate::subscription::Subscription;
use crate::topic::Topic;

impl Topic {
    /// A GET of a validationUrl: completes a manual handshake. False for an unknown code.
    pub fn validate_manually(&self, code: &str) -> bool {
        match self.validations.lock().expect("lock poisoned").remove(code) {
            Some(tx) => tx.send(()).is_ok(),
            None => false,
        }
    }

    /// The validation handshake: a SubscriptionValidationEvent for the Event Grid schema, an
    /// OPTIONS request (abuse protection) for CloudEvents.
    pub(crate) async fn handshake(&self, sub: &Subscription, base: &str) -> Result<(), ApiError> {
        let fail = |m: String| {
            ApiError::bad_request(
                "SubscriptionValidationFailed",
                format!(
                    "webhook validation handshake failed for {}: {m}",
                    sub.endpoint_url
                ),
            )
        };
        if sub.schema == InputSchema::CloudEvents {
            let origin = "eventgrid.azure.net";
            let resp = self
                .http
                .request(reqwest::Method::OPTIONS, &sub.endpoint_url)
                .header("WebHook-Request-Origin", origin)
                .timeout(self.timeout(policy::HANDSHAKE_TIMEOUT))
                .send()
                .await
                .map_err(|e| {
                    fail(format!(
                        "the endpoint did not answer the OPTIONS request: {e}"
                    ))
                })?;
            let allowed = resp
                .headers()
                .get("WebHook-Allowed-Origin")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            if resp.status().as_u16() != 200
                || !(allowed == "*" || allowed.eq_ignore_ascii_case(origin))
            {
                return Err(fail(format!(
                    "the OPTIONS request got {} with WebHook-Allowed-Origin {allowed:?}; expected 200 allowing {origin}",
                    resp.status()
                )));
            }
            return Ok(());
        }
        let code = uuid::Uuid::new_v4().to_string();
        let url = format!("{base}/eventsubscriptions/{}/validate?id={code}", sub.name);
        let (tx, rx) = oneshot::channel();
        self.validations
            .lock()
            .expect("lock poisoned")
            .insert(code.clone(), tx);
        let result = self.run_handshake(sub, &code, &url, rx).await;
        self.validations
            .lock()
            .expect("lock poisoned")
            .remove(&code);
        result.map_err(fail)
    }

    async fn run_handshake(
        &self,
        sub: &Subscription,
        code: &str,
        url: &str,
        rx: oneshot::Receiver<()>,
    ) -> Result<(), String> {
        let event = json!([{
            "id": uuid::Uuid::new_v4().to_string(),
            "topic": self.topic_id,
            "subject": "",
            "data": {"validationCode": code, "validationUrl": url},
            "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
            "eventTime": Utc::now().to_rfc3339(),
            "metadataVersion": "1",
            "dataVersion": "2",
        }]);
        let resp = self
            .http
            .post(&sub.endpoint_url)
            .timeout(self.timeout(policy::HANDSHAKE_TIMEOUT))
            .header("Content-Type", "application/json; charset=utf-8")
            .header("aeg-event-type", "SubscriptionValidation")
            .header("aeg-subscription-name", sub.name.to_uppercase())
            .header("aeg-delivery-count", "0")
            .header("aeg-data-version", "2")
            .header("aeg-metadata-version", "1")
            .body(event.to_string())
            .send()
            .await
            .map_err(|e| format!("the endpoint did not answer: {e}"))?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(format!(
                "the endpoint answered {status}; it must answer 200 (202 is not accepted)"
            ));
        }
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        match body.get("validationResponse") {
            Some(Value::String(c)) if c == code => Ok(()),
            Some(other) => Err(format!(
                "validationResponse {other} does not match the validationCode"
            )),
            None => {
                // Manual validation: the endpoint answered 200 and someone must GET the URL.
                let window = self.scaled(policy::MANUAL_VALIDATION_WINDOW);
                match tokio::time::timeout(window, rx).await {
                    Ok(Ok(())) => Ok(()),
                    _ => Err(format!(
                        "the endpoint answered 200 without a validationResponse and nobody opened the validationUrl within {window:?}"
                    )),
                }
            }
        }
    }
}
