//! `caracal apply -f FILE`: declared targets from a laptop, through the API. The files are read
//! and judged exactly as caracal-control judges `control.targets_dir` (the same parser and
//! plan), the plan is printed one line a change, and applied unless `--dry-run`.

use std::path::PathBuf;

use caracal_control::declared::{self, Declared, Step};
use caracal_store::target::{Target, TargetDigest};

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
    let http = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(10))
        // A listing of 50,000 targets, or a batch of 1,000 changes, takes a few seconds.
        .timeout(std::time::Duration::from_secs(120))
        .build()
        .map_err(|e| CliError::Step(format!("cannot build an HTTP client: {e}")))?;
    let api = Api { http, base: request.api.trim_end_matches('/').to_string(), token: request.token.clone() };
    // The registry's digests are asked for while the files are read: each is about half a
    // second at 50,000 targets, and they need different processes' CPU.
    let listing = tokio::spawn({
        let api = api.clone();
        async move { api.digests().await }
    });
    let files = request.files.clone();
    let read = tokio::task::spawn_blocking(move || read_files(&files))
        .await
        .map_err(|e| CliError::Step(format!("reading the files failed: {e}")))?;
    let targets = match read {
        Ok(targets) => targets,
        Err(problems) => {
            listing.abort();
            for problem in &problems {
                eprintln!("error: {problem}");
            }
            eprintln!("nothing applied: fix the files above first");
            return Ok(1);
        }
    };
    // What `--prune` may delete: the API's own targets, never the platform's (labelled
    // `caracal: platform`, which only the document tells).
    let prunable = |t: &Target| {
        request.prune && t.managed_by == "api" && t.spec.labels.get("caracal").map(String::as_str) != Some("platform")
    };
    let listed = listing.await.map_err(|e| CliError::Step(format!("listing the targets failed: {e}")))??;
    let steps = match listed {
        // The registry's digests name the few documents that differ; the rest are not read.
        Some(mut listed) => {
            let names = declared::to_read(&targets, &listed, |t| request.prune && t.managed_by == "api");
            if names.len() <= READ_ONE_BY_ONE {
                let mut read = Vec::with_capacity(names.len());
                for name in &names {
                    match api.document(name).await? {
                        Some(target) => read.push(target),
                        // Deleted since it was listed: planned as absent.
                        None => listed.retain(|t| &t.name != name),
                    }
                }
                declared::plan_by_digest(&targets, &listed, &read, prunable)
            } else {
                declared::plan(&targets, &api.list().await?, prunable)
            }
        }
        // An API of an older release lists documents only.
        None => declared::plan(&targets, &api.list().await?, prunable),
    };
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
        match api.send_batch(batch).await {
            Ok(Some(outcome)) => failed |= report(batch, &outcome),
            Ok(None) if n == 0 => {
                for step in &steps {
                    failed |= !api.send_one(step).await;
                }
                break;
            }
            Ok(None) => return Err(CliError::Step(format!("the API at {} stopped taking batches", api.base))),
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

/// The targets `files` declare, or every problem found in them (a name declared twice across
/// files included).
fn read_files(files: &[PathBuf]) -> Result<Vec<Declared>, Vec<declared::Problem>> {
    let mut targets: Vec<Declared> = Vec::new();
    // Where each name was first declared (a set, not a scan: a file may declare 50,000).
    let mut first: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    let mut problems = Vec::new();
    for path in files {
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
    if problems.is_empty() { Ok(targets) } else { Err(problems) }
}

/// The most documents read one by one after a listing of digests; a plan that differs in more
/// reads the whole listing instead (one request, about 400 bytes a target).
const READ_ONE_BY_ONE: usize = 64;

/// The API: its base URL, and the bearer sent with every request.
#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    /// A request to `path` (from `/v1`), with the bearer.
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let builder = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    /// Sends `builder`, naming the API when it cannot be reached.
    async fn send(&self, builder: reqwest::RequestBuilder) -> Result<reqwest::Response, CliError> {
        builder.send().await.map_err(|e| CliError::Step(format!("cannot reach the API at {}: {e}", self.base)))
    }

    /// `GET /v1/targets/_digests`: every target's digest, or `None` from an API of a release
    /// before digests (404 or 405).
    async fn digests(&self) -> Result<Option<Vec<TargetDigest>>, CliError> {
        let listed = self.send(self.request(reqwest::Method::GET, "/v1/targets/_digests")).await?;
        if matches!(listed.status().as_u16(), 404 | 405) {
            return Ok(None);
        }
        if !listed.status().is_success() {
            return Err(CliError::Step(format!(
                "listing the targets at {} answered {}",
                self.base,
                refusal(listed).await
            )));
        }
        let listed = listed.json().await.map_err(|e| CliError::Step(format!("the API's digests do not read: {e}")))?;
        Ok(Some(listed))
    }

    /// `GET /v1/targets`: every target's document.
    async fn list(&self) -> Result<Vec<Target>, CliError> {
        let listed = self.send(self.request(reqwest::Method::GET, "/v1/targets")).await?;
        if !listed.status().is_success() {
            return Err(CliError::Step(format!(
                "listing the targets at {} answered {}",
                self.base,
                refusal(listed).await
            )));
        }
        listed.json().await.map_err(|e| CliError::Step(format!("the API's target list does not read: {e}")))
    }

    /// `GET /v1/targets/{name}`: its document, or `None` when it was deleted since it was
    /// listed.
    async fn document(&self, name: &str) -> Result<Option<Target>, CliError> {
        let read = self.send(self.request(reqwest::Method::GET, &format!("/v1/targets/{name}"))).await?;
        if read.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !read.status().is_success() {
            let why = refusal(read).await;
            return Err(CliError::Step(format!("reading target `{name}` at {} answered {why}", self.base)));
        }
        let target = read.json().await.map_err(|e| CliError::Step(format!("target `{name}` does not read: {e}")))?;
        Ok(Some(target))
    }

    /// Sends `steps` as one `POST /v1/targets/_batch`: the API's outcome, `None` when the API
    /// has no batch route (404 or 405), or why the batch was not applied.
    async fn send_batch(&self, steps: &[Step]) -> Result<Option<serde_json::Value>, String> {
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
        let sent = self.request(reqwest::Method::POST, "/v1/targets/_batch").json(&body).send().await;
        match sent {
            Ok(r) if r.status().is_success() => {
                r.json().await.map(Some).map_err(|e| format!("the answer does not read: {e}"))
            }
            Ok(r) if matches!(r.status().as_u16(), 404 | 405) => Ok(None),
            Ok(r) => Err(format!("refused, {}", refusal(r).await)),
            Err(e) => Err(format!("not sent: {e}")),
        }
    }

    /// Sends one step as its own request (an API without batches); whether it was applied.
    async fn send_one(&self, step: &Step) -> bool {
        let sent = match step {
            Step::Create(d) => self.request(reqwest::Method::POST, "/v1/targets").json(&d.spec).send().await,
            Step::Update(d, _) => {
                self.request(reqwest::Method::PUT, &format!("/v1/targets/{}", d.spec.name)).json(&d.spec).send().await
            }
            Step::Delete(name) => self.request(reqwest::Method::DELETE, &format!("/v1/targets/{name}")).send().await,
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
