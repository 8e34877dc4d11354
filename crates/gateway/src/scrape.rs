//! Scraping one instance: its metrics path with only the credential an operator bound to its
//! target (see [`Credentials`]), nothing from the caller's request, through the outbound
//! address policy, no redirects (a redirect could carry a credential elsewhere), a timeout, a
//! per-instance and a per-request byte cap, and the body parsed as it arrives under the
//! sample and label limits.

use caracal_core::outbound::Policy;
use caracal_core::telemetry;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};
use tracing::Instrument;

use caracal_core::config::CoreConfig;

use crate::exposition::{Body, Format, Limit, Limits, Parser};
use crate::registry::TargetInfo;
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
    /// Its address is outside the outbound policy; it was not contacted.
    AddressDenied,
    /// The credential its target names cannot be read; it was not contacted.
    Credential,
    /// It answered more samples than `gateway.sample_limit`.
    SampleLimit,
    /// A sample had more labels than `gateway.label_limit`.
    LabelLimit,
    /// A label name was longer than `gateway.label_name_length_limit`.
    LabelNameLength,
    /// A label value was longer than `gateway.label_value_length_limit`.
    LabelValueLength,
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
            Reason::AddressDenied => "address_denied",
            Reason::Credential => "credential",
            Reason::SampleLimit => "sample_limit",
            Reason::LabelLimit => "label_limit",
            Reason::LabelNameLength => "label_name_length_limit",
            Reason::LabelValueLength => "label_value_length_limit",
        }
    }

    fn of_limit(limit: Limit) -> Self {
        match limit {
            Limit::Samples => Reason::SampleLimit,
            Limit::Labels => Reason::LabelLimit,
            Limit::LabelNameLength => Reason::LabelNameLength,
            Limit::LabelValueLength => Reason::LabelValueLength,
        }
    }
}

/// A bearer read from a file (re-read when the file changes, so a rotation needs no restart),
/// or given fixed.
#[derive(Debug)]
pub struct Bearer {
    fixed: Option<String>,
    file: Option<PathBuf>,
    cached: Mutex<Option<(SystemTime, String)>>,
}

/// Largest credential file read, in bytes.
const MAX_CREDENTIAL_FILE: u64 = 16 * 1024;

impl Bearer {
    /// The metrics bearer of `core` (`METRICS_BEARER` / `METRICS_BEARER_FILE`).
    pub fn metrics(core: &CoreConfig) -> Self {
        Self {
            fixed: core.metrics.bearer.as_ref().map(|s| s.expose().trim().to_string()),
            file: core.metrics.bearer_file.clone(),
            cached: Mutex::new(None),
        }
    }

    /// The bearer in `file`.
    pub fn file(file: PathBuf) -> Self {
        Self { fixed: None, file: Some(file), cached: Mutex::new(None) }
    }

    /// The bearer now: the first token of the file (the newest during a rotation is second,
    /// but every instance accepts both), or the fixed one.
    pub fn current(&self) -> Option<String> {
        if let Some(token) = &self.fixed {
            return Some(token.clone());
        }
        let path = self.file.as_ref()?;
        let metadata = std::fs::metadata(path).ok().filter(|m| m.is_file() && m.len() <= MAX_CREDENTIAL_FILE)?;
        let modified = metadata.modified().ok()?;
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

/// Which credential each instance gets, as an operator bound them; nothing a caller registers
/// can make the gateway present a platform secret:
/// - the platform's own services (`[api.platform]`, which `caracal up` and the chart write:
///   the target's name *and* the instance's URL as configured) get the metrics bearer;
/// - a target naming a `credential` gets the first line of that file in
///   `gateway.credentials_dir` (a directory the operator mounts), and nothing at all when the
///   file cannot be read;
/// - every other instance gets no credential.
#[derive(Debug)]
pub struct Credentials {
    metrics: Bearer,
    platform: BTreeMap<String, Vec<String>>,
    dir: Option<PathBuf>,
    named: Mutex<HashMap<String, std::sync::Arc<Bearer>>>,
}

impl Credentials {
    /// The bindings: the metrics bearer for `platform`'s instances, named files in `dir`.
    pub fn new(metrics: Bearer, platform: BTreeMap<String, Vec<String>>, dir: Option<PathBuf>) -> Self {
        Self { metrics, platform, dir, named: Mutex::default() }
    }

    /// The bearer to present to `url`, an instance of `target`.
    ///
    /// # Errors
    /// [`Reason::Credential`] when the target names a credential that cannot be read (the
    /// instance is then not contacted).
    pub fn for_instance(&self, target: &TargetInfo, url: &str) -> Result<Option<String>, Reason> {
        if self.platform.get(&target.name).is_some_and(|urls| urls.iter().any(|u| u == url)) {
            return Ok(self.metrics.current());
        }
        let Some(name) = &target.credential else { return Ok(None) };
        let bearer = self.named(name).ok_or(Reason::Credential)?;
        bearer.current().map(Some).ok_or(Reason::Credential)
    }

    /// The bearer file `name` names in the directory: a plain name (no path), a regular file
    /// that resolves inside the directory (a mounted Secret's links included).
    fn named(&self, name: &str) -> Option<std::sync::Arc<Bearer>> {
        let plain = !name.is_empty()
            && !name.starts_with('.')
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
        if !plain {
            return None;
        }
        // Resolved on every scrape: a mounted Secret's rotation swaps its links, and the file
        // behind the name moves (and must still lie inside the directory).
        let dir = std::fs::canonicalize(self.dir.as_ref()?).ok()?;
        let path = std::fs::canonicalize(dir.join(name)).ok().filter(|p| p.starts_with(&dir))?;
        let mut named = self.named.lock().ok()?;
        if named.get(name).is_none_or(|held| held.file.as_deref() != Some(path.as_path())) {
            named.insert(name.to_string(), std::sync::Arc::new(Bearer::file(path)));
        }
        named.get(name).cloned()
    }
}

/// The HTTP side of scraping.
#[derive(Debug)]
pub struct Scraper {
    client: reqwest::Client,
    credentials: Credentials,
    outbound: Policy,
    per_instance_cap: usize,
    limits: Limits,
}

/// What to accept from instances: OpenMetrics first, text as fallback.
/// The most room made up front for a body from its `Content-Length`.
const RESERVED_AT_MOST: usize = 8 << 20;

const ACCEPT: &str = "application/openmetrics-text;version=1.0.0;q=0.9,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

impl Scraper {
    /// A scraper presenting what `credentials` binds, connecting as `outbound` permits,
    /// capping each body at `per_instance_cap` bytes and its samples and labels at `limits`.
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new(
        credentials: Credentials,
        outbound: Policy,
        per_instance_cap: usize,
        limits: Limits,
    ) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(outbound.resolver())
            .connect_timeout(Duration::from_secs(2))
            .pool_max_idle_per_host(4)
            .build()?;
        Ok(Self { client, credentials, outbound, per_instance_cap, limits })
    }

    /// Scrapes `url` (the metrics URL of `instance`, an instance of `target`) within `timeout`;
    /// `total` counts the request's bytes against `total_cap`; `identity` names the labels that
    /// will be added (see [`Parser::new`]).
    #[allow(clippy::too_many_arguments)]
    pub async fn scrape(
        &self,
        target: &TargetInfo,
        instance: &str,
        url: &str,
        timeout: Duration,
        total: &AtomicUsize,
        total_cap: usize,
        identity: &[String],
    ) -> Scraped {
        let started = Instant::now();
        let bearer = caracal_core::outbound::host_of(url)
            .map_or(Err(Reason::AddressDenied), |host| {
                self.outbound.check_host(host).map_err(|_| Reason::AddressDenied)
            })
            .and_then(|_| self.credentials.for_instance(target, instance));
        let outcome = match bearer {
            Err(reason) => Err(reason),
            Ok(bearer) => {
                match tokio::time::timeout(timeout, self.fetch(url, bearer, total, total_cap, identity)).await {
                    Ok(result) => result,
                    Err(_) => Err(Reason::Timeout),
                }
            }
        };
        Scraped { outcome, duration: started.elapsed() }
    }

    async fn fetch(
        &self,
        url: &str,
        bearer: Option<String>,
        total: &AtomicUsize,
        total_cap: usize,
        identity: &[String],
    ) -> Result<Body, Reason> {
        let span = telemetry::http_client_span("GET", url);
        let mut headers = reqwest::header::HeaderMap::new();
        telemetry::inject_span_context(&span, &mut headers);
        let mut request = self.client.get(url).header(reqwest::header::ACCEPT, ACCEPT).headers(headers);
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        let mut response = match request.send().instrument(span.clone()).await {
            Ok(response) => response,
            Err(e) if caracal_core::outbound::refused_in(&e).is_some_and(|r| r.word() == "address_denied") => {
                telemetry::record_client_error(&span, "address_denied");
                return Err(Reason::AddressDenied);
            }
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
        let mut parser = Parser::new(format, identity).with_limits(self.limits);
        // The announced length (already checked against the cap) is room made once — up to
        // 8 MiB: a target announcing more than it sends must not make the gateway set aside
        // its whole cap for every instance at once; a larger body grows as it arrives.
        if let Some(length) = response.content_length() {
            parser.reserve((length as usize).min(RESERVED_AT_MOST));
        }
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
            parser.feed(&chunk).map_err(|e| e.limit.map_or(Reason::Parse, Reason::of_limit))?;
        }
        parser.finish().map_err(|e| e.limit.map_or(Reason::Parse, Reason::of_limit))
    }
}
