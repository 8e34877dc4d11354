//! `/metrics.json`: the same figures as `/metrics`, as JSON.
//!
//! It is built by reading back the OpenMetrics text the registry just encoded, so the two
//! endpoints can never disagree about a name, a label or a value.

use serde_json::{Map, Value, json};

/// Converts OpenMetrics text into `{"metrics": [{"name", "type", "help", "samples": [...]}]}`.
/// Each sample has its full `name` (`_total`, `_bucket`, ... included), `labels` and `value`;
/// non-finite values (`+Inf`, `NaN`) are strings, as JSON has no numbers for them.
pub(crate) fn from_openmetrics(text: &str) -> Value {
    let mut families: Vec<Value> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            families.push(json!({ "name": name, "type": kind, "help": "", "samples": [] }));
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            // HELP precedes TYPE in prometheus-client's output: open the family here.
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            families.push(json!({ "name": name, "type": "unknown", "help": help, "samples": [] }));
        } else if line.starts_with('#') || line.is_empty() {
            continue;
        } else if let Some(sample) = parse_sample(line)
            && let Some(samples) = families.last_mut().and_then(|f| f["samples"].as_array_mut())
        {
            samples.push(sample);
        }
    }
    // Merge each HELP-opened family with the TYPE line that follows it.
    let mut merged: Vec<Value> = Vec::new();
    for family in families {
        match merged.last_mut() {
            Some(last) if last["name"] == family["name"] => {
                last["type"] = family["type"].clone();
                if let (Some(into), Some(from)) = (last["samples"].as_array_mut(), family["samples"].as_array()) {
                    into.extend(from.iter().cloned());
                }
            }
            _ => merged.push(family),
        }
    }
    json!({ "metrics": merged })
}

/// Parses `name{k="v",...} value [timestamp]`.
fn parse_sample(line: &str) -> Option<Value> {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => return None,
    };
    let mut labels = Map::new();
    let rest = if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        let mut end = None;
        loop {
            match chars.peek() {
                Some((i, '}')) => {
                    end = Some(*i + 1);
                    break;
                }
                Some((_, ',')) => {
                    chars.next();
                }
                Some(_) => {}
                None => break,
            }
            let mut key = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return None;
            }
            let mut value = String::new();
            while let Some((_, c)) = chars.next() {
                match c {
                    '\\' => match chars.next().map(|(_, c)| c) {
                        Some('n') => value.push('\n'),
                        Some(other) => value.push(other),
                        None => return None,
                    },
                    '"' => break,
                    other => value.push(other),
                }
            }
            labels.insert(key, Value::String(value));
        }
        &body[end?..]
    } else {
        rest
    };
    let raw = rest.split_whitespace().next()?;
    let value = match raw.parse::<f64>() {
        Ok(v) if v.is_finite() => json!(v),
        _ => json!(raw),
    };
    Some(json!({ "name": name, "labels": labels, "value": value }))
}

#[cfg(test)]
mod tests {
    use super::from_openmetrics;

    #[test]
    fn reads_back_families_samples_and_escaped_labels() {
        let text = "# HELP up Whether up.\n# TYPE up gauge\nup{job=\"a\\\"b\",x=\"1\"} 1\n# HELP c Count.\n# TYPE c counter\nc_total 3\n# EOF\n";
        let json = from_openmetrics(text);
        let metrics = json["metrics"].as_array().expect("array");
        assert_eq!(metrics.len(), 2);
        assert_eq!(metrics[0]["name"], "up");
        assert_eq!(metrics[0]["type"], "gauge");
        assert_eq!(metrics[0]["help"], "Whether up.");
        assert_eq!(metrics[0]["samples"][0]["labels"]["job"], "a\"b");
        assert_eq!(metrics[0]["samples"][0]["labels"]["x"], "1");
        assert_eq!(metrics[1]["samples"][0]["name"], "c_total");
        assert_eq!(metrics[1]["samples"][0]["value"], 3.0);
    }

    #[test]
    fn infinite_bucket_bounds_stay_strings() {
        let json = from_openmetrics("# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\n");
        assert_eq!(json["metrics"][0]["samples"][0]["labels"]["le"], "+Inf");
        assert_eq!(json["metrics"][0]["samples"][0]["value"], 2.0);
    }
}
