"""The chart's rules and dashboards against a real Prometheus scraping the real services:
`caracal up --mode rc` on free ports, Prometheus (Debian's package) scraping each service with
the bearer from a file and once more without it, the rendered rules loaded; then Redis stops
under the services, the not-ready alert fires, Prometheus sends it to a real Alertmanager
(Debian's `prometheus-alertmanager`), and the api's `/healthchecks` reports it."""

import json
import os
import pathlib
import re
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
import yaml

from conftest import ROOT, documents, render, tool

CARACAL = ROOT / "target" / "debug" / "caracal"
SERVICES = ("sts", "api", "coordinator", "audit", "gateway", "control")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url, token=None, timeout=5):
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read().decode()


def eventually(probe, within, what):
    deadline = time.time() + within
    last = None
    while time.time() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.5)
    pytest.fail(f"{what} within {within}s (last: {last!r})")


@pytest.fixture(scope="module")
def dns():
    """Debian's dnsmasq for caracal-control: `ok.test` resolves, `down.test` is forwarded to an
    upstream that is not there (so its names fail)."""
    work = pathlib.Path(tempfile.mkdtemp(prefix="caracal-dns-"))
    (work / "hosts").write_text("127.0.0.1 ok.test\n")
    port = free_port()
    args = ["/usr/sbin/dnsmasq", "-k", "--no-resolv", "--no-hosts", "--bind-interfaces", "--listen-address=127.0.0.1",
            f"--port={port}", "--local=/test/", f"--server=/down.test/127.0.0.1#{free_port()}", f"--addn-hosts={work / 'hosts'}"]
    if os.geteuid() == 0:
        args.append("--user=root")
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    yield f"127.0.0.1:{port}"
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture(scope="module")
def alertmanager():
    """Debian's Alertmanager, one receiver that sends nowhere, clustering off."""
    work = pathlib.Path(tempfile.mkdtemp(prefix="caracal-alertmanager-"))
    (work / "alertmanager.yml").write_text("route:\n  receiver: nowhere\n  group_wait: 1s\nreceivers:\n  - name: nowhere\n")
    port = free_port()
    log = open(work / "alertmanager.log", "w")
    process = subprocess.Popen(["/usr/bin/prometheus-alertmanager", f"--config.file={work / 'alertmanager.yml'}",
                                f"--storage.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                                "--cluster.listen-address="], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    eventually(lambda: ready(base), 30, "Alertmanager became ready")
    yield {"base": base, "port": port}
    process.terminate()
    process.wait(timeout=20)


@pytest.fixture(scope="module")
def platform(dns, alertmanager):
    assert CARACAL.exists(), "build the binaries first (cargo build --bins)"
    home = tempfile.mkdtemp(prefix="caracal-live-")
    os.chmod(home, 0o755)  # PostgreSQL runs as the postgres user when we are root
    ports = {name: free_port() for name in (*SERVICES, "pg", "redis")}
    args = [str(CARACAL), "--dir", home, "up", "--mode", "rc", "--api-port", str(ports["api"]), "--coordinator-port", str(ports["coordinator"]),
            "--audit-port", str(ports["audit"]), "--sts-port", str(ports["sts"]), "--gateway-port", str(ports["gateway"]),
            "--control-port", str(ports["control"]), "--pg-port", str(ports["pg"]), "--redis-port", str(ports["redis"])]
    # The api summarises Alertmanager's firing alerts in /healthchecks.
    env = dict(os.environ, CARACAL_CONTROL__NAMESERVERS=json.dumps([dns]), CARACAL_API__ALERTMANAGER_URL=alertmanager["base"],
               CARACAL_API__MONITORING_INTERVAL="1s")
    up = subprocess.run(args, capture_output=True, text=True, timeout=180, env=env)
    assert up.returncode == 0, up.stderr
    bearer_file = pathlib.Path(home) / ".caracal" / "secrets" / "metrics_bearer"
    yield {"home": home, "ports": ports, "bearer_file": bearer_file, "bearer": bearer_file.read_text().strip()}
    subprocess.run([str(CARACAL), "--dir", home, "down", "-v"], capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def prometheus(platform, alertmanager):
    work = pathlib.Path(tempfile.mkdtemp(prefix="caracal-prometheus-"))
    # The rules as the chart renders them, with a short `for:` so the not-ready alert fires soon.
    rule = next(d for d in documents(render({"prometheusRule": {"notReadyFor": "3s"}})) if d["kind"] == "PrometheusRule")
    (work / "rules.yml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    scrape = []
    for name in SERVICES:
        target = {"targets": [f"127.0.0.1:{platform['ports'][name]}"]}
        scrape.append({"job_name": f"caracal-{name}", "static_configs": [target],
                       "authorization": {"type": "Bearer", "credentials_file": str(platform["bearer_file"])}})
        scrape.append({"job_name": f"caracal-{name}-no-credentials", "static_configs": [target]})
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
              "rule_files": [str(work / "rules.yml")], "scrape_configs": scrape,
              "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{alertmanager['port']}"]}]}]}}
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    check = subprocess.run([tool("promtool"), "check", "config", str(work / "prometheus.yml")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    port = free_port()
    log = open(work / "prometheus.log", "w")
    process = subprocess.Popen([tool("prometheus"), f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
                                f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    eventually(lambda: ready(base), 30, "Prometheus became ready")
    yield base
    process.terminate()
    process.wait(timeout=20)


def ready(base):
    try:
        return get(f"{base}/-/ready") is not None
    except OSError:
        return False


def query(base, expr):
    body = json.loads(get(f"{base}/api/v1/query?query={urllib.parse.quote(expr)}"))
    return {r["metric"].get("job", ""): float(r["value"][1]) for r in body["data"]["result"]}


def test_scrapes_succeed_with_the_bearer_and_fail_without(prometheus):
    def all_seen():
        up = query(prometheus, "up")
        return up if len(up) == 2 * len(SERVICES) else None
    up = eventually(all_seen, 30, "every target scraped")
    for name in SERVICES:
        assert up[f"caracal-{name}"] == 1.0, up
        assert up[f"caracal-{name}-no-credentials"] == 0.0, f"{name} must refuse a scrape without the bearer (401): {up}"


def test_dashboard_queries_use_metric_names_that_exist(platform, prometheus):
    # Traffic on a route of the API's own, so the golden-signal series exist.
    get(f"http://127.0.0.1:{platform['ports']['api']}/openapi.json")
    # A refused token request and a refused token, so the token families have samples.
    for url, data, headers in [
        (f"http://127.0.0.1:{platform['ports']['sts']}/oauth/token", b"grant_type=client_credentials",
         {"Content-Type": "application/x-www-form-urlencoded"}),
        (f"http://127.0.0.1:{platform['ports']['api']}/v1/targets", None, {"Authorization": "Bearer not.a.token"}),
    ]:
        try:
            urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=5)
        except urllib.error.HTTPError as refused:
            assert refused.code == 401
    # Two DNS-discovered targets, one that resolves and one that fails, so control's
    # per-target series have samples.
    admin = (pathlib.Path(platform["home"]) / ".caracal" / "secrets" / "admin_token").read_text().strip()
    api = f"http://127.0.0.1:{platform['ports']['api']}"
    for name, dns_name in (("seen", "ok.test"), ("failing", "x.down.test")):
        body = json.dumps({"name": name, "discovery": {"dns": {"name": dns_name, "port": 80, "refresh_ms": 1000}}}).encode()
        urllib.request.urlopen(urllib.request.Request(f"{api}/v1/targets", data=body,
                               headers={"Authorization": f"Bearer {admin}", "Content-Type": "application/json"}), timeout=5)
    control = f"http://127.0.0.1:{platform['ports']['control']}/metrics"
    eventually(lambda: all(m in get(control, platform["bearer"]) for m in (
        'caracal_control_discovery_failures_total{target="failing"', 'caracal_control_discovery_last_success_timestamp_seconds{target="seen"}')),
        30, "control resolves one target and counts the other's failures")
    exposed = set()
    for name in SERVICES:
        text = get(f"http://127.0.0.1:{platform['ports'][name]}/metrics", platform["bearer"])
        exposed |= {m.group(1) for m in re.finditer(r"^([a-z_:][a-z0-9_:]*)[{ ]", text, re.M)}
    # The federation series exist in the gateway's answers: one target that answers (the API,
    # which the platform registers itself) and one whose only instance is down.
    body = json.dumps({"name": "nowhere", "instances": [f"http://127.0.0.1:{free_port()}"]}).encode()
    request = urllib.request.Request(f"{api}/v1/targets", data=body, headers={"Authorization": f"Bearer {admin}", "Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=5)
    gateway = f"http://127.0.0.1:{platform['ports']['gateway']}"
    for target in ("api", "nowhere"):
        text = eventually(lambda: federated(gateway, target, platform["bearer"]), 20, f"the gateway federates {target}")
        exposed |= {m.group(1) for m in re.finditer(r"^([a-z_:][a-z0-9_:]*)[{ ]", text, re.M)}
    exposed.add("up")  # Prometheus's own, per target
    used = set()
    for path in sorted((ROOT / "infra" / "grafana").glob("*.json")):
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                used |= set(re.findall(r"\b((?:caracal|http_server|process)_[a-z0-9_]+|up)\b(?=\s*[{\[)]|\s)", target["expr"]))
    assert used, "no metric names found in the dashboards"
    missing = sorted(used - exposed)
    assert not missing, f"dashboard queries use metric names no service exposes: {missing}"


def federated(gateway, target, bearer):
    try:
        return get(f"{gateway}/v1/targets/{target}/metrics", bearer)
    except urllib.error.HTTPError:  # 404 until the registry cache (2 s) sees the target
        return None


def test_stopping_redis_makes_the_not_ready_alert_go_pending(platform, prometheus):
    def alert_state(name):
        body = json.loads(get(f"{prometheus}/api/v1/alerts"))
        states = {a["state"] for a in body["data"]["alerts"] if a["labels"]["alertname"] == name}
        return states
    eventually(lambda: query(prometheus, "caracal_ready") and all(v == 1.0 for v in query(prometheus, "caracal_ready").values()), 60,
               "every service ready in Prometheus")
    assert not alert_state("CaracalServiceNotReady"), "nothing is pending while all is ready"
    subprocess.run(["redis-cli", "-p", str(platform["ports"]["redis"]), "shutdown", "nosave"], capture_output=True, timeout=20)
    states = eventually(lambda: alert_state("CaracalServiceNotReady") or None, 60, "CaracalServiceNotReady pending")
    assert "pending" in states or "firing" in states, states
    failing = eventually(lambda: query(prometheus, 'caracal_check_failing{check="redis:connectivity"} == 1') or None, 30,
                         "redis:connectivity failing in Prometheus")
    assert failing


def test_a_firing_caracal_alert_shows_in_the_apis_healthchecks(platform, prometheus):
    """After Redis stopped (the test above), CaracalServiceNotReady fires in Prometheus, which
    sends it to Alertmanager; the api reads it back into the console's Monitoring entry."""
    api = f"http://127.0.0.1:{platform['ports']['api']}"

    def monitoring():
        try:
            with urllib.request.urlopen(f"{api}/healthchecks", timeout=5) as response:
                entries = json.loads(response.read())
        except urllib.error.HTTPError as answered:  # 218 and 503 carry the same body
            entries = json.loads(answered.read())
        return next(e for e in entries if e["type"] == "General" and e["name"] == "Monitoring")

    entry = eventually(lambda: (lambda m: m if any("CaracalServiceNotReady" in a for a in m["alerts"]) else None)(monitoring()),
                       90, "the firing alert in /healthchecks")
    assert entry["status"] == "Degraded", entry
    assert any(a.startswith(tuple(f"{n} critical active alert" for n in range(1, 10))) for a in entry["alerts"]), entry
