"""The gateway against a running platform, checked by things nobody here wrote: instances of
every kind (text, OpenMetrics, slow, down, garbage, 401, over the 32 MiB cap) registered
through the API, federated with an STS token, the answer parsed by prometheus_client's text
and OpenMetrics parsers with values and labels checked; a revoked token refused within 2 s;
and a real Prometheus scraping the gateway with a token file."""

import json
import os
import pathlib
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from conftest import ADMIN, API, BEARER, GATEWAY, call, create_client, delete_client, issue, revoke

TEXT = """# HELP shop_orders_total Orders taken.
# TYPE shop_orders_total counter
shop_orders_total{method="card",team="checkout"} 41
shop_orders_total{method="cash"} 2
# TYPE shop_queue gauge
shop_queue 7
# TYPE shop_latency_seconds histogram
shop_latency_seconds_bucket{le="0.1"} 3
shop_latency_seconds_bucket{le="+Inf"} 5
shop_latency_seconds_sum 1.25
shop_latency_seconds_count 5
"""
OPENMETRICS = """# TYPE shop_orders counter
# HELP shop_orders Orders taken.
shop_orders_total{method="card"} 13
# TYPE shop_queue gauge
shop_queue 9
# EOF
"""


class Instance(BaseHTTPRequestHandler):
    """One fake instance; its behaviour is the server's `behaviour` attribute."""

    def do_GET(self):
        behaviour = self.server.behaviour
        expected = "Bearer other-bearer" if behaviour == "unauthorized" else f"Bearer {BEARER}"
        if self.headers.get("Authorization") != expected:
            self.send_response(401)
            self.end_headers()
            return
        kind, body = {
            "text": ("text/plain; version=0.0.4", TEXT),
            "openmetrics": ("application/openmetrics-text; version=1.0.0", OPENMETRICS),
            "garbage": ("text/plain", "<html>this is not an exposition</html>\n{{{"),
            # Over the 32 MiB body cap before the 200,000-sample limit: long lines.
            "huge": ("text/plain; version=0.0.4", ('padding{x="' + "0123456789" * 18 + '"} 1\n') * 200_000),
            "slow": ("text/plain; version=0.0.4", "late 1\n"),
        }[behaviour]
        if behaviour == "slow":
            time.sleep(5)
        data = body.encode()
        try:
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args):
        pass


def serve(behaviour):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Instance)
    server.behaviour = behaviour
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture(scope="module")
def fleet():
    servers, urls = [], {}
    for behaviour in ("text", "openmetrics", "slow", "garbage", "unauthorized", "huge"):
        server, url = serve(behaviour)
        servers.append(server)
        urls[behaviour] = url
    urls["down"] = closed_port()
    name = f"federated-{os.getpid()}"
    # The instances are fail-closed: as an operator would, bind them a credential (the bearer
    # they demand) in the gateway's credentials directory, beside `caracal up`'s secrets.
    credentials = pathlib.Path(os.environ.get("CARACAL_CREDENTIALS_DIR") or
                               pathlib.Path(os.environ.get("METRICS_BEARER_FILE", ".caracal/secrets/metrics_bearer")).parent.parent / "credentials")
    credential = credentials / f"federation-{os.getpid()}"
    credential.write_text(BEARER + "\n")
    spec = {"name": name, "instances": sorted(urls.values()), "timeout_ms": 1500, "interval_ms": 60000,
            "labels": {"team": "payments"}, "credential": credential.name}
    status, _, body = call("POST", f"{API}/v1/targets", json.dumps(spec).encode(),
                           {"authorization": f"Bearer {ADMIN}", "content-type": "application/json"})
    assert status == 201, body
    client = create_client(f"federation-{os.getpid()}", ["metrics:read", "targets:read"])
    yield {"name": name, "urls": urls, "client": client}
    call("DELETE", f"{API}/v1/targets/{name}", headers={"authorization": f"Bearer {ADMIN}"})
    delete_client(client[0])
    credential.unlink(missing_ok=True)
    for server in servers:
        server.shutdown()


def federate(fleet, token, accept=None, query=""):
    headers = {"authorization": f"Bearer {token}"}
    if accept:
        headers["accept"] = accept
    # The registry is cached for 2 s: a just-registered target may take that long to show.
    deadline = time.time() + 10
    while True:
        status, response_headers, body = call("GET", f"{GATEWAY}/v1/targets/{fleet['name']}/metrics{query}", headers=headers)
        if status != 404 or time.time() > deadline:
            return status, response_headers, body.decode()
        time.sleep(0.5)


def host_port(url):
    return url.removeprefix("http://")


def samples(families):
    return [(s.name, s.labels, s.value) for family in families for s in family.samples]


def find(all_samples, name, **labels):
    return [value for n, have, value in all_samples if n == name and all(have.get(k) == v for k, v in labels.items())]


def test_federated_text_parses_with_prometheus_client_and_holds_every_good_instance(fleet):
    token = issue(fleet["client"], "metrics:read")["access_token"]
    status, headers, body = federate(fleet, token)
    assert status == 200, body[:500]
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    got = samples(parse_text(body))
    text, om = host_port(fleet["urls"]["text"]), host_port(fleet["urls"]["openmetrics"])
    name = fleet["name"]
    # prometheus_client names a counter family without _total; its samples keep it.
    assert find(got, "shop_orders_total", method="card", instance=text, target=name, team="checkout", exported_team="payments") == [41.0]
    assert find(got, "shop_orders_total", method="cash", instance=text, team="payments") == [2.0]
    assert find(got, "shop_orders_total", method="card", instance=om, team="payments") == [13.0]
    assert find(got, "shop_queue", instance=text) == [7.0] and find(got, "shop_queue", instance=om) == [9.0]
    assert find(got, "shop_latency_seconds_bucket", le="+Inf", instance=text) == [5.0]
    reasons = {"slow": "timeout", "down": "connect", "garbage": "parse", "unauthorized": "status", "huge": "too_large"}
    for behaviour, url in fleet["urls"].items():
        instance = host_port(url)
        up = find(got, "caracal_federation_up", target=name, instance=instance)
        assert up == [0.0 if behaviour in reasons else 1.0], (behaviour, up)
        if behaviour in reasons:
            assert find(got, "caracal_federation_error", target=name, instance=instance, reason=reasons[behaviour]) == [1.0], behaviour
    assert not find(got, "padding") and not find(got, "late")


def test_federated_openmetrics_parses_with_the_openmetrics_parser(fleet):
    token = issue(fleet["client"], "metrics:read")["access_token"]
    status, headers, body = federate(fleet, token, accept="application/openmetrics-text;version=1.0.0")
    assert status == 200, body[:500]
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    got = samples(parse_openmetrics(body))
    assert find(got, "shop_orders_total", method="card", instance=host_port(fleet["urls"]["openmetrics"])) == [13.0]
    assert find(got, "caracal_federation_up", instance=host_port(fleet["urls"]["text"])) == [1.0]


def test_without_the_scope_or_revoked_the_token_is_refused_within_2s(fleet):
    reader = issue(fleet["client"], "targets:read")["access_token"]
    status, _, _ = federate(fleet, reader)
    assert status == 403, "targets:read is not metrics:read"
    token = issue(fleet["client"], "metrics:read")["access_token"]
    assert federate(fleet, token, query="?only_target_metrics")[0] == 200
    revoked_at = time.time()
    revoke(fleet["client"], token)
    while federate(fleet, token, query="?only_target_metrics")[0] != 401:
        assert time.time() - revoked_at < 2.0, "the gateway still accepts a token revoked 2 s ago"
        time.sleep(0.02)


def test_a_real_prometheus_scrapes_the_gateway_with_a_token_file(fleet):
    prometheus = shutil.which("prometheus")
    assert prometheus, "apt-get install -y prometheus"
    work = pathlib.Path(tempfile.mkdtemp(prefix="caracal-federation-"))
    (work / "token").write_text(issue(fleet["client"], "metrics:read")["access_token"])
    gateway = urllib.parse.urlparse(GATEWAY)
    config = {
        "global": {"scrape_interval": "2s", "scrape_timeout": "1900ms"},
        "scrape_configs": [{
            "job_name": "federation", "metrics_path": f"/v1/targets/{fleet['name']}/metrics", "honor_labels": True,
            "static_configs": [{"targets": [gateway.netloc]}],
            "authorization": {"type": "Bearer", "credentials_file": str(work / "token")},
        }],
    }
    (work / "prometheus.yml").write_text(json.dumps(config))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(work / "prometheus.log", "w")
    process = subprocess.Popen([prometheus, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
                                f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    try:
        def query(expr):
            try:
                status, _, body = call("GET", f"http://127.0.0.1:{port}/api/v1/query?query={urllib.parse.quote(expr)}")
            except OSError:  # not listening yet
                return []
            return json.loads(body)["data"]["result"] if status == 200 else []

        deadline = time.time() + 60
        wanted = {host_port(fleet["urls"]["text"]), host_port(fleet["urls"]["openmetrics"])}
        while True:
            series = query(f'shop_queue{{target="{fleet["name"]}"}}')
            seen = {s["metric"].get("instance") for s in series}
            if wanted <= seen or time.time() > deadline:
                break
            time.sleep(1)
        assert wanted <= seen, f"series from every good instance: {series}; log: {(work / 'prometheus.log').read_text()[-2000:]}"
        for s in series:
            assert s["metric"]["team"] == "payments" and s["metric"]["target"] == fleet["name"], s
        up = query(f'caracal_federation_up{{target="{fleet["name"]}"}}')
        assert len(up) == len(fleet["urls"]), up
        assert query('up{job="federation"}')[0]["value"][1] == "1"
    finally:
        process.terminate()
        process.wait(timeout=20)
        shutil.rmtree(work, ignore_errors=True)
