//! `caracal apply -f FILE`: declared targets from a laptop, through the API. The files are read
//! and judged exactly as caracal-control judges `control.targets_dir` (the same parser and
//! plan), the plan is printed one line a change, and applied unless `--dry-run`.

use std::path::PathBuf;

use caracal_control::declared::{self, Declared, Step};
use caracal_store::target::Target;

use crate::error::CliError;

/// What to apply, where, and how.
#[derive(Debug)]
pub struct Apply {
    /// Files or directories of targets.
    pub files: Vec<PathBuf>,
    /// The API's base URL.
    pub api: String,
    /// A bearer with `targets:write` (the admin token or an STS token).
    pub token: Option<String>,
    /// Print the plan only.
    pub dry_run: bool,
    /// Also delete the API's targets no file declares (never the platform's own, never those
    /// caracal-control manages).
    pub prune: bool,
}

/// Reads the files, plans against the API's targets, prints the plan and applies it. Returns
/// the exit code: 0 when everything planned was done (or only planned), 1 when a file is
/// broken (nothing is changed then) or a change was refused.
///
/// # Errors
/// When the API cannot be reached or answers the listing with an error.
pub async fn apply(request: Apply) -> Result<u8, CliError> {
    let mut targets: Vec<Declared> = Vec::new();
    // Where each name was first declared (a set, not a scan: a file may declare 50,000).
    let mut first: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    let mut problems = Vec::new();
    for path in &request.files {
        let files = declared::read(path);
        problems.extend(files.problems);
        for d in files.targets {
            match first.get(&d.spec.name) {
                Some(file) => problems.push(declared::Problem {
                    message: format!("target `{}` is declared in `{file}` already", d.spec.name),
                    line: 0,
                    file: d.file,
                }),
                None => {
                    first.insert(d.spec.name.clone(), d.file.clone());
                    targets.push(d);
                }
            }
        }
    }
    if !problems.is_empty() {
        for problem in &problems {
            eprintln!("error: {problem}");
        }
        eprintln!("nothing applied: fix the files above first");
        return Ok(1);
    }
    let http = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(10))
        // A listing of 50,000 targets, or a batch of 1,000 changes, takes a few seconds.
        .timeout(std::time::Duration::from_secs(120))
        .build()
        .map_err(|e| CliError::Step(format!("cannot build an HTTP client: {e}")))?;
    let api = request.api.trim_end_matches('/');
    let with_token = |builder: reqwest::RequestBuilder| match &request.token {
        Some(token) => builder.bearer_auth(token),
        None => builder,
    };
    let listed = with_token(http.get(format!("{api}/v1/targets")))
        .send()
        .await
        .map_err(|e| CliError::Step(format!("cannot reach the API at {api}: {e}")))?;
    if !listed.status().is_success() {
        return Err(CliError::Step(format!("listing the targets at {api} answered {}", refusal(listed).await)));
    }
    let existing: Vec<Target> =
        listed.json().await.map_err(|e| CliError::Step(format!("the API's target list does not read: {e}")))?;
    let steps = declared::plan(&targets, &existing, |t| {
        request.prune && t.managed_by == "api" && t.spec.labels.get("caracal").map(String::as_str) != Some("platform")
    });
    if steps.is_empty() {
        println!("no changes");
        return Ok(0);
    }
    if request.dry_run {
        for step in &steps {
            println!("{step}");
        }
        println!("(dry run: nothing changed)");
        return Ok(0);
    }
    // In batches of up to 1,000 changes, one request and one transaction each; an API of an
    // older release, which has no batch route, is sent one request per change.
    let mut failed = false;
    for (n, batch) in batches(&steps).into_iter().enumerate() {
        match send_batch(&http, api, &with_token, batch).await {
            Ok(Some(outcome)) => failed |= report(batch, &outcome),
            Ok(None) if n == 0 => {
                for step in &steps {
                    failed |= !send_one(&http, api, &with_token, step).await;
                }
                break;
            }
            Ok(None) => return Err(CliError::Step(format!("the API at {api} stopped taking batches"))),
            Err(why) => {
                failed = true;
                for step in batch {
                    println!("{step}: not applied ({why})");
                }
            }
        }
    }
    Ok(u8::from(failed))
}

/// The most changes one batch request carries (the API's bound).
const BATCH: usize = 1_000;

/// The most document bytes one batch request carries: under the API's default body limit
/// (`http.body_limit_bytes`, 1 MiB), with room for the JSON around them.
const BATCH_BYTES: usize = 768 * 1024;

/// `steps` cut into batches of at most [`BATCH`] changes and [`BATCH_BYTES`] of documents.
fn batches(steps: &[Step]) -> Vec<&[Step]> {
    let mut batches = Vec::new();
    let (mut from, mut bytes) = (0, 0);
    for (i, step) in steps.iter().enumerate() {
        let size = match step {
            Step::Create(d) | Step::Update(d, _) => serde_json::to_vec(&d.spec).map_or(0, |v| v.len()),
            Step::Delete(name) => name.len() + 3,
        };
        if i > from && (i - from == BATCH || bytes + size > BATCH_BYTES) {
            batches.push(&steps[from..i]);
            (from, bytes) = (i, 0);
        }
        bytes += size;
    }
    if from < steps.len() {
        batches.push(&steps[from..]);
    }
    batches
}

/// Sends `steps` as one `POST /v1/targets/_batch`: the API's outcome, `None` when the API has
/// no batch route (404 or 405), or why the batch was not applied.
async fn send_batch(
    http: &reqwest::Client,
    api: &str,
    with_token: &impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    steps: &[Step],
) -> Result<Option<serde_json::Value>, String> {
    let mut body = serde_json::json!({"create": [], "replace": [], "delete": []});
    for step in steps {
        let (list, value) = match step {
            Step::Create(d) => ("create", serde_json::to_value(&d.spec).unwrap_or_default()),
            Step::Update(d, _) => ("replace", serde_json::to_value(&d.spec).unwrap_or_default()),
            Step::Delete(name) => ("delete", serde_json::Value::String(name.clone())),
        };
        if let Some(list) = body[list].as_array_mut() {
            list.push(value);
        }
    }
    let sent = with_token(http.post(format!("{api}/v1/targets/_batch")).json(&body)).send().await;
    match sent {
        Ok(r) if r.status().is_success() => {
            r.json().await.map(Some).map_err(|e| format!("the answer does not read: {e}"))
        }
        Ok(r) if matches!(r.status().as_u16(), 404 | 405) => Ok(None),
        Ok(r) => Err(format!("refused, {}", refusal(r).await)),
        Err(e) => Err(format!("not sent: {e}")),
    }
}

/// Prints each step as the batch's outcome tells; whether any was refused.
fn report(steps: &[Step], outcome: &serde_json::Value) -> bool {
    let name = |step: &Step| match step {
        Step::Create(d) | Step::Update(d, _) => d.spec.name.clone(),
        Step::Delete(name) => name.clone(),
    };
    let refused: std::collections::HashMap<&str, String> = outcome["refused"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let why = format!("{} {}", r["code"].as_str().unwrap_or("refused"), r["message"].as_str().unwrap_or(""));
            (r["name"].as_str().unwrap_or(""), why)
        })
        .collect();
    for step in steps {
        match refused.get(name(step).as_str()) {
            Some(why) => println!("{step}: refused, {why}"),
            None => println!("{step}"),
        }
    }
    !refused.is_empty()
}

/// Sends one step as its own request (an API without batches); whether it was applied.
async fn send_one(
    http: &reqwest::Client,
    api: &str,
    with_token: &impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    step: &Step,
) -> bool {
    let sent = match step {
        Step::Create(d) => with_token(http.post(format!("{api}/v1/targets")).json(&d.spec)).send().await,
        Step::Update(d, _) => {
            with_token(http.put(format!("{api}/v1/targets/{}", d.spec.name)).json(&d.spec)).send().await
        }
        Step::Delete(name) => with_token(http.delete(format!("{api}/v1/targets/{name}"))).send().await,
    };
    match sent {
        Ok(r) if r.status().is_success() => {
            println!("{step}");
            true
        }
        Ok(r) => {
            println!("{step}: refused, {}", refusal(r).await);
            false
        }
        Err(e) => {
            println!("{step}: not sent ({e})");
            false
        }
    }
}

/// `422 validation_failed: ...` from an API error answer.
async fn refusal(response: reqwest::Response) -> String {
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    let code = body["error"]["code"].as_str().unwrap_or("error");
    let message = body["error"]["message"].as_str().unwrap_or("");
    format!("{status} {code}: {message}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(name: &str, labels: usize) -> Step {
        let labels: serde_json::Map<String, serde_json::Value> =
            (0..labels).map(|i| (format!("l{i}"), serde_json::Value::String("x".repeat(200)))).collect();
        let spec = serde_json::from_value(
            serde_json::json!({"name": name, "instances": ["http://127.0.0.1:1"], "labels": labels}),
        )
        .expect("a document");
        Step::Create(Declared { spec, file: "f.yaml".into() })
    }

    #[test]
    fn batches_hold_at_most_a_thousand_changes_and_768_kib() {
        let small: Vec<Step> = (0..2_500).map(|i| create(&format!("t{i}"), 0)).collect();
        let sizes: Vec<usize> = batches(&small).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, [1_000, 1_000, 500]);
        // Documents of about 6.5 KB: about 120 to a batch.
        let large: Vec<Step> = (0..300).map(|i| create(&format!("t{i}"), 30)).collect();
        let cut = batches(&large);
        assert!(cut.len() >= 3 && cut.iter().map(|b| b.len()).sum::<usize>() == 300, "{}", cut.len());
        for batch in cut {
            let bytes: usize = batch
                .iter()
                .map(|s| match s {
                    Step::Create(d) => serde_json::to_vec(&d.spec).map_or(0, |v| v.len()),
                    _ => 0,
                })
                .sum();
            assert!(bytes <= BATCH_BYTES, "{bytes}");
        }
        assert!(batches(&[]).is_empty());
    }
}
