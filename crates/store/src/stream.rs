//! Stream names and publishing.

use redis::aio::ConnectionManager;

use crate::{Error, Event};

/// Every change, relayed from the outbox; consumed by audit (and anyone else).
pub const EVENTS: &str = "caracal.events";
/// Entries of `caracal.events` that could not be processed, with the reason.
pub const EVENTS_DLQ: &str = "caracal.events.dlq";
/// Token revocations from the STS.
pub const REVOCATIONS: &str = "caracal.revocations";

/// Appends `events` to `stream` in one pipeline, trimming it to about `max_len` entries
/// (`MAXLEN ~`, so trimming stays cheap). Either every entry was sent or an error is returned;
/// a retry may then add some twice, which consumers absorb by outbox id.
///
/// # Errors
/// When Redis cannot be reached or refuses an entry.
pub async fn publish(
    conn: &mut ConnectionManager,
    stream: &str,
    events: &[Event],
    max_len: usize,
) -> Result<(), Error> {
    let mut pipe = redis::pipe();
    for event in events {
        pipe.cmd("XADD").arg(stream).arg("MAXLEN").arg("~").arg(max_len).arg("*");
        for (field, value) in event.to_fields() {
            pipe.arg(field).arg(value);
        }
        pipe.ignore();
    }
    pipe.query_async::<()>(conn).await?;
    Ok(())
}
