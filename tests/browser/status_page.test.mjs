// The status page in a real browser: Debian's Chromium driven by Playwright (playwright-core,
// which never downloads a browser), against a platform on real PostgreSQL and Redis
// (`caracal up`). Screenshots of each state go to target/browser/.
//
// Needs CARACAL_ADMIN_TOKEN_FILE; CARACAL_API_URL defaults to http://127.0.0.1:3000.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, readFileSync } from "node:fs";
import http from "node:http";
import { createRequire } from "node:module";
import { chromium } from "playwright-core";

const API = process.env.CARACAL_API_URL ?? "http://127.0.0.1:3000";
const STS = process.env.CARACAL_STS_URL ?? "http://127.0.0.1:8080";
const ADMIN = readFileSync(process.env.CARACAL_ADMIN_TOKEN_FILE, "utf8").split("\n")[0].trim();
const SHOTS = new URL("../../target/browser/", import.meta.url).pathname;
const AXE = createRequire(import.meta.url).resolve("axe-core/axe.min.js");
// The bound: a transition shows within 2 s, without a reload.
const LIVE_BOUND_MS = 2000;
const NAME = `browser-${process.pid}`;
const READER = `browser-reader-${process.pid}`;

// The flags Chromium needs on a machine with no network beyond loopback.
const ARGS = [
  "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
];

let browser;
let watched; // the instance the test target points at
let healthy = true;
let publicPage; // the public page, opened once and never reloaded
const problems = []; // console errors and page errors, per page

async function api(method, path, body) {
  const response = await fetch(API + path, {
    method,
    headers: { authorization: `Bearer ${ADMIN}`, "content-type": "application/json" },
    body: body && JSON.stringify(body),
  });
  return { status: response.status, body: await response.json().catch(() => null) };
}

async function open(context, path, label) {
  const page = await context.newPage();
  page.on("console", (m) => m.type() === "error" && problems.push(`${label}: console: ${m.text()}`));
  page.on("pageerror", (e) => problems.push(`${label}: page error: ${e.message}`));
  await page.goto(API + path);
  return page;
}

const shot = (page, file) => page.screenshot({ path: SHOTS + file, fullPage: true });
const card = (page) => page.locator(`[id="t-${NAME}"]`);

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  watched = http.createServer((req, res) => {
    res.writeHead(healthy ? 200 : 503, { "content-type": "text/plain" });
    res.end(healthy ? "ok" : "unavailable");
  });
  await new Promise((resolve) => watched.listen(0, "127.0.0.1", resolve));
  browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: ARGS });
});

after(async () => {
  await api("DELETE", `/v1/targets/${NAME}`);
  await fetch(`${STS}/v1/clients/${READER}`, { method: "DELETE", headers: { authorization: `Bearer ${ADMIN}` } });
  await browser?.close();
  watched?.close();
});

test("the public page loads with no console error, its landmarks and passes axe (WCAG 2 A/AA)", async () => {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  publicPage = await open(context, "/", "public");
  await publicPage.getByRole("heading", { name: "Platform" }).waitFor();
  for (const role of ["banner", "main", "contentinfo"]) {
    assert.equal(await publicPage.getByRole(role).count(), 1, `one ${role} landmark`);
  }
  // Every platform service has its ladder.
  assert.ok((await publicPage.locator("ol.ladder").count()) >= 1, "the platform's ladders");
  // Marks this document: a reload would lose it.
  await publicPage.evaluate(() => { window.caracalTestMark = true; });
  await shot(publicPage, "01-public.png");
  assert.deepEqual(problems, []);

  // axe-core needs to inject its script, which the page's CSP rightly refuses: a separate
  // context that bypasses CSP, for the audit only.
  const audit = await browser.newContext({ bypassCSP: true });
  const page = await audit.newPage();
  await page.goto(API + "/");
  await page.addScriptTag({ path: AXE });
  const results = await page.evaluate(() =>
    window.axe.run(document, { runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21aa"] } }));
  const violations = results.violations.map((v) => `${v.id}: ${v.nodes.map((n) => n.target).join(" ")}`);
  assert.deepEqual(violations, [], "axe finds nothing");
  await audit.close();
});

test("a registered target appears, and its instance going down shows within 2 s without a reload", async () => {
  const created = await api("POST", "/v1/targets", {
    name: NAME,
    instances: [`http://127.0.0.1:${watched.address().port}`],
    interval_ms: 300,
    timeout_ms: 250,
  });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  await card(publicPage).waitFor({ timeout: 15000 });
  await publicPage.locator(`[id="t-${NAME}"][data-status="up"]`).waitFor({ timeout: 15000 });
  await shot(publicPage, "02-public-up.png");

  healthy = false;
  await publicPage.locator(`[id="t-${NAME}"][data-status="down"]`).waitFor({ timeout: 30000 });
  const shown = Date.now();
  const history = await api("GET", `/v1/targets/${NAME}/history?limit=1`);
  const transition = history.body.transitions[0];
  assert.equal(transition.to, "down");
  const late = shown - Date.parse(transition.occurred_at);
  console.log(`# shown ${late} ms after the transition was recorded`);
  assert.ok(late <= LIVE_BOUND_MS, `shown ${late} ms after the transition (bound ${LIVE_BOUND_MS} ms)`);
  assert.equal(await publicPage.evaluate(() => window.caracalTestMark), true, "no reload");
  await shot(publicPage, "03-public-down.png");

  // Public: the status, never the error.
  const text = await card(publicPage).innerText();
  assert.match(text, /down/);
  assert.doesNotMatch(text, /answered|refused|timed out/, "no error text in public");
  // Nor any address: instances by number, the platform's too (a map of internal hosts and
  // ports is not for anyone who can load the page).
  const whole = await publicPage.locator("main").innerText();
  assert.doesNotMatch(whole, /https?:\/\/|127\.0\.0\.1/, "no URL or address in public");
  assert.match(text, /Instance 1/);
  assert.equal(await card(publicPage).locator(".error").count(), 0);
  assert.equal(await publicPage.locator("form.control").count(), 0, "no controls in public");
  assert.deepEqual(problems, []);
});

test("the admin signs in, sees the error, and pauses and resumes probing", async () => {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await open(context, "/status/signin", "admin");
  await page.getByLabel("Token").fill(ADMIN);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.waitForURL(/\/status$/);
  await card(page).locator(".error").waitFor();
  assert.match(await card(page).locator(".error").innerText(), /\/health answered 503/);
  await shot(page, "04-admin-down.png");

  await card(page).getByRole("button", { name: /Pause probing/ }).click();
  await page.locator(`[id="t-${NAME}"][data-status="paused"]`).waitFor();
  assert.match(await card(page).innerText(), /Probing paused since/);
  const target = await api("GET", `/v1/targets/${NAME}`);
  assert.ok(target.body.paused_at, "paused in the registry");
  await shot(page, "05-admin-paused.png");
  // The public page hears of it live, too.
  await publicPage.locator(`[id="t-${NAME}"][data-status="paused"]`).waitFor({ timeout: 5000 });

  await card(page).getByRole("button", { name: /Resume probing/ }).click();
  await page.locator(`[id="t-${NAME}"]:not([data-status="paused"])`).waitFor();
  assert.equal((await api("GET", `/v1/targets/${NAME}`)).body.paused_at, null);
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByRole("link", { name: /Sign in/ }).waitFor();
  assert.equal(await card(page).locator(".error").count(), 0, "signed out: public again");
  assert.deepEqual(problems, []);
  await context.close();
});

test("an STS token with targets:read sees errors but not the controls", async () => {
  const created = await fetch(`${STS}/v1/clients`, {
    method: "POST",
    headers: { authorization: `Bearer ${ADMIN}`, "content-type": "application/json" },
    body: JSON.stringify({ client_id: READER, scopes: ["targets:read"] }),
  });
  assert.equal(created.status, 201);
  const { client_secret: secret } = await created.json();
  const issued = await fetch(`${STS}/oauth/token`, {
    method: "POST",
    headers: {
      authorization: "Basic " + Buffer.from(`${READER}:${secret}`).toString("base64"),
      "content-type": "application/x-www-form-urlencoded",
    },
    body: "grant_type=client_credentials&scope=targets%3Aread",
  });
  assert.equal(issued.status, 200);
  const { access_token: token } = await issued.json();

  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await open(context, "/status/signin", "reader");
  await page.getByLabel("Token").fill(token);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.waitForURL(/\/status$/);
  await card(page).locator(".error").waitFor();
  assert.match(await card(page).locator(".error").innerText(), /answered 503/);
  assert.equal(await page.locator("form.control").count(), 0, "targets:read cannot pause");
  await shot(page, "06-sts-reader-down.png");
  assert.deepEqual(problems, []);
  await context.close();
});

test("a lost feed shows a banner, and the reconnect resumes from the last event", async () => {
  const feeds = [];
  publicPage.on("request", (r) => r.url().includes("/status/events") && feeds.push(new URL(r.url())));
  // Cut the feed: refuse new connections, and end the open one as a dropped network would.
  await publicPage.route("**/status/events**", (route) => route.abort());
  await publicPage.evaluate(() => window.stop());
  await publicPage.locator("#feed-lost").waitFor({ state: "visible", timeout: 15000 });
  await shot(publicPage, "07-public-feed-lost.png");
  // A change while the page is cut off.
  healthy = true;
  await publicPage.waitForTimeout(3000);
  assert.ok(await publicPage.locator("#feed-lost").isVisible(), "the banner stays while the feed is gone");
  await publicPage.unroute("**/status/events**");
  await publicPage.locator("#feed-lost").waitFor({ state: "hidden", timeout: 15000 });
  await publicPage.locator(`[id="t-${NAME}"][data-status="up"]`).waitFor({ timeout: 15000 });
  assert.equal(await publicPage.evaluate(() => window.caracalTestMark), true, "no reload");
  const since = feeds.at(-1)?.searchParams.get("since");
  const rendered = await publicPage.locator("#main").getAttribute("data-event-id");
  assert.ok(since && since !== rendered, `the reconnect asked for what followed ${since}, not the page's start`);
  await shot(publicPage, "08-public-recovered.png");
  // The only errors allowed are the refused reconnects while the feed was cut.
  const expected = (p) => p.includes("net::ERR_FAILED");
  problems.splice(0, problems.length, ...problems.filter((p) => !expected(p)));
  assert.deepEqual(problems, []);
});

test("on a phone the page fits the screen, and without script it is a plain page", async () => {
  const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
  const page = await open(phone, "/", "phone");
  await card(page).waitFor();
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `no sideways scrolling (${overflow}px too wide)`);
  await shot(page, "09-phone.png");
  await phone.close();

  const plain = await browser.newContext({ javaScriptEnabled: false });
  const still = await plain.newPage();
  await still.goto(API + "/");
  await card(still).waitFor();
  assert.match(await card(still).innerText(), /✔ up|✖ down/, "its status, server-rendered");
  assert.equal(await still.locator("noscript").count() > 0, true);
  await shot(still, "10-no-script.png");
  await plain.close();
  assert.deepEqual(problems, []);
});
