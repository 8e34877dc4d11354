"""Traces of the running platform as an OpenTelemetry backend gets them: `.ci/run` starts
otlp_collector.py (exports decoded with PyPI opentelemetry-proto, the official definitions)
and `caracal up --mode rc` with OTEL_EXPORTER_OTLP_ENDPOINT pointing at it. A registration
sent with a `traceparent` must be one trace from the api through the relay to the audit
ledger, and the ledger must show its trace id."""

import json
import os
import pathlib
import re
import secrets
import time

from conftest import ADMIN, API, call

SPANS = os.environ.get("CARACAL_OTLP_SPANS")
CARACAL = pathlib.Path(os.environ.get("CARACAL_ADMIN_TOKEN_FILE", ".caracal/secrets/admin_token")).resolve().parent.parent


def received():
    assert SPANS, "CARACAL_OTLP_SPANS names otlp_collector.py's file (.ci/run starts both)"
    path = pathlib.Path(SPANS)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_span(what, predicate, seconds=30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = [s for s in received() if predicate(s)]
        if found:
            return found[0]
        time.sleep(0.2)
    raise AssertionError(f"no span for {what}")


def test_a_registration_is_one_trace_through_api_relay_and_audit():
    trace = secrets.token_hex(16)
    caller = secrets.token_hex(8)
    name = f"traced-{secrets.token_hex(4)}"
    body = json.dumps({"name": name, "instances": ["http://127.0.0.1:9/"]}).encode()
    status, _, answer = call("POST", f"{API}/v1/targets", body, {
        "authorization": f"Bearer {ADMIN}", "content-type": "application/json",
        "traceparent": f"00-{trace}-{caller}-01"})
    assert status == 201, answer
    try:
        server = wait_span("POST /v1/targets", lambda s: s["trace_id"] == trace and s["kind"] == "SERVER")
        assert server["name"] == "POST /v1/targets"
        assert server["parent_span_id"] == caller
        assert server["service"] == "caracal-api"
        assert server["attributes"]["http.route"] == "/v1/targets"
        assert server["attributes"]["http.response.status_code"] == 201
        assert {"service.version", "service.instance.id"} <= set(server["resource"])
        create = wait_span("the relay's create", lambda s: s["trace_id"] == trace and s["name"] == "create caracal.events"
                           and s["attributes"].get("caracal.event.type") == "target.created")
        assert (create["kind"], create["service"]) == ("PRODUCER", "caracal-coordinator")
        process = wait_span("the audit's process", lambda s: s["trace_id"] == trace and s["parent_span_id"] == create["span_id"])
        assert (process["name"], process["kind"], process["service"]) == ("process caracal.events", "CONSUMER", "caracal-audit")
        wait_span("the ledger insert", lambda s: s["parent_span_id"] == process["span_id"] and s["name"] == "INSERT audit_events")
        # The ledger row names the trace.
        audit = json.loads((CARACAL / "state.json").read_text())["ports"]["audit"]
        status, _, page = call("GET", f"http://127.0.0.1:{audit}/v1/events?target={name}&type=target.created",
                               headers={"authorization": f"Bearer {ADMIN}"})
        assert status == 200, page
        (event,) = json.loads(page)["events"]
        assert event["trace_id"] == trace
    finally:
        call("DELETE", f"{API}/v1/targets/{name}", headers={"authorization": f"Bearer {ADMIN}"})


def test_no_span_carries_a_build_path_or_a_generic_name():
    spans = received()
    assert spans, "the platform exported spans"
    for span in spans:
        assert span["name"] != "request", span
        assert not any(k.startswith(("code.", "thread.")) for k in span["attributes"]), span
        assert not any(isinstance(v, str) and "/.cargo/" in v for v in span["attributes"].values()), span


def test_no_span_name_holds_a_target_name():
    """A span name is the same for every target (`probe`, a route template): a name per target
    would grow without bound with the fleet. The platform's own targets and one registered here
    are probed while the collector listens; no span name may hold any of their names."""
    name = f"spanned-{secrets.token_hex(4)}"
    body = json.dumps({"name": name, "instances": [f"{API}/"], "interval_ms": 500}).encode()
    status, _, answer = call("POST", f"{API}/v1/targets", body,
                             {"authorization": f"Bearer {ADMIN}", "content-type": "application/json"})
    assert status == 201, answer
    try:
        probe = wait_span("a probe of the new target", lambda s: s["attributes"].get("caracal.target") == name
                          and s["kind"] == "INTERNAL")
        assert probe["name"] == "probe", probe
        assert probe["attributes"]["caracal.instance"].startswith(API), probe
        status, _, listed = call("GET", f"{API}/v1/targets", headers={"authorization": f"Bearer {ADMIN}"})
        assert status == 200, listed
        platform = {t["name"] for t in json.loads(listed) if t["managed_by"] == "platform"}
        assert {"api", "coordinator"} <= platform, platform
        names = platform | {name}
        for span in received():
            words = set(re.split(r"[^A-Za-z0-9._-]+", span["name"]))
            assert not words & names, f"a span name holds a target's name: {span}"
            assert "://" not in span["name"], span
    finally:
        call("DELETE", f"{API}/v1/targets/{name}", headers={"authorization": f"Bearer {ADMIN}"})
