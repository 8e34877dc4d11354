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
    let mut problems = Vec::new();
    for path in &request.files {
        let files = declared::read(path);
        problems.extend(files.problems);
        for d in files.targets {
            match targets.iter().find(|t| t.spec.name == d.spec.name) {
                Some(first) => problems.push(declared::Problem {
                    message: format!("target `{}` is declared in `{}` already", d.spec.name, first.file),
                    line: 0,
                    file: d.file,
                }),
                None => targets.push(d),
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
        .timeout(std::time::Duration::from_secs(10))
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
    let mut failed = false;
    for step in &steps {
        if request.dry_run {
            println!("{step}");
            continue;
        }
        let sent = match step {
            Step::Create(d) => with_token(http.post(format!("{api}/v1/targets")).json(&d.spec)).send().await,
            Step::Update(d, _) => {
                with_token(http.put(format!("{api}/v1/targets/{}", d.spec.name)).json(&d.spec)).send().await
            }
            Step::Delete(name) => with_token(http.delete(format!("{api}/v1/targets/{name}"))).send().await,
        };
        match sent {
            Ok(r) if r.status().is_success() => println!("{step}"),
            Ok(r) => {
                failed = true;
                println!("{step}: refused, {}", refusal(r).await);
            }
            Err(e) => {
                failed = true;
                println!("{step}: not sent ({e})");
            }
        }
    }
    if request.dry_run {
        println!("(dry run: nothing changed)");
    }
    Ok(u8::from(failed))
}

/// `422 validation_failed: ...` from an API error answer.
async fn refusal(response: reqwest::Response) -> String {
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    let code = body["error"]["code"].as_str().unwrap_or("error");
    let message = body["error"]["message"].as_str().unwrap_or("");
    format!("{status} {code}: {message}")
}
