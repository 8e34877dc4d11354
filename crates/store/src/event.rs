//! One change as it travels: outbox row → stream entry → audit ledger row.

use serde::{Deserialize, Serialize};

/// An event to write to the outbox; the outbox assigns its id and time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewEvent {
    /// What happened, dotted (`instance.status_changed`, `target.created`).
    pub event_type: String,
    /// The target's name, when the event is about one.
    pub target: Option<String>,
    /// The instance's base URL, when the event is about one.
    pub instance: Option<String>,
    /// Everything else, as JSON.
    pub payload: serde_json::Value,
}

/// An event with its outbox id, the key that makes every consumer idempotent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    /// The outbox id.
    pub id: i64,
    /// What happened.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The target's name.
    pub target: Option<String>,
    /// The instance's base URL.
    pub instance: Option<String>,
    /// Everything else, as the JSON text it was written as. Validated where it enters (the
    /// outbox's `jsonb`, a stream entry), then carried as text: the relay and the audit pass it
    /// on without building a tree of it and serializing that again, which was about a third of
    /// the relay's CPU at bulk speed. Read it with `serde_json::from_str(payload.get())`.
    pub payload: Box<serde_json::value::RawValue>,
    /// When the change was committed (RFC 3339, UTC).
    pub occurred_at: String,
    /// The W3C `traceparent` of the work that wrote or last handed on the event, so the next
    /// step continues its trace; `None` when tracing was off. Never a reason to refuse an
    /// entry: a malformed one is dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_context: Option<String>,
}

/// Why a stream entry cannot be read as an [`Event`]: it is poison, bound for the DLQ.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadEntry {
    /// A required field is absent.
    #[error("field `{0}` is missing")]
    Missing(&'static str),
    /// A field holds something else than text.
    #[error("field `{0}` is not text")]
    NotText(&'static str),
    /// The outbox id is not a positive integer.
    #[error("field `outbox_id` is not a positive integer: {0:?}")]
    BadId(String),
    /// The payload is not JSON.
    #[error("field `payload` is not JSON: {0}")]
    BadPayload(String),
    /// The time is not RFC 3339.
    #[error("field `occurred_at` is not an RFC 3339 time: {0:?}")]
    BadTime(String),
}

/// Events are equal when every field is, the payload by its text.
impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
            && self.event_type == other.event_type
            && self.target == other.target
            && self.instance == other.instance
            && self.payload.get() == other.payload.get()
            && self.occurred_at == other.occurred_at
            && self.trace_context == other.trace_context
    }
}

impl Event {
    /// The trace id of the event's trace context, when it has a well-formed one.
    pub fn trace_id(&self) -> Option<&str> {
        self.trace_context.as_deref().and_then(caracal_core::telemetry::trace_id_of)
    }

    /// Reads an event back from a stream entry as [`crate::stream::read_reply`] returns it.
    ///
    /// # Errors
    /// [`BadEntry`] naming the first field that is missing or malformed.
    pub fn from_entry(entry: &crate::stream::Entry) -> Result<Self, BadEntry> {
        let text = |name: &'static str| -> Result<String, BadEntry> {
            let value = entry.get(name).ok_or(BadEntry::Missing(name))?;
            crate::stream::text_of(value)
                .and_then(|bytes| std::str::from_utf8(bytes).ok())
                .map(str::to_owned)
                .ok_or(BadEntry::NotText(name))
        };
        let raw_id = text("outbox_id")?;
        let id = raw_id.parse::<i64>().ok().filter(|id| *id > 0).ok_or(BadEntry::BadId(raw_id))?;
        // Validated in place and copied once, as text.
        let raw = entry.get("payload").ok_or(BadEntry::Missing("payload"))?;
        let raw = crate::stream::text_of(raw).ok_or(BadEntry::NotText("payload"))?;
        let payload = serde_json::from_slice::<&serde_json::value::RawValue>(raw)
            .map(ToOwned::to_owned)
            .map_err(|e| BadEntry::BadPayload(e.to_string()))?;
        let occurred_at = text("occurred_at")?;
        if humantime::parse_rfc3339_weak(&occurred_at).is_err() && humantime::parse_rfc3339(&occurred_at).is_err() {
            return Err(BadEntry::BadTime(occurred_at));
        }
        let optional = |s: String| (!s.is_empty()).then_some(s);
        // A trace context is a convenience: one that is absent or malformed loses the trace,
        // never the event.
        let trace_context = text("traceparent").ok().filter(|t| caracal_core::telemetry::trace_id_of(t).is_some());
        Ok(Self {
            id,
            event_type: text("type")?,
            target: optional(text("target")?),
            instance: optional(text("instance")?),
            payload,
            occurred_at,
            trace_context,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::HashMap;

    use crate::stream::Entry;

    fn fields(pairs: &[(&str, &str)]) -> HashMap<String, redis::Value> {
        pairs.iter().map(|(k, v)| (k.to_string(), redis::Value::BulkString(v.as_bytes().to_vec()))).collect()
    }

    /// An entry holding `fields`, as a consumer reads it.
    fn read(fields: &HashMap<String, redis::Value>) -> Result<Event, BadEntry> {
        let id = redis::streams::StreamId { id: "1-0".into(), map: fields.clone(), ..Default::default() };
        Event::from_entry(&Entry::from(id))
    }

    #[test]
    fn an_event_survives_its_stream_encoding() {
        let event = Event {
            id: 42,
            event_type: "instance.status_changed".into(),
            target: Some("shop".into()),
            instance: None,
            payload: serde_json::value::to_raw_value(&serde_json::json!({"from": "up", "to": "down"})).expect("json"),
            occurred_at: "2026-11-21T14:00:00.123456Z".into(),
            trace_context: None,
        };
        // Through the very `XADD` the relay sends: its arguments after `XADD stream MAXLEN ~
        // n *` are the entry's fields.
        let roundtrip = |event: &Event| {
            let cmd = crate::stream::xadd(crate::stream::EVENTS, event, 1000);
            let args: Vec<redis::Value> = cmd
                .args_iter()
                .skip(6)
                .map(|arg| match arg {
                    redis::Arg::Simple(bytes) => redis::Value::BulkString(bytes.to_vec()),
                    _ => redis::Value::Nil,
                })
                .collect();
            let entry = redis::Value::Array(vec![redis::Value::BulkString(b"1-0".to_vec()), redis::Value::Array(args)]);
            let reply = redis::Value::Array(vec![redis::Value::Array(vec![
                redis::Value::BulkString(crate::stream::EVENTS.into()),
                redis::Value::Array(vec![entry]),
            ])]);
            Event::from_entry(&crate::stream::read_reply(reply).expect("a reply")[0])
        };
        assert_eq!(roundtrip(&event), Ok(event.clone()));
        let traced = Event {
            trace_context: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            ..event.clone()
        };
        assert_eq!(roundtrip(&traced), Ok(traced.clone()));
        assert_eq!(traced.trace_id(), Some("0af7651916cd43dd8448eb211c80319c"));
        // A malformed trace context costs the trace, not the event.
        let garbled = Event { trace_context: Some("00-not-a-trace".into()), ..event.clone() };
        assert_eq!(roundtrip(&garbled), Ok(event));
    }

    #[test]
    fn poison_entries_name_their_fault() {
        let good = [
            ("outbox_id", "1"),
            ("type", "t"),
            ("target", ""),
            ("instance", ""),
            ("payload", "{}"),
            ("occurred_at", "2026-11-21T14:00:00Z"),
        ];
        let with = |k: &str, v: &str| {
            let mut f = fields(&good);
            f.insert(k.into(), redis::Value::BulkString(v.as_bytes().to_vec()));
            f
        };
        assert!(read(&fields(&good)).is_ok());
        assert_eq!(read(&with("outbox_id", "-3")), Err(BadEntry::BadId("-3".into())));
        assert_eq!(read(&with("outbox_id", "x")), Err(BadEntry::BadId("x".into())));
        assert!(matches!(read(&with("payload", "{not json")), Err(BadEntry::BadPayload(_))));
        // Carried as text, still checked whole: trailing bytes and invalid UTF-8 are poison.
        assert!(matches!(read(&with("payload", "{} {}")), Err(BadEntry::BadPayload(_))));
        let mut latin1 = fields(&good);
        latin1.insert("payload".into(), redis::Value::BulkString(b"\"caf\xe9\"".to_vec()));
        assert!(matches!(read(&latin1), Err(BadEntry::BadPayload(_))));
        // Valid JSON goes on byte for byte, spacing and all.
        let spaced = read(&with("payload", "{\"a\": [1, 2]}")).expect("an event");
        assert_eq!(spaced.payload.get(), "{\"a\": [1, 2]}");
        assert_eq!(read(&with("occurred_at", "yesterday")), Err(BadEntry::BadTime("yesterday".into())));
        let mut missing = fields(&good);
        missing.remove("type");
        assert_eq!(read(&missing), Err(BadEntry::Missing("type")));
    }
}
