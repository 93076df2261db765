//! Cairn's own event envelope, with one set of rules wherever an event arrives as JSON:
//! the webhook's body, an SQS message.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::Event;

/// How a body in Cairn's format looks, for error messages.
pub const ENVELOPE_FORMAT: &str = r#"send {"kind": "traffic.spike", "payload": {...}, "id": "optional"}"#;

/// An event as a sender writes it: `{"kind": "traffic.spike", "payload": {...}, "id":
/// "...", "time_ms": 1700000000000}`.
///
/// - `kind` is required and not blank;
/// - `payload` is a JSON object, `{}` if left out;
/// - `id` is a non-blank string or a number, optional (the source then gives one, so a
///   redelivery keeps it);
/// - `time_ms` (milliseconds since the Unix epoch) is optional;
/// - nothing else: a misspelt field is an error, not a silently empty payload.
///
/// ```
/// use cairn_sdk::events::Envelope;
///
/// let envelope = Envelope::from_json(br#"{"kind": "traffic.spike", "payload": {"requests_per_second": 2600}}"#).unwrap();
/// let event = envelope.into_event("webhook", || "webhook-1".to_owned(), None);
/// assert_eq!((event.kind.as_str(), event.id.as_str()), ("traffic.spike", "webhook-1"));
/// assert!(Envelope::from_json(br#"{"kind": "traffic.spike", "paylod": {}}"#).unwrap_err().to_string().contains("unknown field `paylod`"));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Envelope {
    /// What happened.
    pub kind: String,
    /// Its data: an object.
    pub payload: Value,
    /// The sender's id for it, if any.
    pub id: Option<String>,
    /// When it happened, if the sender says.
    pub time_ms: Option<u64>,
}

/// Why a body is not an [`Envelope`]: the message says what was wrong, and how the
/// format looks.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EnvelopeError(String);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    kind: String,
    #[serde(default)]
    payload: Option<Value>,
    #[serde(default)]
    id: Option<WireId>,
    #[serde(default)]
    time_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum WireId {
    Text(String),
    Number(serde_json::Number),
}

impl Envelope {
    /// The envelope in `body`.
    pub fn from_json(body: &[u8]) -> Result<Envelope, EnvelopeError> {
        Self::checked(serde_json::from_slice(body))
    }

    /// The envelope that `value` is.
    pub fn from_value(value: &Value) -> Result<Envelope, EnvelopeError> {
        Self::checked(Wire::deserialize(value))
    }

    fn checked(wire: Result<Wire, serde_json::Error>) -> Result<Envelope, EnvelopeError> {
        let wire = wire.map_err(|e| EnvelopeError(format!("the body is not an event ({e}): {ENVELOPE_FORMAT}")))?;
        if wire.kind.trim().is_empty() {
            return Err(EnvelopeError(format!("`kind` is empty: {ENVELOPE_FORMAT}")));
        }
        let payload = match wire.payload {
            None => Value::Object(Map::new()),
            Some(p @ Value::Object(_)) => p,
            Some(_) => return Err(EnvelopeError(format!("`payload` must be a JSON object: {ENVELOPE_FORMAT}"))),
        };
        let id = match wire.id {
            None => None,
            Some(WireId::Text(id)) if id.trim().is_empty() => return Err(EnvelopeError(format!("`id` is empty: leave it out or {ENVELOPE_FORMAT}"))),
            Some(WireId::Text(id)) => Some(id),
            Some(WireId::Number(n)) => Some(n.to_string()),
        };
        Ok(Envelope { kind: wire.kind, payload, id, time_ms: wire.time_ms })
    }

    /// The event, from `source`: its id the envelope's or `default_id()`, its time the
    /// envelope's, else `default_time_ms`, else now.
    pub fn into_event(self, source: &str, default_id: impl FnOnce() -> String, default_time_ms: Option<u64>) -> Event {
        let event = Event::new(self.kind, self.payload).with_id(self.id.unwrap_or_else(default_id)).with_source(source);
        match self.time_ms.or(default_time_ms) {
            Some(t) => event.with_time_ms(t),
            None => event,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_rules_hold_for_every_field() {
        let full = Envelope::from_value(&json!({"kind": "a.b", "payload": {"x": 1}, "id": 42, "time_ms": 5})).unwrap();
        assert_eq!(full, Envelope { kind: "a.b".into(), payload: json!({"x": 1}), id: Some("42".into()), time_ms: Some(5) });
        assert_eq!(Envelope::from_value(&json!({"kind": "a"})).unwrap().payload, json!({}));
        for (body, said) in [
            (json!({"kind": " "}), "`kind` is empty"),
            (json!({"kind": "a", "payload": [1]}), "`payload` must be a JSON object"),
            (json!({"kind": "a", "id": ""}), "`id` is empty"),
            (json!({"kind": "a", "paylod": {}}), "unknown field `paylod`"),
            (json!({"payload": {}}), "missing field `kind`"),
            (json!([1]), "the body is not an event"),
        ] {
            let err = Envelope::from_value(&body).unwrap_err().to_string();
            assert!(err.contains(said) && err.ends_with(ENVELOPE_FORMAT), "{body}: {err}");
        }
    }
}
