//! The status page over real HTTP: what each caller sees, signing in, the controls, and the
//! live feed with its resumption.

use std::time::Duration;

use caracal_core::Mode;
use caracal_testkit::app::Served;
use serde_json::json;

use crate::support::{self, ADMIN, METRICS};

const SECRET_ERROR: &str = "/ready answered 503 (db password rejected)";

async fn register(served: &Served, name: &str) {
    let body = json!({"name": name, "instances": ["http://127.0.0.1:9/a"]});
    let response =
        served.http.post(served.url("/v1/targets")).bearer_auth(ADMIN).json(&body).send().await.expect("register");
    assert_eq!(response.status(), 201);
}

/// Records a transition as the coordinator does: status, history and outbox in one go.
async fn transition(pool: &sqlx::PgPool, name: &str, from: &str, to: &str, error: Option<&str>) {
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query(
        "INSERT INTO instance_status (instance_id, status, last_error) \
         SELECT i.id, $2, $3 FROM instances i JOIN targets t ON t.id = i.target_id WHERE t.name = $1 \
         ON CONFLICT (instance_id) DO UPDATE SET status = excluded.status, since = now(), last_error = excluded.last_error",
    )
    .bind(name)
    .bind(to)
    .bind(error)
    .execute(&mut *tx)
    .await
    .expect("status");
    sqlx::query(
        "INSERT INTO status_transitions (target_name, instance_url, from_status, to_status, reason) \
         VALUES ($1, 'http://127.0.0.1:9/a', $2, $3, $4)",
    )
    .bind(name)
    .bind(from)
    .bind(to)
    .bind(error)
    .execute(&mut *tx)
    .await
    .expect("transition");
    sqlx::query("INSERT INTO outbox (event_type, target, payload) VALUES ('instance.status_changed', $1, '{}')")
        .bind(name)
        .execute(&mut *tx)
        .await
        .expect("outbox");
    tx.commit().await.expect("commit");
}

/// The page as `auth` sees it: `(status, headers, body)`.
async fn page(served: &Served, path: &str, auth: Auth<'_>) -> (u16, reqwest::header::HeaderMap, String) {
    let mut request = served.http.get(served.url(path));
    request = match auth {
        Auth::None => request,
        Auth::Bearer(token) => request.bearer_auth(token),
        Auth::Cookie(cookie) => request.header("cookie", cookie),
    };
    let response = request.send().await.expect("page");
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    (status, headers, response.text().await.expect("body"))
}

#[derive(Clone, Copy)]
enum Auth<'a> {
    None,
    Bearer(&'a str),
    Cookie(&'a str),
}

/// Waits until the page (as `auth` sees it) contains `text`.
async fn page_shows(served: &Served, auth: Auth<'_>, text: &str) -> String {
    let mut last = String::new();
    for _ in 0..100 {
        let (status, _, body) = page(served, "/", auth).await;
        if status == 200 && body.contains(text) {
            return body;
        }
        last = body;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the page never showed {text:?}; last:\n{last}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_public_page_shows_names_and_status_and_only_a_signed_in_caller_sees_errors() {
    let (served, pool) = support::api(Mode::Stable).await;
    register(&served, "shop").await;
    transition(&pool, "shop", "unknown", "down", Some(SECRET_ERROR)).await;

    let public = page_shows(&served, Auth::None, "id=\"t-shop\"").await;
    assert!(public.contains("✖</span> down"), "status in text and glyph:\n{public}");
    // The only transition is seconds old: the timelines' history starts there, and says so.
    assert!(public.contains("id=\"horizon\""), "the horizon is stated:\n{public}");
    assert!(!public.contains("db password"), "the public page shows no error text");
    assert!(!public.contains("127.0.0.1:9"), "nor an instance's address: {public}");
    assert!(public.contains("Instance 1"), "instances by number");
    assert!(!public.contains("Pause probing"), "nor the controls");
    assert!(public.contains("<main") && public.contains("<header") && public.contains("<footer"), "landmarks");
    // Every script is a file of the page's own; none inline.
    assert_eq!(public.matches("<script").count(), public.matches("<script src=\"/status/assets/").count());
    assert!(!public.contains("style="), "no inline style (the CSP forbids it)");

    let (status, headers, admin) = page(&served, "/status", Auth::Bearer(ADMIN)).await;
    assert_eq!(status, 200);
    assert!(admin.contains(SECRET_ERROR) && admin.contains("Pause probing"), "{admin}");
    assert!(admin.contains("http://127.0.0.1:9/a"), "signed in, the address");
    let csp = headers["content-security-policy"].to_str().expect("csp");
    assert!(
        csp.contains("script-src 'self'") && csp.contains("default-src 'none'") && !csp.contains("unsafe"),
        "{csp}"
    );
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(headers["x-content-type-options"], "nosniff");

    // A wrong token sees the public page, never an error.
    let (status, _, wrong) = page(&served, "/", Auth::Bearer("not-the-token")).await;
    assert_eq!(status, 200);
    assert!(!wrong.contains("db password"));

    // Compressed for a browser that asks; the event stream never is (it would hold events back).
    let response = served.http.get(served.url("/")).header("accept-encoding", "gzip").send().await.expect("gzip page");
    assert_eq!(response.headers()["content-encoding"], "gzip");

    for (asset, kind) in [("status.css", "text/css"), ("status.js", "text/javascript"), ("icon.svg", "image/svg+xml")] {
        let (status, headers, _) = page(&served, &format!("/status/assets/{asset}"), Auth::None).await;
        assert_eq!(status, 200, "{asset}");
        assert!(headers["content-type"].to_str().expect("type").starts_with(kind), "{asset}");
    }
    let (status, _, body) = page(&served, "/status/assets/..%2Fsecrets", Auth::None).await;
    assert_eq!(status, 404);
    assert!(body.contains("not_found"));
}

#[tokio::test(flavor = "multi_thread")]
async fn signing_in_sets_a_strict_cookie_and_the_controls_pause_and_resume_probing() {
    let (served, pool) = support::api(Mode::Stable).await;
    register(&served, "shop").await;
    transition(&pool, "shop", "unknown", "down", Some(SECRET_ERROR)).await;
    // Redirects are the answers under test here: not followed.
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let post = |path: &str, body: String, cookie: Option<&str>, site: &str| {
        let mut request = http
            .post(served.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("sec-fetch-site", site)
            .body(body);
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        request.send()
    };

    for (body, code) in [("token=wrong", 401), ("token=", 400), ("nothing=here", 400), ("%%%", 400)] {
        let response = post("/status/signin", body.into(), None, "same-origin").await.expect("signin");
        assert_eq!(response.status(), code, "{body}");
        assert!(response.headers().get("set-cookie").is_none(), "{body}");
    }
    let response = post("/status/signin", format!("token={ADMIN}"), None, "cross-site").await.expect("signin");
    assert_eq!(response.status(), 403, "a sign-in from another site");

    let response = post("/status/signin", format!("token={ADMIN}"), None, "same-origin").await.expect("signin");
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/status");
    let set = response.headers()["set-cookie"].to_str().expect("cookie").to_string();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/"), "{set}");
    let cookie = set.split(';').next().expect("pair").to_string();
    assert!(!cookie.contains(ADMIN), "the cookie does not hold the token in the clear");
    use base64::Engine;
    let value = cookie.split_once('=').expect("pair").1;
    let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(value).unwrap_or_default();
    assert!(!String::from_utf8_lossy(&decoded).contains(ADMIN), "nor encoded: a random id");
    assert!(!set.contains("Secure"), "not Secure unless configured, whatever a header says");
    let (stored,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM page_sessions").fetch_one(&pool).await.expect("sessions");
    assert_eq!(stored, 1, "kept server-side");

    let signed_in = page_shows(&served, Auth::Cookie(&cookie), SECRET_ERROR).await;
    assert!(signed_in.contains("Sign out") && signed_in.contains("/status/targets/shop/pause"));

    // The controls: not from another site, not without a credential, then for real.
    let response = post("/status/targets/shop/pause", String::new(), Some(&cookie), "cross-site").await.expect("pause");
    assert_eq!(response.status(), 403);
    assert!(response.text().await.expect("body").contains("cross_site"));
    let response = post("/status/targets/shop/pause", String::new(), None, "same-origin").await.expect("pause");
    assert_eq!(response.status(), 403);
    assert!(response.text().await.expect("body").contains("insufficient_scope"));
    let paused: bool =
        sqlx::query_scalar("SELECT paused_at IS NOT NULL FROM targets").fetch_one(&pool).await.expect("paused");
    assert!(!paused, "a refused control changes nothing");

    let response =
        post("/status/targets/shop/pause", String::new(), Some(&cookie), "same-origin").await.expect("pause");
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/status#t-shop");
    let body = page_shows(&served, Auth::Cookie(&cookie), "Resume probing").await;
    assert!(body.contains("Probing paused since"));
    let public = page_shows(&served, Auth::None, "⏸</span> paused").await;
    assert!(!public.contains("db password"));

    let response = post("/status/targets/nope/pause", String::new(), Some(&cookie), "same-origin").await.expect("404");
    assert_eq!(response.status(), 404);
    let response =
        post("/status/targets/shop/explode", String::new(), Some(&cookie), "same-origin").await.expect("404");
    assert_eq!(response.status(), 404);

    // The API's own pause and resume: idempotent, one event per change.
    let call =
        |action: &str| served.http.post(served.url(&format!("/v1/targets/shop/{action}"))).bearer_auth(ADMIN).send();
    let again = call("pause").await.expect("pause");
    assert_eq!(again.status(), 200);
    let target: serde_json::Value = again.json().await.expect("json");
    assert!(target["paused_at"].is_string(), "{target}");
    let resumed: serde_json::Value = call("resume").await.expect("resume").json().await.expect("json");
    assert!(resumed["paused_at"].is_null(), "{resumed}");
    let events: Vec<String> = sqlx::query_scalar(
        "SELECT event_type FROM outbox WHERE event_type LIKE 'target.%' AND event_type <> 'target.created' ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .expect("events");
    assert_eq!(events, ["target.paused", "target.resumed"]);
    let response = served.http.post(served.url("/v1/targets/shop/pause")).send().await.expect("no token");
    assert_eq!(response.status(), 401);
    let response = served.http.post(served.url("/v1/targets/nope/pause")).bearer_auth(ADMIN).send().await.expect("404");
    assert_eq!(response.status(), 404);

    let response = post("/status/signout", String::new(), Some(&cookie), "same-origin").await.expect("signout");
    assert_eq!(response.status(), 303);
    assert!(response.headers()["set-cookie"].to_str().expect("cookie").contains("Max-Age=0"));
    // The old cookie, kept by someone: refused from now on.
    let (_, _, after) = page(&served, "/status", Auth::Cookie(&cookie)).await;
    assert!(
        !after.contains(SECRET_ERROR) && !after.contains("Pause probing"),
        "a signed-out cookie sees the public page"
    );
    let response =
        post("/status/targets/shop/pause", String::new(), Some(&cookie), "same-origin").await.expect("pause");
    assert_eq!(response.status(), 403);
}

#[tokio::test(flavor = "multi_thread")]
async fn sign_in_is_rate_limited_per_address_and_secure_cookies_are_host_bound() {
    let shared = support::shared();
    let sections = json!({"api": {"page": {"secure_cookies": true}}});
    let (served, _) = support::api_on(&shared.postgres, &shared.redis, Mode::Stable, sections).await;
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let signin = |token: &str| {
        http.post(served.url("/status/signin"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("sec-fetch-site", "same-origin")
            .body(format!("token={token}"))
            .send()
    };
    let response = signin(ADMIN).await.expect("signin");
    assert_eq!(response.status(), 303);
    let set = response.headers()["set-cookie"].to_str().expect("cookie").to_string();
    assert!(set.starts_with("__Host-caracal_session=") && set.contains("; Secure") && set.contains("Path=/"), "{set}");
    let mut limited = None;
    for attempt in 0..20 {
        let response = signin("a-guess").await.expect("signin");
        if response.status() == 429 {
            limited = Some((attempt, response.headers()["retry-after"].to_str().expect("retry-after").to_string()));
            break;
        }
        assert_eq!(response.status(), 401);
    }
    let (attempt, retry) = limited.expect("limited");
    assert_eq!(attempt, 9, "ten attempts a minute, the first sign-in included");
    assert!(retry.parse::<u64>().is_ok_and(|s| (1..=60).contains(&s)), "{retry}");
}

/// An open event stream, read event by event.
struct Events {
    response: reqwest::Response,
    buffer: String,
}

/// One server-sent event: `(id, event, data)`.
type Sent = (String, String, String);

impl Events {
    async fn open(served: &Served, last: Option<&str>, auth: Auth<'_>) -> Events {
        let mut request = served.http.get(served.url("/status/events"));
        if let Some(last) = last {
            request = request.header("last-event-id", last);
        }
        if let Auth::Bearer(token) = auth {
            request = request.bearer_auth(token);
        }
        let response = request.header("accept-encoding", "gzip").send().await.expect("events");
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        assert!(response.headers().get("content-encoding").is_none(), "events are sent as they come");
        Events { response, buffer: String::new() }
    }

    /// The next event other than a ping, within 10 s.
    async fn next(&mut self) -> Sent {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                while let Some(end) = self.buffer.find("\n\n") {
                    let block: String = self.buffer.drain(..end + 2).collect();
                    let field = |name: &str| {
                        block
                            .lines()
                            .filter_map(|l| l.strip_prefix(name).map(|v| v.trim_start().to_string()))
                            .collect::<Vec<_>>()
                            .join("\n")
                    };
                    let event = field("event:");
                    if !event.is_empty() && event != "ping" {
                        return (field("id:"), event, field("data:"));
                    }
                }
                let chunk = self.response.chunk().await.expect("read").expect("the stream ended");
                self.buffer.push_str(&String::from_utf8_lossy(&chunk));
            }
        })
        .await
        .expect("an event within 10 s")
    }

    /// The next event of `kind`.
    async fn next_of(&mut self, kind: &str) -> Sent {
        loop {
            let sent = self.next().await;
            if sent.1 == kind {
                return sent;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_feed_sends_each_change_and_a_reconnect_resumes_from_its_last_event_id() {
    let (served, pool) = support::api(Mode::Stable).await;
    let body = page_shows(&served, Auth::None, "data-event-id=").await;
    let rendered_at = body.split("data-event-id=\"").nth(1).and_then(|r| r.split('"').next()).expect("id").to_string();

    // From the id the page was rendered at: the registration arrives as a card.
    let mut events = Events::open(&served, Some(&rendered_at), Auth::None).await;
    register(&served, "shop").await;
    let (_, _, data) = events.next_of("target").await;
    let card: serde_json::Value = serde_json::from_str(&data).expect("json");
    assert_eq!(card["name"], "shop");
    assert!(card["html"].as_str().expect("html").contains("id=\"t-shop\""));
    transition(&pool, "shop", "unknown", "up", None).await;
    let (seen, _, data) = events.next_of("target").await;
    assert!(data.contains("✔</span> up"), "{data}");
    drop(events);

    // While away: down (with an error the public must not see), then a new target.
    transition(&pool, "shop", "up", "down", Some(SECRET_ERROR)).await;
    register(&served, "cart").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut events = Events::open(&served, Some(&seen), Auth::None).await;
    let mut missed = Vec::new();
    while missed.len() < 2 {
        let (_, kind, data) = events.next().await;
        assert_ne!(kind, "reset", "a reconnect within the process resumes");
        if kind == "target" {
            missed.push(data);
        }
    }
    missed.sort_by_key(|data| !data.contains("\"name\":\"shop\""));
    assert!(missed[0].contains("✖</span> down"), "{missed:?}");
    assert!(!missed[0].contains("db password"), "the public feed carries no error text");
    assert!(missed[1].contains("\"name\":\"cart\""), "{missed:?}");

    // The admin's feed carries the error; an unknown id starts over with the whole page.
    let mut admin = Events::open(&served, Some("elsewhere-7"), Auth::Bearer(ADMIN)).await;
    let (id, kind, data) = admin.next().await;
    assert_eq!(kind, "reset");
    assert!(!id.is_empty());
    assert!(data.contains("db password") && data.contains("t-cart"), "{data}");

    // Two pages have the feed open: `events` and `admin`.
    let metrics = served.http.get(served.url("/metrics")).bearer_auth(METRICS).send().await.expect("metrics");
    let text = metrics.text().await.expect("text");
    assert!(text.lines().any(|l| l == "caracal_api_live_pages 2"), "{text}");

    // Gone is gone.
    let response = served.http.delete(served.url("/v1/targets/cart")).bearer_auth(ADMIN).send().await.expect("delete");
    assert_eq!(response.status(), 204);
    let (_, _, data) = admin.next_of("removed").await;
    assert_eq!(serde_json::from_str::<serde_json::Value>(&data).expect("json"), json!({"name": "cart"}));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_fleet_is_paged_and_searchable_by_name() {
    let (served, pool) = support::api(Mode::Dev).await;
    // 250 targets straight into the tables (as many registrations would leave them).
    sqlx::query(
        "WITH t AS (INSERT INTO targets (name, health_path, ready_path, metrics_path, interval_ms, timeout_ms) \
                    SELECT 'fleet-' || lpad(g::text, 3, '0'), '/health', '/ready', '/metrics', 5000, 1000 \
                    FROM generate_series(1, 250) g RETURNING id) \
         INSERT INTO instances (target_id, url) SELECT id, 'http://127.0.0.1:9/a' FROM t",
    )
    .execute(&pool)
    .await
    .expect("seed");
    sqlx::query("INSERT INTO outbox (event_type, payload) VALUES ('target.created', '{}')")
        .execute(&pool)
        .await
        .expect("outbox");
    let first = page_shows(&served, Auth::None, "250 targets").await;
    let cards = |html: &str| html.matches("<article class=\"target\"").count();
    assert_eq!(cards(&first), 100, "one page of cards, not the fleet");
    assert!(
        first.contains("Targets 1–100 of 250")
            && first.contains("id=\"t-fleet-001\"")
            && !first.contains("id=\"t-fleet-101\"")
    );
    assert!(first.contains("data-complete=\"false\""), "a partial page takes no new cards live");
    assert!(first.contains("href=\"/status?page=2\"") && first.contains("Page 1 of 3"));

    let (status, _, last) = page(&served, "/status?page=3", Auth::None).await;
    assert_eq!(status, 200);
    assert_eq!(cards(&last), 50);
    assert!(last.contains("Targets 201–250 of 250") && last.contains("id=\"t-fleet-250\""));
    let (_, _, beyond) = page(&served, "/status?page=99", Auth::None).await;
    assert!(beyond.contains("Targets 201–250 of 250"), "a page past the end shows the last");

    let (_, _, found) = page(&served, "/status?q=FLEET-12", Auth::None).await;
    assert_eq!(cards(&found), 10, "fleet-120 to fleet-129");
    assert!(found.contains("whose name contains “fleet-12”") && found.contains("value=\"fleet-12\""));
    let (_, _, none) = page(&served, "/status?q=%3Cscript%3E", Auth::None).await;
    assert!(none.contains("No target's name contains “&lt;script&gt;”"), "the query is escaped");
    let (_, _, odd) = page(&served, "/status?page=-3&q", Auth::None).await;
    assert!(odd.contains("Targets 1–100 of 250"), "an unreadable page number is the first");
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_out_live_feeds_are_bounded_and_a_signed_in_one_still_opens() {
    let shared = support::shared();
    let sections = json!({"api": {"page": {"public_streams": 2}}});
    let (served, _) = support::api_on(&shared.postgres, &shared.redis, Mode::Stable, sections).await;
    page_shows(&served, Auth::None, "data-event-id=").await;
    let first = Events::open(&served, None, Auth::None).await;
    let second = Events::open(&served, None, Auth::None).await;
    let third = served.http.get(served.url("/status/events")).send().await.expect("answer");
    assert_eq!(third.status(), 503, "a third signed-out feed is refused");
    assert_eq!(third.headers()["retry-after"], "5");
    assert!(third.text().await.expect("body").contains("busy"));
    let mut admin = Events::open(&served, None, Auth::Bearer(ADMIN)).await;
    assert_eq!(admin.next().await.1, "reset", "a signed-in page is not counted among them");
    // One goes away: its place is free again.
    drop(first);
    let reopened = caracal_testkit::wait_for(Duration::from_secs(5), Duration::from_millis(100), || async {
        let response = served.http.get(served.url("/status/events")).send().await.ok()?;
        (response.status() == 200).then_some(response)
    })
    .await;
    assert!(reopened.is_ok(), "a freed place is taken again");
    drop(second);
}
