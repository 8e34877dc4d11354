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
    let mut pipe = redis::pipe();
    for event in events {
        let fields = event.to_fields();
        // Only the main stream routes: `publish` to another stream sends just there.
        let extra = if stream == EVENTS { extra_streams(event) } else { &[] };
        for target in std::iter::once(&stream).chain(extra) {
            pipe.cmd("XADD").arg(*target).arg("MAXLEN").arg("~").arg(max_len).arg("*");
            for (field, value) in &fields {
                pipe.arg(*field).arg(value);
            }
            pipe.ignore();
        }
    }
    pipe.query_async::<()>(conn).await?;
    Ok(())
}
