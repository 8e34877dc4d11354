//! `GET /v1/targets/{name}/metrics` and `GET /v1/metrics?label=key=value`: scrape every
//! instance concurrently, each with its own timeout, and answer 200 with whatever came back —
//! an instance that fails is a `caracal_federation_error` series, never a failed or silently
//! thinner answer.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::GatewayState;
use crate::error::GatewayError;
use crate::exposition::Format;
use crate::metrics::ResultLabels;
use crate::registry::TargetInfo;
use crate::render::{InstanceResult, Options, render_to};

/// Bytes of the answer rendered before they are handed to the client.
const CHUNK: usize = 256 * 1024;
/// The longest a client may leave a rendered chunk unread before the answer is abandoned.
const STALL: Duration = Duration::from_secs(30);

/// Longest `match[]` regex accepted, and the compiled size allowed.
pub(crate) const MAX_MATCH_LEN: usize = 1024;
const MAX_REGEX_BYTES: usize = 1 << 20;

/// Query parameters of a federation request.
#[derive(Debug, Default)]
struct Query {
    only_target_metrics: bool,
    metrics_path: Option<String>,
    matchers: Vec<regex::Regex>,
    selector: Vec<(String, String)>,
}

/// Federate every instance of one target.
#[utoipa::path(get, path = "/v1/targets/{name}/metrics", tag = "federation",
    params(("name" = String, Path, description = "Target name"),
           ("only_target_metrics" = Option<bool>, Query, description = "Leave out the caracal_federation_* series"),
           ("metrics_path" = Option<String>, Query, description = "Override the target's metrics path"),
           ("match[]" = Option<Vec<String>>, Query, description = "Keep only families whose name fully matches (repeatable)")),
    responses((status = 200, description = "The merged exposition (text 0.0.4 or OpenMetrics 1.0 by Accept)", content_type = "text/plain"),
              (status = 400, description = "bad_match, bad_metrics_path or bad_timeout_header"),
              (status = 401, description = "No metrics bearer nor a valid token"), (status = 403, description = "The token lacks metrics:read"),
              (status = 404, description = "No such target"), (status = 406, description = "Unacceptable Accept"),
              (status = 414, description = "The request line is too long for the HTTP server"),
              (status = 503, description = "The registry cannot be read and nothing is cached")),
    security(("metrics_bearer" = []), ("sts_token" = ["metrics:read"])))]
pub(crate) async fn target(
    State(state): State<GatewayState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let started = Instant::now();
    let result = async {
        let query = parse_query(query.as_deref(), state.config.max_matchers, false)?;
        let target = state.registry.target(&name).await.map_err(|_| GatewayError::Unavailable)?;
        let target = target.ok_or(GatewayError::NotFound(name))?;
        federate(&state, &headers, vec![target], query).await
    }
    .await;
    finish(&state, started, result)
}

/// Federate every target whose labels match a selector.
#[utoipa::path(get, path = "/v1/metrics", tag = "federation",
    params(("label" = Vec<String>, Query, description = "key=value; every one must hold (repeatable)"),
           ("only_target_metrics" = Option<bool>, Query, description = "Leave out the caracal_federation_* series"),
           ("match[]" = Option<Vec<String>>, Query, description = "Keep only families whose name fully matches (repeatable)")),
    responses((status = 200, description = "The merged exposition of every matching target", content_type = "text/plain"),
              (status = 400, description = "bad_selector, bad_match or bad_timeout_header"),
              (status = 401, description = "No metrics bearer nor a valid token"), (status = 403, description = "The token lacks metrics:read"),
              (status = 406, description = "Unacceptable Accept"), (status = 414, description = "The request line is too long for the HTTP server"),
              (status = 503, description = "The registry cannot be read and nothing is cached")),
    security(("metrics_bearer" = []), ("sts_token" = ["metrics:read"])))]
pub(crate) async fn selected(
    State(state): State<GatewayState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let started = Instant::now();
    let result = async {
        let query = parse_query(query.as_deref(), state.config.max_matchers, true)?;
        let targets = state.registry.targets().await.map_err(|_| GatewayError::Unavailable)?;
        let chosen: Vec<Arc<TargetInfo>> = targets
            .iter()
            .filter(|t| query.selector.iter().all(|(k, v)| t.labels.get(k) == Some(v)))
            .cloned()
            .collect();
        federate(&state, &headers, chosen, query).await
    }
    .await;
    finish(&state, started, result)
}

fn finish(state: &GatewayState, started: Instant, result: Result<(Response, &'static str), GatewayError>) -> Response {
    state.metrics.duration.observe(started.elapsed().as_secs_f64());
    let (response, label) = match result {
        Ok((response, label)) => (response, label),
        Err(e) => {
            let label = e.result();
            (e.into_response(), label)
        }
    };
    state.metrics.federations.get_or_create(&ResultLabels { result: label }).inc();
    response
}

async fn federate(
    state: &GatewayState,
    headers: &HeaderMap,
    targets: Vec<Arc<TargetInfo>>,
    query: Query,
) -> Result<(Response, &'static str), GatewayError> {
    let format = negotiate(headers)?;
    let cap = scrape_timeout_cap(headers, state.config.timeout_margin)?;
    let total = Arc::new(AtomicUsize::new(0));
    let per_request = Arc::new(tokio::sync::Semaphore::new(state.config.request_concurrency));
    let mut jobs = JoinSet::new();
    let mut index = 0usize;
    for target in &targets {
        let path = query.metrics_path.clone().unwrap_or_else(|| target.metrics_path.clone());
        let timeout = cap.map_or(target.timeout, |c| target.timeout.min(c));
        for url in &target.instances {
            let (state, target, total, per_request) =
                (state.clone(), Arc::clone(target), Arc::clone(&total), Arc::clone(&per_request));
            let scrape_url = format!("{}{path}", url.trim_end_matches('/'));
            let base_url = url.clone();
            let instance = host_port(url);
            let identity: Vec<String> =
                crate::render::identity(&target, &instance).into_iter().map(|(k, _)| k).collect();
            let order = index;
            index += 1;
            jobs.spawn(
                async move {
                    // Bounded per request and for the whole gateway; the timeout starts once a
                    // slot is held, so waiting for a slot does not eat an instance's time.
                    let _request_slot = per_request.acquire_owned().await;
                    let _global_slot = state.global.clone().acquire_owned().await;
                    let cap = state.config.request_body_cap_bytes;
                    let scraped =
                        state.scraper.scrape(&target, &base_url, &scrape_url, timeout, &total, cap, &identity).await;
                    let label = scraped.outcome.as_ref().err().map_or("ok", |r| r.label());
                    state.metrics.instance_scrapes.get_or_create(&ResultLabels { result: label }).inc();
                    (order, InstanceResult { target, instance, scraped })
                }
                // The scrape's CLIENT span (and the `traceparent` it sends) belongs to this
                // request's trace, though it runs on a task of its own.
                .in_current_span(),
            );
        }
    }
    let mut results: Vec<(usize, InstanceResult)> = Vec::with_capacity(index);
    while let Some(done) = jobs.join_next().await {
        if let Ok(result) = done {
            results.push(result);
        }
    }
    // Registry order (targets by name, instances sorted), whatever order they finished in.
    results.sort_by_key(|(order, _)| *order);
    let results: Vec<InstanceResult> = results.into_iter().map(|(_, r)| r).collect();
    let failed = results.iter().filter(|r| r.scraped.outcome.is_err()).count();
    let label = match (failed, results.len()) {
        (0, _) => "complete",
        (f, n) if f == n => "failed",
        _ => "partial",
    };
    let options = Options { format, only_target_metrics: query.only_target_metrics, matchers: query.matchers };
    // Rendering a large merge takes milliseconds of CPU: off the async workers, and streamed in
    // chunks so the answer (larger than the bodies, with identity labels on every sample) is
    // never held whole. A client that stops reading for `STALL` ends it.
    let (chunks, received) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let runtime = tokio::runtime::Handle::current();
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || {
        let _entered = span.enter();
        render_to(&results, &options, CHUNK, &mut |rendered: &mut Vec<u8>| {
            let chunk = std::mem::replace(rendered, Vec::with_capacity(CHUNK + 64 * 1024));
            runtime.block_on(async { matches!(tokio::time::timeout(STALL, chunks.send(chunk)).await, Ok(Ok(()))) })
        });
    });
    let stream = futures_util::stream::unfold(received, |mut received| async move {
        let chunk = received.recv().await?;
        Some((Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(chunk)), received))
    });
    let body = axum::body::Body::from_stream(stream);
    let content_type = match format {
        Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        Format::Text => "text/plain; version=0.0.4; charset=utf-8",
    };
    let mut response = body.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok((response, label))
}

/// `metrics_path`: `/` then printable ASCII but `?`, `#` and `\`, no `..` (every `.` is
/// followed by another character or ends the path); at most 256 characters. The OpenAPI
/// document states exactly this pattern.
pub(crate) const METRICS_PATH_PATTERN: &str = "^/(\\.?[!\"$%&'()*+,\\-/0-9:;<=>@A-Z\\[\\]^_`a-z{|}~])*\\.?$";
/// `label`: `key=value`, the key a label name (the value anything).
pub(crate) const LABEL_SELECTOR_PATTERN: &str = "^[A-Za-z_][A-Za-z0-9_]{0,62}=";

/// The query patterns, compiled once.
static METRICS_PATH: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| compile(METRICS_PATH_PATTERN));
static LABEL_SELECTOR: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| compile(LABEL_SELECTOR_PATTERN));

fn compile(pattern: &str) -> regex::Regex {
    regex::Regex::new(pattern).unwrap_or_else(|e| unreachable!("a constant pattern: {e}"))
}

fn parse_query(raw: Option<&str>, max_matchers: usize, selector_route: bool) -> Result<Query, GatewayError> {
    let mut query = Query::default();
    for (key, value) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        match key.as_ref() {
            "only_target_metrics" => {
                query.only_target_metrics = match value.as_ref() {
                    "" | "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(GatewayError::bad("bad_query", "only_target_metrics takes true or false")),
                }
            }
            "metrics_path" if !selector_route => {
                if value.len() > 256 || !METRICS_PATH.is_match(&value) {
                    return Err(GatewayError::bad(
                        "bad_metrics_path",
                        "metrics_path must start with `/`, be at most 256 printable characters, without `..`, `?` or `#`",
                    ));
                }
                query.metrics_path = Some(value.into_owned());
            }
            "match[]" => {
                if query.matchers.len() >= max_matchers {
                    return Err(GatewayError::bad("bad_match", format!("at most {max_matchers} match[] parameters")));
                }
                if value.is_empty() || value.len() > MAX_MATCH_LEN {
                    return Err(GatewayError::bad(
                        "bad_match",
                        format!("match[] must be 1 to {MAX_MATCH_LEN} characters"),
                    ));
                }
                // Anchored, as Prometheus anchors its regexes.
                let regex = regex::RegexBuilder::new(&format!("^(?:{value})$"))
                    .size_limit(MAX_REGEX_BYTES)
                    .build()
                    .map_err(|e| {
                        GatewayError::bad(
                            "bad_match",
                            format!("match[] is not a valid regex: {}", first_line(&e.to_string())),
                        )
                    })?;
                query.matchers.push(regex);
            }
            "label" if selector_route => {
                let (k, v) = value
                    .split_once('=')
                    .filter(|_| LABEL_SELECTOR.is_match(&value))
                    .ok_or_else(|| GatewayError::bad("bad_selector", "label takes key=value, the key a label name"))?;
                query.selector.push((k.to_string(), v.to_string()));
            }
            // Unknown parameters are ignored, as Prometheus' own endpoints do.
            _ => {}
        }
    }
    if selector_route && query.selector.is_empty() {
        return Err(GatewayError::bad("bad_selector", "give at least one label=key=value"));
    }
    Ok(query)
}

fn first_line(text: &str) -> String {
    text.lines().map(str::trim).rfind(|l| !l.is_empty()).unwrap_or("").chars().take(200).collect()
}

/// The output format the `Accept` header asks for: OpenMetrics when it is accepted at least as
/// much as text; text when no header, `*/*` or `text/*`.
fn negotiate(headers: &HeaderMap) -> Result<Format, GatewayError> {
    let mut values = headers.get_all(header::ACCEPT).iter().peekable();
    if values.peek().is_none() {
        return Ok(Format::Text);
    }
    let (mut openmetrics, mut text) = (0.0f32, 0.0f32);
    for value in values {
        let value = value.to_str().map_err(|_| GatewayError::NotAcceptable)?;
        for range in value.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.strip_prefix("q="))
                .next()
                .map_or(Some(1.0), |q| q.parse::<f32>().ok().filter(|q| (0.0..=1.0).contains(q)))
                .ok_or(GatewayError::NotAcceptable)?;
            match media.as_str() {
                "application/openmetrics-text" => openmetrics = openmetrics.max(q),
                "text/plain" | "text/*" => text = text.max(q),
                "*/*" => text = text.max(q),
                _ => {}
            }
        }
    }
    match (openmetrics > 0.0, text > 0.0) {
        (true, _) if openmetrics >= text => Ok(Format::OpenMetrics),
        (_, true) => Ok(Format::Text),
        (true, false) => Ok(Format::OpenMetrics),
        (false, false) => Err(GatewayError::NotAcceptable),
    }
}

/// Prometheus' `X-Prometheus-Scrape-Timeout-Seconds` less the margin, when present.
fn scrape_timeout_cap(headers: &HeaderMap, margin: Duration) -> Result<Option<Duration>, GatewayError> {
    let Some(value) = headers.get("x-prometheus-scrape-timeout-seconds") else { return Ok(None) };
    let seconds = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0 && *s <= 3600.0)
        .ok_or_else(|| {
            GatewayError::bad("bad_timeout_header", "X-Prometheus-Scrape-Timeout-Seconds must be a number of seconds")
        })?;
    let budget = Duration::from_secs_f64(seconds);
    // Never below a tenth of the budget, so a tiny budget still leaves instances some time.
    Ok(Some(budget.saturating_sub(margin).max(budget / 10)))
}

/// `host:port` of an instance URL (the port defaulted by scheme).
fn host_port(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => match (u.host_str(), u.port_or_known_default()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_string(),
            _ => url.to_string(),
        },
        Err(_) => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, HeaderValue};

    use super::*;

    fn accept(value: &str) -> Result<Format, GatewayError> {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_str(value).expect("header"));
        negotiate(&headers)
    }

    #[test]
    fn accept_picks_the_format() {
        assert_eq!(negotiate(&HeaderMap::new()).ok(), Some(Format::Text));
        assert_eq!(accept("application/openmetrics-text;version=1.0.0").ok(), Some(Format::OpenMetrics));
        assert_eq!(
            accept("application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4").ok(),
            Some(Format::OpenMetrics)
        );
        assert_eq!(accept("text/plain;q=0.9,application/openmetrics-text;q=0.2").ok(), Some(Format::Text));
        assert_eq!(accept("*/*").ok(), Some(Format::Text));
        assert!(accept("application/json").is_err());
        assert!(accept("text/plain;q=x").is_err());
    }

    #[test]
    fn queries_are_checked() {
        let q = parse_query(Some("match[]=up&match[]=caracal_.*&only_target_metrics"), 4, false).expect("valid");
        assert_eq!(q.matchers.len(), 2);
        assert!(q.only_target_metrics);
        assert!(q.matchers[1].is_match("caracal_ready") && !q.matchers[0].is_match("upper"), "anchored");
        for (raw, code) in [
            ("match[]=(", "bad_match"),
            ("match[]=", "bad_match"),
            ("metrics_path=metrics", "bad_metrics_path"),
            ("metrics_path=/../etc", "bad_metrics_path"),
            ("metrics_path=/m%3Fx", "bad_metrics_path"),
        ] {
            match parse_query(Some(raw), 4, false) {
                Err(GatewayError::BadRequest { code: got, .. }) => assert_eq!(got, code, "{raw}"),
                other => panic!("{raw}: {other:?}"),
            }
        }
        let many = (0..5).map(|i| format!("match[]=m{i}")).collect::<Vec<_>>().join("&");
        assert!(parse_query(Some(&many), 4, false).is_err());
        assert!(parse_query(Some("label=team=pay"), 4, true).is_ok());
        assert!(parse_query(Some("label=nope"), 4, true).is_err());
        assert!(parse_query(Some("label=1x=y"), 4, true).is_err());
        assert!(parse_query(None, 4, true).is_err(), "a selector route needs a selector");
    }

    #[test]
    fn instance_names_are_host_and_port() {
        assert_eq!(host_port("http://10.0.0.1:9100"), "10.0.0.1:9100");
        assert_eq!(host_port("http://shop.internal"), "shop.internal:80");
    }
}
