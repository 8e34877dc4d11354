//! Stream names and publishing.

use caracal_core::RedisConnection;

use crate::{Error, Event};

/// Every change, relayed from the outbox; consumed by audit (and anyone else).
pub const EVENTS: &str = "caracal.events";
/// Entries of `caracal.events` that could not be processed, with the reason.
pub const EVENTS_DLQ: &str = "caracal.events.dlq";
/// Token revocations from the STS.
pub const REVOCATIONS: &str = "caracal.revocations";
/// Registry changes (`registry.changed`, one target each): followers re-read that target.
pub const INVALIDATIONS: &str = "caracal.invalidations";

/// The streams an event is published to besides `caracal.events`, which gets every event so
/// the ledger is complete: revocations also go to `caracal.revocations`, registry changes to
/// `caracal.invalidations`.
pub fn extra_streams(event: &Event) -> &'static [&'static str] {
    match event.event_type.as_str() {
        crate::revocation::EVENT_TYPE => &[REVOCATIONS],
        crate::registry::CHANGED => &[INVALIDATIONS],
        _ => &[],
    }
}

/// Appends `events` to `stream` (and, for `caracal.events`, each to its [`extra_streams`]) in
/// one pipeline, trimming it to about `max_len` entries
/// (`MAXLEN ~`, so trimming stays cheap). Either every entry was sent or an error is returned;
/// a retry may then add some twice, which consumers absorb by outbox id.
///
/// # Errors
/// When Redis cannot be reached or refuses an entry.
pub async fn publish(conn: &mut RedisConnection, stream: &str, events: &[Event], max_len: usize) -> Result<(), Error> {
    let mut pipe = redis::Pipeline::with_capacity(events.len());
    for event in events {
        // Only the main stream routes: `publish` to another stream sends just there.
        let extra = if stream == EVENTS { extra_streams(event) } else { &[] };
        for target in std::iter::once(&stream).chain(extra) {
            pipe.add_command(xadd(target, event, max_len)).ignore();
        }
    }
    pipe.query_async::<()>(conn).await?;
    Ok(())
}

/// One `XADD` of `event`: its outbox id, type, target and instance (empty strings stand for
/// none), payload (its JSON text as it came), time and, only when it carries a trace,
/// `traceparent`. Written straight into a command sized for them: at bulk speed, building
/// each field as a `String` first and growing the command's buffer arg by arg was a quarter
/// of the relay's CPU.
pub(crate) fn xadd(stream: &str, event: &Event, max_len: usize) -> redis::Cmd {
    let text_len = event.event_type.len()
        + event.target.as_ref().map_or(0, String::len)
        + event.instance.as_ref().map_or(0, String::len)
        + event.payload.get().len()
        + event.occurred_at.len()
        + event.trace_context.as_ref().map_or(0, String::len);
    // Field names and numbers take about 64 bytes.
    let mut cmd = redis::Cmd::with_capacity(20, stream.len() + text_len + 64);
    cmd.arg("XADD").arg(stream).arg("MAXLEN").arg("~").arg(max_len).arg("*");
    cmd.arg("outbox_id").arg(event.id);
    cmd.arg("type").arg(&event.event_type);
    cmd.arg("target").arg(event.target.as_deref().unwrap_or_default());
    cmd.arg("instance").arg(event.instance.as_deref().unwrap_or_default());
    cmd.arg("payload").arg(event.payload.get());
    cmd.arg("occurred_at").arg(&event.occurred_at);
    if let Some(traceparent) = &event.trace_context {
        cmd.arg("traceparent").arg(traceparent);
    }
    cmd
}

/// One stream entry as Redis returned it: its id and its fields, in order.
///
/// Consumers read entries straight from the reply ([`read_reply`]) instead of through
/// redis-rs's `StreamReadReply`, which copies the whole reply and builds a hash map per entry:
/// that conversion was a quarter of the audit consumer's CPU at bulk speed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Entry {
    /// The entry's stream id (`ms-seq`).
    pub id: String,
    /// Field names and values, alternating, as Redis sends them.
    fields: Vec<redis::Value>,
}

impl Entry {
    /// An entry without fields (one the stream no longer holds, say).
    pub fn new(id: String) -> Self {
        Self { id, fields: Vec::new() }
    }

    /// The value of the field `name` (its first occurrence), if the entry has one.
    pub fn get(&self, name: &str) -> Option<&redis::Value> {
        self.fields.chunks_exact(2).find(|pair| text_of(&pair[0]) == Some(name.as_bytes())).map(|pair| &pair[1])
    }

    /// The fields as (name, value) pairs; a name that is not text is skipped.
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &redis::Value)> {
        self.fields.chunks_exact(2).filter_map(|pair| Some((text_of(&pair[0])?, &pair[1])))
    }

    /// An entry from its reply element: `[id, [field, value, ...]]` (further elements, as
    /// `XREADGROUP ... CLAIM` adds, are ignored). Fields that are nil (an entry deleted while
    /// pending) read as none; a map of fields (RESP3) is flattened.
    fn from_value(value: redis::Value) -> Result<Self, redis::ParsingError> {
        let redis::Value::Array(parts) = value else {
            return Err(format!("a stream entry is {}, not an array", kind(&value)).into());
        };
        let mut parts = parts.into_iter();
        let id = match parts.next() {
            Some(redis::Value::BulkString(bytes)) => String::from_utf8(bytes)?,
            Some(redis::Value::SimpleString(id)) => id,
            other => {
                return Err(
                    format!("a stream entry's id is {}, not text", other.as_ref().map_or("missing", kind)).into()
                );
            }
        };
        let fields = match parts.next() {
            Some(redis::Value::Array(fields)) => fields,
            Some(redis::Value::Map(pairs)) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
            None | Some(redis::Value::Nil) => Vec::new(),
            Some(other) => return Err(format!("stream entry {id}'s fields are {}, not an array", kind(&other)).into()),
        };
        Ok(Self { id, fields })
    }
}

impl From<redis::streams::StreamId> for Entry {
    fn from(entry: redis::streams::StreamId) -> Self {
        let fields = entry.map.into_iter().flat_map(|(k, v)| [redis::Value::BulkString(k.into_bytes()), v]).collect();
        Self { id: entry.id, fields }
    }
}

/// The bytes of a text value.
pub(crate) fn text_of(value: &redis::Value) -> Option<&[u8]> {
    match value {
        redis::Value::BulkString(bytes) => Some(bytes),
        redis::Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// What a reply value is, for errors: never its contents (a whole batch of entries, payloads
/// included, does not belong in a log line).
fn kind(value: &redis::Value) -> &'static str {
    match value {
        redis::Value::Nil => "nil",
        redis::Value::Int(_) => "an integer",
        redis::Value::BulkString(_) | redis::Value::SimpleString(_) | redis::Value::VerbatimString { .. } => "text",
        redis::Value::Array(_) | redis::Value::Set(_) | redis::Value::Push { .. } => "an array",
        redis::Value::Map(_) | redis::Value::Attribute { .. } => "a map",
        _ => "another kind of value",
    }
}

/// The entries of an `XREAD` or `XREADGROUP` reply, every stream's in the order Redis sent
/// them (nil, a read that timed out, is none).
///
/// # Errors
/// When the reply is not shaped as those commands answer.
pub fn read_reply(reply: redis::Value) -> Result<Vec<Entry>, redis::ParsingError> {
    let streams: Vec<(redis::Value, redis::Value)> = match reply {
        redis::Value::Nil => return Ok(Vec::new()),
        // RESP3: a map from stream name to entries.
        redis::Value::Map(streams) => streams,
        // RESP2: an array of [name, entries] pairs.
        redis::Value::Array(streams) => streams
            .into_iter()
            .map(|stream| match stream {
                redis::Value::Array(pair) if pair.len() == 2 => {
                    let mut pair = pair.into_iter();
                    Ok((pair.next().unwrap_or(redis::Value::Nil), pair.next().unwrap_or(redis::Value::Nil)))
                }
                other => {
                    Err(redis::ParsingError::from(format!("a stream is {}, not a [name, entries] pair", kind(&other))))
                }
            })
            .collect::<Result<_, _>>()?,
        other => return Err(format!("a stream read reply is {}, not an array or a map", kind(&other)).into()),
    };
    let mut entries = Vec::new();
    for (_, stream_entries) in streams {
        match stream_entries {
            redis::Value::Array(list) => {
                entries.reserve(list.len());
                for entry in list {
                    entries.push(Entry::from_value(entry)?);
                }
            }
            redis::Value::Nil => {}
            other => return Err(format!("a stream's entries are {}, not an array", kind(&other)).into()),
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use redis::Value;

    use super::*;

    fn text(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn entry(id: &str, fields: &[&str]) -> Value {
        Value::Array(vec![text(id), Value::Array(fields.iter().map(|f| text(f)).collect())])
    }

    #[test]
    fn a_read_reply_gives_every_entry_in_order_with_its_fields() {
        let reply = Value::Array(vec![Value::Array(vec![
            text(EVENTS),
            Value::Array(vec![entry("1-0", &["outbox_id", "7", "type", "a"]), entry("1-1", &["outbox_id", "8"])]),
        ])]);
        let entries = read_reply(reply).expect("a well-formed reply");
        assert_eq!(entries.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["1-0", "1-1"]);
        assert_eq!(entries[0].get("type"), Some(&text("a")));
        assert_eq!(entries[0].get("target"), None);
        assert_eq!(entries[1].get("outbox_id"), Some(&text("8")));
        let pairs: Vec<(&[u8], &Value)> = entries[0].fields().collect();
        assert_eq!(pairs, [(b"outbox_id".as_slice(), &text("7")), (b"type".as_slice(), &text("a"))]);
    }

    #[test]
    fn resp3_maps_nil_reads_and_deleted_entries_are_read_too() {
        assert_eq!(read_reply(Value::Nil).expect("a timed-out read"), []);
        let reply = Value::Map(vec![(
            text(EVENTS),
            Value::Array(vec![
                Value::Array(vec![text("2-0"), Value::Map(vec![(text("outbox_id"), text("9"))])]),
                // An entry trimmed from the stream while pending: its id, no fields.
                Value::Array(vec![text("2-1"), Value::Nil]),
            ]),
        )]);
        let entries = read_reply(reply).expect("a RESP3 reply");
        assert_eq!(entries[0].get("outbox_id"), Some(&text("9")));
        assert_eq!(entries[1], Entry::new("2-1".into()));
    }

    #[test]
    fn a_reply_of_another_shape_is_an_error_not_a_panic() {
        for bad in [
            Value::Int(3),
            Value::Array(vec![Value::Int(1)]),
            Value::Array(vec![Value::Array(vec![text(EVENTS), Value::Int(1)])]),
            Value::Array(vec![Value::Array(vec![text(EVENTS), Value::Array(vec![Value::Int(1)])])]),
            Value::Array(vec![Value::Array(vec![text(EVENTS), Value::Array(vec![Value::Array(vec![Value::Int(1)])])])]),
            Value::Array(vec![Value::Array(vec![
                text(EVENTS),
                Value::Array(vec![Value::Array(vec![text("1-0"), Value::Int(2)])]),
            ])]),
        ] {
            assert!(read_reply(bad.clone()).is_err(), "{bad:?} was read");
        }
    }

    #[test]
    fn an_event_is_read_from_an_entry_and_a_missing_field_is_named() {
        let fields = ["outbox_id", "5", "type", "t", "target", "", "instance", "i", "payload", "{\"a\":1}"];
        let mut with_time = fields.to_vec();
        with_time.extend(["occurred_at", "2026-11-21T14:00:00Z"]);
        let reply = Value::Array(vec![Value::Array(vec![text(EVENTS), Value::Array(vec![entry("3-0", &with_time)])])]);
        let entries = read_reply(reply).expect("reply");
        let event = Event::from_entry(&entries[0]).expect("an event");
        assert_eq!(
            (event.id, event.event_type.as_str(), event.target, event.instance.as_deref()),
            (5, "t", None, Some("i"))
        );
        assert_eq!(event.payload.get(), r#"{"a":1}"#, "the payload's text, as it came");
        // Without its time, the entry is poison naming the field.
        let reply = Value::Array(vec![Value::Array(vec![text(EVENTS), Value::Array(vec![entry("3-1", &fields)])])]);
        let entries = read_reply(reply).expect("reply");
        assert_eq!(Event::from_entry(&entries[0]), Err(crate::event::BadEntry::Missing("occurred_at")));
    }
}
