//! [`ReadyBody`]: a `/ready` answer read back by a client (the CLI's `status`, the api's status
//! page), so the shape `/ready` writes is read in one place, next to where it is written.

use serde_json::Value;

/// A `/ready` (or `/health`) body as a client sees it. Whatever is missing or malformed reads
/// as absent: a client reports it, never fails on it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReadyBody {
    /// `pass`, `warn` or `fail`, when the body says.
    pub status: Option<String>,
    /// `dev`, `rc` or `stable`, when the body says.
    pub mode: Option<String>,
    /// The body's own `output` (`draining`, say).
    pub output: Option<String>,
    /// Every check, in the body's (name) order.
    pub checks: Vec<CheckEntry>,
}

/// One check of a `/ready` body.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckEntry {
    /// `component:measurement`.
    pub name: String,
    /// `process`, `storage`, `delivery` or `service` (`?` when absent).
    pub rung: String,
    /// `pass`, `warn`, `fail` or `skipped` (`unknown` when absent).
    pub status: String,
    /// Whether it fails readiness (true when absent).
    pub required: bool,
    /// Its error text, shown only in dev or to a caller with the metrics bearer.
    pub output: Option<String>,
}

impl ReadyBody {
    /// Reads `bytes`; anything not JSON is an empty body.
    pub fn parse(bytes: &[u8]) -> Self {
        let value: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
        let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_string);
        let checks = value
            .get("checks")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter_map(|(name, entries)| {
                let entry = entries.get(0)?;
                Some(CheckEntry {
                    name: name.clone(),
                    rung: text(entry, "rung").unwrap_or_else(|| "?".into()),
                    status: text(entry, "status").unwrap_or_else(|| "unknown".into()),
                    required: entry.get("required").and_then(Value::as_bool).unwrap_or(true),
                    output: text(entry, "output"),
                })
            })
            .collect();
        Self { status: text(&value, "status"), mode: text(&value, "mode"), output: text(&value, "output"), checks }
    }

    /// The checks on `rung`.
    pub fn rung<'a>(&'a self, rung: &'a str) -> impl Iterator<Item = &'a CheckEntry> + 'a {
        self.checks.iter().filter(move |c| c.rung == rung)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_reads_back_and_garbage_reads_as_empty() {
        let body = ReadyBody::parse(
            br#"{"status":"fail","mode":"rc","checks":{
                "postgres:connectivity":[{"status":"fail","rung":"storage","required":true,"output":"refused"}],
                "outbox:dead":[{"status":"pass","rung":"delivery","required":false}]}}"#,
        );
        assert_eq!((body.status.as_deref(), body.mode.as_deref()), (Some("fail"), Some("rc")));
        assert_eq!(body.checks.len(), 2);
        assert_eq!(body.checks[1].name, "postgres:connectivity");
        assert_eq!(body.checks[1].output.as_deref(), Some("refused"));
        assert!(!body.checks[0].required);
        assert_eq!(body.rung("storage").count(), 1);
        assert_eq!(ReadyBody::parse(b"<html>"), ReadyBody::default());
    }
}
