//! Scraping one instance: its metrics path with the platform's metrics bearer (instances are
//! fail-closed), nothing from the caller's request, no redirects (a redirect could carry the
//! bearer elsewhere), a timeout, a per-instance and a per-request byte cap, and the body parsed
//! as it arrives.

use caracal_core::telemetry;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};
use tracing::Instrument;

use caracal_core::config::CoreConfig;

use crate::exposition::{Body, Format, Parser};
use crate::render::Scraped;

/// Why an instance gave nothing (`reason` label of `caracal_federation_error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// It did not answer in time.
    Timeout,
    /// No connection (refused, unreachable, reset).
    Connect,
    /// It answered, but not 200.
    Status,
    /// Its body is not a valid exposition.
    Parse,
    /// Its body is over the per-instance cap, or the request's total cap.
    TooLarge,
}

impl Reason {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Reason::Timeout => "timeout",
            Reason::Connect => "connect",
            Reason::Status => "status",
            Reason::Parse => "parse",
            Reason::TooLarge => "too_large",
        }
    }
}

/// What to present to instances: the metrics bearer, read from its file (re-read when the
/// file changes, so a rotation needs no restart).
#[derive(Debug)]
pub struct Credential {
    fixed: Option<String>,
    file: Option<PathBuf>,
    cached: Mutex<Option<(SystemTime, String)>>,
}

impl Credential {
    /// The metrics bearer of `core` (`METRICS_BEARER` / `METRICS_BEARER_FILE`).
    pub fn metrics(core: &CoreConfig) -> Self {
        Self {
            fixed: core.metrics.bearer.as_ref().map(|s| s.expose().trim().to_string()),
            file: core.metrics.bearer_file.clone(),
            cached: Mutex::new(None),
        }
    }

    /// The bearer now: the first token of the file (the newest during a rotation is second,
    /// but every instance accepts both), or the fixed one.
    pub fn current(&self) -> Option<String> {
        if let Some(token) = &self.fixed {
            return Some(token.clone());
        }
        let path = self.file.as_ref()?;
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok()?;
        let mut cached = self.cached.lock().ok()?;
        if let Some((at, token)) = cached.as_ref()
            && *at == modified
        {
            return Some(token.clone());
        }
        let token = std::fs::read_to_string(path).ok()?.lines().map(str::trim).find(|l| !l.is_empty())?.to_string();
        *cached = Some((modified, token.clone()));
        Some(token)
    }
}

/// The HTTP side of scraping.
#[derive(Debug)]
pub struct Scraper {
    client: reqwest::Client,
    credential: Credential,
    per_instance_cap: usize,
}

/// What to accept from instances: OpenMetrics first, text as fallback.
const ACCEPT: &str = "application/openmetrics-text;version=1.0.0;q=0.9,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

impl Scraper {
    /// A scraper presenting `credential`, capping each body at `per_instance_cap` bytes.
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new(credential: Credential, per_instance_cap: usize) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(Duration::from_secs(2))
            .pool_max_idle_per_host(4)
            .build()?;
        Ok(Self { client, credential, per_instance_cap })
    }

    /// Scrapes `url` within `timeout`; `total` counts the request's bytes against `total_cap`;
    /// `identity` names the labels that will be added (see [`Parser::new`]).
    pub async fn scrape(
        &self,
        url: &str,
        timeout: Duration,
        total: &AtomicUsize,
        total_cap: usize,
        identity: &[String],
    ) -> Scraped {
        let started = Instant::now();
        let outcome = match tokio::time::timeout(timeout, self.fetch(url, total, total_cap, identity)).await {
            Ok(result) => result,
            Err(_) => Err(Reason::Timeout),
        };
        Scraped { outcome, duration: started.elapsed() }
    }

    async fn fetch(
        &self,
        url: &str,
        total: &AtomicUsize,
        total_cap: usize,
        identity: &[String],
    ) -> Result<Body, Reason> {
        let span = telemetry::http_client_span("GET", url);
        let mut headers = reqwest::header::HeaderMap::new();
        telemetry::inject_span_context(&span, &mut headers);
        let mut request = self.client.get(url).header(reqwest::header::ACCEPT, ACCEPT).headers(headers);
        if let Some(token) = self.credential.current() {
            request = request.bearer_auth(token);
        }
        let mut response = match request.send().instrument(span.clone()).await {
            Ok(response) => response,
            Err(e) => {
                let reason = if e.is_timeout() { Reason::Timeout } else { Reason::Connect };
                telemetry::record_client_error(&span, if e.is_timeout() { "timeout" } else { "connection_refused" });
                return Err(reason);
            }
        };
        telemetry::record_client_status(&span, response.status().as_u16());
        if response.status() != reqwest::StatusCode::OK {
            return Err(Reason::Status);
        }
        if response.content_length().is_some_and(|n| n as usize > self.per_instance_cap) {
            return Err(Reason::TooLarge);
        }
        let format = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map_or(Format::Text, Format::from_content_type);
        let mut parser = Parser::new(format, identity);
        let mut read = 0usize;
        loop {
            let chunk = match response.chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(e) if e.is_timeout() => return Err(Reason::Timeout),
                Err(_) => return Err(Reason::Connect),
            };
            read += chunk.len();
            let so_far = total.fetch_add(chunk.len(), Ordering::Relaxed) + chunk.len();
            if read > self.per_instance_cap || so_far > total_cap {
                return Err(Reason::TooLarge);
            }
            parser.feed(&chunk).map_err(|_| Reason::Parse)?;
        }
        parser.finish().map_err(|_| Reason::Parse)
    }
}
