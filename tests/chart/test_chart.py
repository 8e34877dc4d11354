"""The chart, statically: renders (default, dev, production), lints strictly, validates every
kind, refuses bad values, keeps env names true to the code, ships the dashboards, and its
alert rules pass promtool's checks and unit tests (a firing and a quiet case per alert)."""

import base64
import json
import re
import subprocess
import tempfile

import helm_python
import pytest
import yaml

from conftest import CHART, HERE, ROOT, URLS, documents, render, tool, values_file

CORE_KINDS = {"Deployment", "StatefulSet", "Service", "ConfigMap", "Secret", "Job", "PodDisruptionBudget", "HorizontalPodAutoscaler", "NetworkPolicy"}
# The two shapes of an install: nothing set (in-chart PostgreSQL and Redis), and managed stores.
IN_CHART = {}


@pytest.mark.parametrize("values_name", [None, "in-chart", "values-dev.yaml", "values-production.yaml"])
def test_renders_and_lints_strictly(values_name):
    shapes = {None: URLS, "in-chart": IN_CHART}
    values = shapes[values_name] if values_name in shapes else values_file(values_name)
    docs = documents(render(values))
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ConfigMap", "Job", "ServiceMonitor", "PrometheusRule"} <= kinds
    assert ("StatefulSet" in kinds) == (values_name == "in-chart"), kinds
    report = helm_python.lint(str(CHART), values=values, strict=True)
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not problems, problems


def test_every_core_kind_validates_strictly():
    for values in [IN_CHART, URLS, values_file("values-dev.yaml"), values_file("values-production.yaml")]:
        docs = [d for d in documents(render(values)) if d["kind"] in CORE_KINDS]
        with tempfile.TemporaryDirectory() as tmp:
            files = []
            for i, doc in enumerate(docs):
                path = f"{tmp}/{i}-{doc['kind']}.yaml"
                with open(path, "w") as f:
                    yaml.safe_dump(doc, f)
                files.append(path)
            result = subprocess.run([tool("kubernetes-validate"), "--strict", "--quiet", *files], capture_output=True, text=True)
            assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("shape", ["in-chart", "production"])
def test_servicemonitors_and_rules_validate_against_the_operator_schemas(shape):
    values = IN_CHART if shape == "in-chart" else values_file("values-production.yaml")
    docs = [d for d in documents(render(values)) if d["kind"] in ("ServiceMonitor", "PrometheusRule")]
    result = subprocess.run(["node", str(HERE / "validate_crds.mjs")], input=json.dumps(docs), capture_output=True, text=True, cwd=HERE)
    assert result.returncode == 0, result.stdout + result.stderr
    # A ServiceMonitor per service (six) and the rules; production also federates (one more).
    assert result.stdout.count("valid ") == (7 if shape == "in-chart" else 8), result.stdout


def test_deployments_are_hardened_and_probed():
    for doc in (d for d in documents(render()) if d["kind"] == "Deployment"):
        # An upgrade never leaves fewer ready replicas than asked for.
        assert doc["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
        pod = doc["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
        assert container["resources"]["requests"] and container["resources"]["limits"]
        assert container["livenessProbe"]["httpGet"]["path"] == "/health"
        assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
        assert container["startupProbe"]["httpGet"]["path"] == "/health"
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container[probe]["timeoutSeconds"] >= 1, probe
        assert container["lifecycle"]["preStop"]["sleep"]["seconds"] >= 0
        assert pod["terminationGracePeriodSeconds"] >= 3 + 5 + 15 + 5
        env = {e["name"]: e for e in container["env"]}
        assert env["CARACAL_MODE"]["value"] == "stable"


def test_grpc_probes_ask_the_services_own_port_for_liveness_and_readiness():
    values = dict(URLS, probes={"kind": "grpc", "startup": {"periodSeconds": 2, "timeoutSeconds": 2, "failureThreshold": 30},
                                "liveness": {"periodSeconds": 10, "timeoutSeconds": 2, "failureThreshold": 3},
                                "readiness": {"periodSeconds": 5, "timeoutSeconds": 2, "failureThreshold": 2}})
    docs = documents(render(values))
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    assert len(deployments) == 6
    for doc in deployments:
        (container,) = doc["spec"]["template"]["spec"]["containers"]
        (port,) = container["ports"]
        for probe, service in (("startupProbe", ""), ("livenessProbe", ""), ("readinessProbe", "ready")):
            assert container[probe]["grpc"] == {"port": port["containerPort"], "service": service}, (probe, container[probe])
            assert "httpGet" not in container[probe]
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i, doc in enumerate(deployments):
            files.append(f"{tmp}/{i}.yaml")
            with open(files[-1], "w") as f:
                yaml.safe_dump(doc, f)
        result = subprocess.run([tool("kubernetes-validate"), "--strict", "--quiet", *files], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
    with pytest.raises(helm_python.HelmError):
        render(dict(URLS, probes=dict(values["probes"], kind="tcp")))


def test_a_grace_period_that_cannot_cover_the_drain_is_refused():
    values = dict(URLS, terminationGracePeriodSeconds=10)
    with pytest.raises(helm_python.HelmError, match="terminationGracePeriodSeconds"):
        render(values)


def test_bad_values_are_refused_by_the_schema():
    for bad in [dict(URLS, mode="production"), dict(URLS, services={"api": {"enabled": True, "port": 0, "replicas": 1}})]:
        with pytest.raises(helm_python.HelmError):
            render(bad)


def test_env_names_are_the_codes_names():
    env_rs = (ROOT / "crates/core/src/env.rs").read_text()
    known = set(re.findall(r'pub const \w+: &str = "([A-Z_]+)";', env_rs))
    assert {"DATABASE_URL", "REDIS_URL", "PORT", "CARACAL_MODE", "METRICS_BEARER_FILE"} <= known
    rendered = documents(render(values_file("values-production.yaml")))
    names = set()
    for doc in rendered:
        if doc["kind"] in ("Deployment", "Job"):
            for container in doc["spec"]["template"]["spec"]["containers"]:
                names |= {e["name"] for e in container.get("env", [])}
    assert names, "no env at all?"
    unknown = names - known
    assert not unknown, f"env names the code does not read: {unknown}"


def test_the_config_file_loads_in_the_real_binary():
    """The ConfigMap's caracal.toml goes through caracal-core's loader: a bad key would exit 2."""
    config = next(d for d in documents(render()) if d["kind"] == "ConfigMap" and "caracal.toml" in d["data"])
    binary = ROOT / "target" / "debug" / "caracal-api"
    assert binary.exists(), "build the binaries first (cargo build --bins)"
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
        f.write(config["data"]["caracal.toml"])
        f.flush()
        env = {"CARACAL_CONFIG": f.name, "DATABASE_URL": "postgres://x@127.0.0.1:1/x", "REDIS_URL": "redis://127.0.0.1:1/", "CARACAL_MODE": "dev"}
        result = subprocess.run([str(binary), "--migrate"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr  # the config loaded; only the database is absent
    assert "invalid configuration" not in result.stderr


def test_the_outbound_policy_and_the_gateways_credentials_render_where_they_belong():
    """[outbound] reaches every service through the shared file, and loads; the credentials
    Secret is mounted into the gateway alone."""
    deny = ["169.254.0.0/16", "fe80::/10", "127.0.0.0/8", "::1/128"]
    values = dict(URLS, outbound={"allow": ["10.0.0.0/8"], "deny": deny}, federation={"credentialsSecret": "scrape-credentials", "targets": []})
    docs = documents(render(values))
    config = next(d for d in docs if d["kind"] == "ConfigMap" and "caracal.toml" in d["data"])["data"]["caracal.toml"]
    assert 'allow = ["10.0.0.0/8"]' in config and 'deny = ["169.254.0.0/16", "fe80::/10", "127.0.0.0/8", "::1/128"]' in config, config
    for doc in docs:
        if doc["kind"] != "Deployment":
            continue
        spec = doc["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        secrets = {v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
        gateway = doc["metadata"]["labels"]["app.kubernetes.io/component"] == "gateway"
        assert (env.get("CARACAL_GATEWAY__CREDENTIALS_DIR") == "/var/run/caracal/credentials") == gateway, doc["metadata"]["name"]
        assert ("scrape-credentials" in secrets) == gateway, doc["metadata"]["name"]
    binary = ROOT / "target" / "debug" / "caracal-gateway"
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
        f.write(config)
        f.flush()
        env = {"CARACAL_CONFIG": f.name, "DATABASE_URL": "postgres://x@127.0.0.1:1/x", "REDIS_URL": "redis://127.0.0.1:1/",
               "CARACAL_MODE": "dev", "PORT": "0"}
        process = subprocess.Popen([str(binary)], env=env, stderr=subprocess.PIPE, text=True)
        try:
            _, stderr = process.communicate(timeout=3)
        except subprocess.TimeoutExpired:
            process.kill()
            _, stderr = process.communicate()
    assert "invalid configuration" not in stderr, stderr
    bad = dict(URLS, outbound={"allow": [], "deny": ["not-a-range"]})
    with pytest.raises(helm_python.HelmError):
        render(bad)


def test_retention_is_written_only_when_set_and_a_ledger_shorter_than_the_outbox_stops_the_audit():
    """retention.history and retention.ledger reach [store.retention] and [audit] of the shared
    file only when set (a previous release reading the file during a roll never sees them);
    the real audit binary starts with a valid pair and exits 2 naming audit.retention when the
    ledger would keep less than the outbox (24h)."""
    config_of = lambda values: next(
        d for d in documents(render(values)) if d["kind"] == "ConfigMap" and "caracal.toml" in d["data"]
    )["data"]["caracal.toml"]
    plain = config_of(dict(URLS))
    assert "[store.retention]" not in plain and "[audit]" not in plain, plain
    binary = ROOT / "target" / "debug" / "caracal-audit"
    assert binary.exists(), "build the binaries first (cargo build --bins)"

    def start(config):
        with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
            f.write(config)
            f.flush()
            env = {"CARACAL_CONFIG": f.name, "DATABASE_URL": "postgres://x@127.0.0.1:1/x", "REDIS_URL": "redis://127.0.0.1:1/",
                   "CARACAL_MODE": "dev", "PORT": "0"}
            process = subprocess.Popen([str(binary)], env=env, stderr=subprocess.PIPE, text=True)
            try:
                process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                pass
            code = process.poll()
            process.terminate()
            _, stderr = process.communicate(timeout=30)
            return code, stderr

    good = config_of(dict(URLS, retention={"history": "7d", "ledger": "90d"}))
    assert '[store.retention]\n    history = "7d"'.replace("    ", "") in good.replace("    ", ""), good
    assert '[audit]\nretention = "90d"' in good.replace("    ", ""), good
    code, stderr = start(good)
    assert code is None and "invalid configuration" not in stderr, stderr
    code, stderr = start(config_of(dict(URLS, retention={"ledger": "1h"})))
    assert code == 2, stderr
    assert "audit.retention" in stderr and "coordinator.relay.retention" in stderr, stderr
    with pytest.raises(helm_python.HelmError):
        render(dict(URLS, retention={"history": "a month"}))


def test_the_control_section_loads_in_the_real_control():
    """caracal-control reads [control]: with the rendered file it starts (a bad key exits 2 at once)."""
    values = dict(URLS, targets=[{"name": "shop", "instances": ["http://10.0.0.7:9100"]}], control={"nameservers": ["127.0.0.1:53"]})
    config = next(d for d in documents(render(values)) if d["kind"] == "ConfigMap" and "caracal.toml" in d["data"])
    binary = ROOT / "target" / "debug" / "caracal-control"
    assert binary.exists(), "build the binaries first (cargo build --bins)"
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
        f.write(config["data"]["caracal.toml"])
        f.flush()
        env = {"CARACAL_CONFIG": f.name, "DATABASE_URL": "postgres://x@127.0.0.1:1/x", "REDIS_URL": "redis://127.0.0.1:1/",
               "CARACAL_MODE": "dev", "PORT": "0"}
        control = subprocess.Popen([str(binary)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            control.wait(timeout=3)
        except subprocess.TimeoutExpired:
            pass
        running = control.poll() is None
        control.terminate()
        _, stderr = control.communicate(timeout=30)
    assert running, f"caracal-control exited at start: {stderr}"
    assert "invalid configuration" not in stderr


def test_secret_is_generated_or_taken_from_an_existing_one():
    generated = next(d for d in documents(render()) if d["kind"] == "Secret")
    assert set(generated["data"]) == {"metrics-bearer", "admin-token", "database-url", "redis-url", "sts-key-encryption",
                                      "postgres-password", "redis-password"}
    kek = base64.b64decode(base64.b64decode(generated["data"]["sts-key-encryption"]))
    assert len(kek) == 32, "the STS's key-encryption key is 32 random bytes, base64 in the file"
    assert generated["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    production = documents(render(values_file("values-production.yaml")))
    assert not [d for d in production if d["kind"] == "Secret"]
    for monitor in (d for d in production if d["kind"] == "ServiceMonitor"):
        endpoint = monitor["spec"]["endpoints"][0]
        assert endpoint["authorization"] == {"type": "Bearer", "credentials": {"name": "caracal-production", "key": "metrics-bearer"}}
        assert "bearerTokenSecret" not in endpoint and "bearerTokenFile" not in endpoint
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_the_chart_ships_the_dashboards_of_infra_grafana():
    shipped = {d["metadata"]["name"]: d for d in documents(render()) if d["kind"] == "ConfigMap" and "grafana_dashboard" in d["metadata"]["labels"]}
    sources = sorted((ROOT / "infra" / "grafana").glob("*.json"))
    assert len(shipped) == len(sources) == 2
    for source in sources:
        assert (CHART / "dashboards" / source.name).read_text() == source.read_text(), f"{source.name}: chart copy differs"
        json.loads(source.read_text())


def test_every_alert_has_severity_annotations_and_its_own_runbook_anchor():
    rules = rule_groups()
    runbooks = (ROOT / "docs" / "runbooks.md").read_text()
    anchors = {h.strip().lower() for h in re.findall(r"^## (Caracal\w+)", runbooks, re.M)}
    alerts = [r for g in rules for r in g["rules"]]
    assert len(alerts) >= 13
    for alert in alerts:
        name = alert["alert"]
        assert re.fullmatch(r"Caracal[A-Z][A-Za-z0-9]+", name)
        assert alert["labels"]["severity"] in ("critical", "warning")
        assert alert["annotations"]["summary"] and alert["annotations"]["description"]
        assert alert["annotations"]["runbook_url"].endswith("#" + name.lower())
        assert name.lower() in anchors, f"docs/runbooks.md has no section for {name}"


def rule_groups(values=None):
    rule = next(d for d in documents(render(values)) if d["kind"] == "PrometheusRule")
    return rule["spec"]["groups"]


@pytest.mark.parametrize("values", [IN_CHART, URLS], ids=["in-chart", "managed"])
def test_promtool_checks_the_rendered_rules(values):
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/rules.yml"
        with open(path, "w") as f:
            yaml.safe_dump({"groups": rule_groups(values)}, f)
        result = subprocess.run([tool("promtool"), "check", "rules", path], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


# Per alert: input series that make it fire, series that keep it quiet, the labels it fires
# with, and when to look (after its `for:`).
NS = 'namespace="caracal"'
CASES = {
    "CaracalServiceNotReady": ([f'caracal_ready{{{NS},job="caracal-api",service="api"}}', "0x40"], "1x40", {"job": "caracal-api", "service": "api"}, "15m"),
    "CaracalRequiredCheckFailing": (
        [f'caracal_check_failing{{{NS},job="caracal-api",check="redis:connectivity",rung="storage",required="true"}}', "1x40"],
        "0x40", {"job": "caracal-api", "check": "redis:connectivity", "rung": "storage"}, "15m"),
    "CaracalReadinessFlapping": ([f'caracal_check_transitions_total{{{NS},job="caracal-api",check="redis:connectivity"}}', "0+1x40"], "5x40",
                                 {"job": "caracal-api", "check": "redis:connectivity"}, "20m"),
    "CaracalOutboxBacklogTooOld": ([f'caracal_outbox_oldest_pending_age_seconds{{{NS},job="caracal-api"}}', "900x40"], "3x40", {"job": "caracal-api"}, "15m"),
    "CaracalOutboxDeadRows": ([f'caracal_outbox_dead{{{NS},job="caracal-api"}}', "2x40"], "0x40", {"job": "caracal-api"}, "15m"),
    "CaracalStreamLagHigh": ([f'caracal_stream_lag{{{NS},stream="caracal.events",group="audit"}}', "50000x40"], "10x40",
                             {"stream": "caracal.events", "group": "audit"}, "20m"),
    "CaracalStreamPendingTooOld": ([f'caracal_stream_oldest_pending_age_seconds{{{NS},stream="caracal.events",group="audit"}}', "900x40"], "2x40",
                                   {"stream": "caracal.events", "group": "audit"}, "20m"),
    "CaracalDLQNotEmpty": ([f'caracal_audit_dlq_length{{{NS},job="caracal-audit"}}', "3x40"], "0x40", {"job": "caracal-audit"}, "15m"),
    "CaracalAuditLedgerGap": ([f'caracal_audit_ledger_gap{{{NS},job="caracal-audit"}}', "1500x40"], "0x40", {"job": "caracal-audit"}, "15m"),
    # One reset ten minutes in: still within the 30-minute window at 15m.
    "CaracalEventStreamWentBackwards": ([f'caracal_audit_stream_resets_total{{{NS},job="caracal-audit",reason="group_missing"}}', "0x10 1x30"], "0x40",
                                        {"job": "caracal-audit"}, "15m"),
    "CaracalMetricsScrapeFailing": (['up{job="caracal-api",instance="10.0.0.1:3000"}', "0x40"], "1x40", {"job": "caracal-api", "instance": "10.0.0.1:3000"}, "15m"),
    "CaracalFleetInstanceDown": ([f'caracal_coordinator_instance_up{{{NS},target="shop",url="http://shop:80"}}', "0x40"], "1x40",
                                 {"target": "shop", "url": "http://shop:80"}, "15m"),
    # Degraded for 15 minutes fires (after its 10m); degraded and back within minutes stays quiet.
    "CaracalInstanceDegraded": ([f'caracal_coordinator_instance_degraded{{{NS},target="shop",url="http://shop:80"}}', "1x40"], "0x5 1x5 0x30",
                                {"target": "shop", "url": "http://shop:80"}, "15m"),
    # At eval_time 15m, time() is 900: an expiry at 1000 leaves 100 s of signing, one far ahead is fine.
    "CaracalStsSigningKeyExpiring": ([f'caracal_sts_active_key_expiry_timestamp_seconds{{{NS},job="caracal-sts"}}', "1000x40"], "100000x40",
                                     {"job": "caracal-sts"}, "15m"),
    "CaracalRevocationsLagging": ([f'caracal_revocations_lag{{{NS},job="caracal-api"}}', "30x40"], "0.5x40", {"job": "caracal-api"}, "15m"),
    "CaracalFederatedInstanceDown": ([f'caracal_federation_up{{{NS},job="caracal-gateway",target="shop",instance="10.0.0.7:9100"}}', "0x40"], "1x40",
                                     {"target": "shop", "instance": "10.0.0.7:9100"}, "20m"),
    "CaracalDiscoveryFailing": ([f'caracal_control_discovery_failures_total{{{NS},job="caracal-control",target="shop",reason="timeout"}}', "0+6x40"],
                                "5x40", {"target": "shop", "reason": "timeout"}, "20m"),
    # At eval_time 15m, time() is 900: a last success at 0 is 900 s old, one at 890 is fresh.
    "CaracalDiscoveryStale": ([f'caracal_control_discovery_last_success_timestamp_seconds{{{NS},job="caracal-control",target="shop"}}', "0x40"],
                              "0+60x40", {"target": "shop"}, "15m"),
    "CaracalDeclaredTargetsInvalid": ([f'caracal_control_declared_files_invalid{{{NS},job="caracal-control"}}', "1x40"], "0x40",
                                      {"job": "caracal-control"}, "15m"),
}


def expected_annotations(rule, labels):
    out = {}
    for key, text in rule["annotations"].items():
        out[key] = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels.get(m.group(1), ""), text)
    return out


def http_case(name, rule, errors, eval_time, samples):
    """Requests growing 10/min; `errors` of them 5xx."""
    labels = {"namespace": "caracal", "job": "caracal-api"}
    series = [
        {"series": f'http_server_requests_total{{{NS},job="caracal-api",method="GET",route="/v1/status",status="200"}}', "values": f"0+{10 - errors}x{samples}"},
        {"series": f'http_server_requests_total{{{NS},job="caracal-api",method="GET",route="/v1/status",status="500"}}', "values": f"0+{errors}x{samples}"},
    ]
    fired = [{"exp_labels": dict(labels, severity=rule["labels"]["severity"]), "exp_annotations": expected_annotations(rule, labels)}] if errors else []
    return {"interval": "1m", "input_series": series, "alert_rule_test": [{"eval_time": eval_time, "alertname": name, "exp_alerts": fired}]}


def latency_case(name, rule, slow):
    labels = {"namespace": "caracal", "job": "caracal-api"}
    base = f'http_server_request_duration_seconds_bucket{{{NS},job="caracal-api",method="GET",route="/v1/status",le='
    fast_bucket, slow_bucket = ("0", "10") if slow else ("10", "0")
    series = [
        {"series": base + '"0.5"}', "values": f"0+{fast_bucket}x40"},
        {"series": base + '"2.5"}', "values": f"0+{fast_bucket}x40"},
        {"series": base + '"+Inf"}', "values": "0+10x40"},
    ]
    del slow_bucket
    fired = [{"exp_labels": dict(labels, severity=rule["labels"]["severity"]), "exp_annotations": expected_annotations(rule, labels)}] if slow else []
    return {"interval": "1m", "input_series": series, "alert_rule_test": [{"eval_time": "20m", "alertname": name, "exp_alerts": fired}]}


def scrapes_case(rule, failing):
    """Instance scrapes growing 10/min; half of them timing out when `failing`."""
    labels = {"namespace": "caracal", "job": "caracal-gateway"}
    base = f'caracal_gateway_instance_scrapes_total{{{NS},job="caracal-gateway",result='
    series = [{"series": base + '"ok"}', "values": f"0+{5 if failing else 10}x40"},
              {"series": base + '"timeout"}', "values": f"0+{5 if failing else 0}x40"}]
    fired = [{"exp_labels": dict(labels, severity=rule["labels"]["severity"]), "exp_annotations": expected_annotations(rule, labels)}] if failing else []
    return {"interval": "1m", "input_series": series, "alert_rule_test": [{"eval_time": "30m", "alertname": rule["alert"], "exp_alerts": fired}]}


def certificate_cases(rules):
    """The two severities of CaracalTargetCertificateExpiring: at eval_time 15m, time() is 900,
    so an expiry 10 days ahead is a warning, 1 day ahead critical, 30 days ahead nothing."""
    by_severity = {r["labels"]["severity"]: r for r in rules}
    assert set(by_severity) == {"warning", "critical"}
    labels = {"namespace": "caracal", "target": "shop", "instance": "https://shop.test:443"}
    series = f'caracal_target_certificate_expiry_timestamp_seconds{{{NS},job="caracal-coordinator",target="shop",instance="https://shop.test:443"}}'
    cases = []
    for days, firing in ((10, "warning"), (1, "critical"), (30, None)):
        fired = []
        if firing:
            rule = by_severity[firing]
            fired = [{"exp_labels": dict(labels, severity=firing), "exp_annotations": expected_annotations(rule, labels)}]
        cases.append({"interval": "1m", "input_series": [{"series": series, "values": f"{days * 86400 + 900}x40"}],
                      "alert_rule_test": [{"eval_time": "15m", "alertname": "CaracalTargetCertificateExpiring", "exp_alerts": fired}]})
    return cases


def test_promtool_unit_tests_fire_and_stay_quiet_for_every_alert():
    rules = {r["alert"]: r for g in rule_groups() for r in g["rules"]}
    tests = []
    for name, (fire, quiet, labels, eval_time) in CASES.items():
        rule = rules[name]
        full = dict(labels)
        if "namespace" in rule["expr"]:
            full["namespace"] = "caracal"
        fired = [{"exp_labels": dict(full, severity=rule["labels"]["severity"]), "exp_annotations": expected_annotations(rule, full)}]
        tests.append({"interval": "1m", "input_series": [{"series": fire[0], "values": fire[1]}],
                      "alert_rule_test": [{"eval_time": eval_time, "alertname": name, "exp_alerts": fired}]})
        tests.append({"interval": "1m", "input_series": [{"series": fire[0], "values": quiet}],
                      "alert_rule_test": [{"eval_time": eval_time, "alertname": name, "exp_alerts": []}]})
    tests.append(http_case("CaracalErrorBudgetFastBurn", rules["CaracalErrorBudgetFastBurn"], 5, "70m", 100))
    tests.append(http_case("CaracalErrorBudgetFastBurn", rules["CaracalErrorBudgetFastBurn"], 0, "70m", 100))
    tests.append(http_case("CaracalErrorBudgetSlowBurn", rules["CaracalErrorBudgetSlowBurn"], 5, "400m", 420))
    tests.append(http_case("CaracalErrorBudgetSlowBurn", rules["CaracalErrorBudgetSlowBurn"], 0, "400m", 420))
    tests.append(latency_case("CaracalLatencyP99High", rules["CaracalLatencyP99High"], True))
    tests.append(latency_case("CaracalLatencyP99High", rules["CaracalLatencyP99High"], False))
    tests.extend(certificate_cases([r for g in rule_groups() for r in g["rules"] if r["alert"] == "CaracalTargetCertificateExpiring"]))
    tests.append(scrapes_case(rules["CaracalGatewayScrapesFailing"], failing=True))
    tests.append(scrapes_case(rules["CaracalGatewayScrapesFailing"], failing=False))
    covered = {t["alert_rule_test"][0]["alertname"] for t in tests}
    assert covered == set(rules), f"alerts without a unit test: {set(rules) - covered}"
    with tempfile.TemporaryDirectory() as tmp:
        with open(f"{tmp}/rules.yml", "w") as f:
            yaml.safe_dump({"groups": rule_groups()}, f)
        with open(f"{tmp}/tests.yml", "w") as f:
            yaml.safe_dump({"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": tests}, f)
        result = subprocess.run([tool("promtool"), "test", "rules", f"{tmp}/tests.yml"], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_only_the_sts_gets_the_key_encryption_key_and_every_service_finds_the_sts():
    docs = documents(render())
    deployments = {d["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in docs if d["kind"] == "Deployment"}
    assert set(deployments) == {"sts", "api", "coordinator", "audit", "gateway", "control"}
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        env = {e["name"] for e in pod["containers"][0]["env"]}
        items = {i["key"] for v in pod["volumes"] if "secret" in v for i in v["secret"]["items"]}
        holds = "CARACAL_STS_KEY_ENCRYPTION_FILE" in env and "sts-key-encryption" in items
        assert holds == (name == "sts"), f"{name}: key-encryption key mounted: {holds}"
    config = next(d for d in docs if d["kind"] == "ConfigMap" and "caracal.toml" in d["data"])["data"]["caracal.toml"]
    assert 'sts_url = "http://caracal-sts:8080"' in config, config
    assert 'algorithm = "EdDSA"' in config


def test_declared_targets_reach_control_alone_as_a_file_it_reconciles():
    targets = [{"name": "shop", "discovery": {"dns": {"name": "shop.prod.svc.cluster.local", "port": 8080}}},
               {"name": "legacy", "instances": ["http://10.0.0.7:9100"]}]
    docs = documents(render(dict(URLS, targets=targets, control={"nameservers": ["10.96.0.10:53"]})))
    (declared,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-targets")]
    assert yaml.safe_load(declared["data"]["targets.yaml"]) == targets
    config = next(d for d in docs if d["kind"] == "ConfigMap" and "caracal.toml" in d["data"])["data"]["caracal.toml"]
    assert 'targets_dir = "/var/run/caracal/targets"' in config and 'nameservers = ["10.96.0.10:53"]' in config, config
    deployments = {d["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in docs if d["kind"] == "Deployment"}
    for name, deployment in deployments.items():
        mounts = {m["name"]: m["mountPath"] for m in deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
        assert ("targets" in mounts) == (name == "control"), name
    assert deployments["control"]["spec"]["template"]["spec"]["containers"][0]["command"] == ["caracal-control"]
    for kind in ("Service", "ServiceMonitor", "PodDisruptionBudget", "NetworkPolicy"):
        assert any(d["kind"] == kind and d["metadata"]["name"] == "caracal-control" for d in docs), f"control has no {kind}"
    with pytest.raises(Exception):
        render(dict(URLS, targets=[{"name": "Bad Name"}]))


def test_listed_targets_are_federated_through_the_gateway_with_honor_labels():
    assert not [d for d in documents(render()) if d["metadata"]["name"].endswith("-federation")], "none listed, none rendered"
    values = dict(URLS, federation={"targets": [{"target": "shop"}, {"target": "payments", "interval": "15s"}]})
    (monitor,) = [d for d in documents(render(values)) if d["kind"] == "ServiceMonitor" and d["metadata"]["name"].endswith("-federation")]
    assert monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "gateway"
    paths = [(e["path"], e["interval"], e["honorLabels"]) for e in monitor["spec"]["endpoints"]]
    assert paths == [("/v1/targets/shop/metrics", "30s", True), ("/v1/targets/payments/metrics", "15s", True)]
    assert all(e["authorization"]["credentials"]["key"] == "metrics-bearer" for e in monitor["spec"]["endpoints"])
    with pytest.raises(helm_python.HelmError):
        render(dict(URLS, federation={"targets": [{"target": "Bad Name"}]}))


def test_the_default_image_is_the_one_the_image_command_builds():
    version = re.search(r'^version = "([^"]+)"', (ROOT / "Cargo.toml").read_text(), re.M).group(1)
    script = (ROOT / "infra" / "docker" / "build-image.sh").read_text()
    assert "image=${CARACAL_IMAGE:-ghcr.io/caracal/caracal:$version}" in script
    images = {c["image"] for d in documents(render()) if d["kind"] in ("Deployment", "Job")
              for c in d["spec"]["template"]["spec"]["containers"]}
    assert images == {f"ghcr.io/caracal/caracal:{version}"}, images


def test_a_first_install_with_no_values_runs_its_own_postgres_and_redis():
    rendered = render(IN_CHART)
    docs = documents(rendered)
    sets = {d["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in docs if d["kind"] == "StatefulSet"}
    assert set(sets) == {"postgresql", "redis"}
    secret = next(d for d in docs if d["kind"] == "Secret")
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert len(data["postgres-password"]) == 32 and len(data["redis-password"]) == 32
    assert data["database-url"] == f"postgres://caracal:{data['postgres-password']}@caracal-postgresql:5432/caracal"
    assert data["redis-url"] == f"redis://:{data['redis-password']}@caracal-redis:6379/"
    for name, statefulset in sets.items():
        pod = statefulset["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["image"].startswith(f"docker.io/library/{'postgres' if name == 'postgresql' else 'redis'}:")
        assert pod["securityContext"]["runAsNonRoot"] is True
        claim = statefulset["spec"]["volumeClaimTemplates"][0]
        assert claim["spec"]["resources"]["requests"]["storage"]
        env = {e["name"]: e for e in container.get("env", [])}
        password = env["POSTGRES_PASSWORD" if name == "postgresql" else "REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert password == {"name": "caracal-secrets", "key": f"{'postgres' if name == 'postgresql' else 'redis'}-password"}
    redis_args = sets["redis"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert redis_args[redis_args.index("--appendonly") + 1] == "yes", "Redis keeps its data (append-only file)"
    assert redis_args[redis_args.index("--maxmemory-policy") + 1] == "noeviction", "a stream is never evicted"
    # The migration waits for the database, and is part of the release (not a pre-install hook,
    # which would run before the database exists).
    (job,) = [d for d in docs if d["kind"] == "Job"]
    assert "helm.sh/hook" not in job["metadata"].get("annotations", {})
    # Evaluation only: the one Job runs the post-deployment steps too.
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == ["caracal-api", "--migrate", "--post-deploy"]
    (wait,) = job["spec"]["template"]["spec"]["initContainers"]
    assert "pg_isready -h caracal-postgresql" in wait["command"][-1]
    notes = next(t for p, t in rendered.items() if p.endswith("NOTES.txt"))
    assert "PostgreSQL: in-chart" in notes and "Redis: in-chart" in notes and "evaluation only" in notes
    # How to reach the status page: the api's Service, on its port, at /.
    assert "port-forward svc/caracal-api 3000" in notes and "http://127.0.0.1:3000/ " in notes, notes


def test_managed_stores_turn_the_in_chart_ones_off_one_value_each():
    only_db = documents(render({"database": {"url": "postgres://caracal@db:5432/caracal"}}))
    assert [d["metadata"]["labels"]["app.kubernetes.io/component"] for d in only_db if d["kind"] == "StatefulSet"] == ["redis"]
    managed = render(URLS)
    docs = documents(managed)
    assert not [d for d in docs if d["kind"] == "StatefulSet"]
    migrate, post_deploy = [d for d in docs if d["kind"] == "Job"]
    assert migrate["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert migrate["spec"]["template"]["spec"]["containers"][0]["command"] == ["caracal-api", "--migrate"]
    # The contract half after the roll.
    assert post_deploy["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    assert post_deploy["spec"]["template"]["spec"]["containers"][0]["command"] == ["caracal-api", "--migrate", "--post-deploy"]
    secret = next(d for d in docs if d["kind"] == "Secret")
    assert base64.b64decode(secret["data"]["database-url"]).decode() == URLS["database"]["url"]
    notes = next(t for p, t in managed.items() if p.endswith("NOTES.txt"))
    assert "PostgreSQL: managed" in notes and "evaluation only" not in notes
    existing = documents(render({"secrets": {"existingSecret": "mine"}}))
    assert not [d for d in existing if d["kind"] in ("StatefulSet", "Secret")]


def test_store_tls_files_and_the_redis_password_come_from_secrets_into_every_pod():
    values = dict(
        URLS,
        database={"url": URLS["database"]["url"] + "?sslmode=verify-full&sslrootcert=/var/run/secrets/caracal/postgres-tls/ca.crt", "tlsSecret": "pg-tls"},
        redis={"url": "rediss://caracal@redis:6380/0", "tls": {"secret": "redis-tls", "clientCertificate": True}, "passwordSecret": {"name": "redis-auth", "key": "pw"}},
    )
    docs = documents(render(values))
    pods = [d for d in docs if d["kind"] in ("Deployment", "Job")]
    assert len(pods) >= 7, "six services and the migration job"
    for doc in pods:
        spec = doc["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["CARACAL_REDIS_TLS__CA_FILE"] == "/var/run/secrets/caracal/redis-tls/ca.crt"
        assert env["CARACAL_REDIS_TLS__CLIENT_CERT_FILE"].endswith("/tls.crt")
        assert env["CARACAL_REDIS_TLS__CLIENT_KEY_FILE"].endswith("/tls.key")
        assert env["REDIS_PASSWORD_FILE"] == "/var/run/secrets/caracal/redis-password/password"
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        for name, secret in [("postgres-tls", "pg-tls"), ("redis-tls", "redis-tls"), ("redis-password", "redis-auth")]:
            assert mounts[name]["readOnly"] is True
            assert volumes[name]["secret"]["secretName"] == secret
            assert volumes[name]["secret"]["defaultMode"] == 0o440
        assert volumes["redis-password"]["secret"]["items"] == [{"key": "pw", "path": "password"}]
    # Without them, nothing extra is mounted or set.
    for doc in documents(render(URLS)):
        if doc["kind"] in ("Deployment", "Job"):
            (container,) = doc["spec"]["template"]["spec"]["containers"]
            assert not [e for e in container["env"] if "REDIS_TLS" in e["name"] or e["name"] == "REDIS_PASSWORD_FILE"]


def test_redis_behind_sentinels_replaces_the_url_in_every_pod_and_loads_in_the_real_binary():
    nodes = ["redis://sentinel-0.sentinel:26379", "redis://sentinel-1.sentinel:26379"]
    values = dict(URLS, redis={"sentinel": {"master": "caracal", "nodes": nodes}})
    docs = documents(render(values))
    assert not [d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["labels"]["app.kubernetes.io/component"] == "redis"]
    pods = [d for d in docs if d["kind"] in ("Deployment", "Job")]
    assert len(pods) >= 7, "six services and the migration job"
    for doc in pods:
        (container,) = doc["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert "REDIS_URL" not in env, doc["metadata"]["name"]
        assert env["CARACAL_REDIS_SENTINEL__MASTER"] == "caracal"
        assert json.loads(env["CARACAL_REDIS_SENTINEL__NODES"]) == nodes
    # The rendered env goes through caracal-core's loader: exit 1 (the database is absent), not 2.
    binary = ROOT / "target" / "debug" / "caracal-api"
    job = next(d for d in docs if d["kind"] == "Job")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if e["name"].startswith("CARACAL_REDIS_SENTINEL")}
    env.update({"DATABASE_URL": "postgres://x@127.0.0.1:1/x", "CARACAL_MODE": "dev"})
    result = subprocess.run([str(binary), "--migrate"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    # Half a setting, or both ways at once, is refused.
    for bad, message in [
        ({"sentinel": {"master": "caracal", "nodes": []}}, "redis.sentinel.nodes"),
        ({"url": "redis://redis:6379/", "sentinel": {"master": "caracal", "nodes": nodes}}, "not both"),
    ]:
        with pytest.raises(helm_python.HelmError, match=message):
            render(dict(URLS, redis=bad))
    with pytest.raises(helm_python.HelmError):
        render(dict(URLS, redis={"sentinel": {"master": "caracal", "nodes": ["sentinel-0:26379"]}}))


def test_monitoring_urls_reach_the_api_only():
    values = dict(URLS, monitoring={"prometheusUrl": "http://prometheus.monitoring:9090", "alertmanagerUrl": "http://alertmanager.monitoring:9093"})
    for doc in documents(render(values)):
        if doc["kind"] != "Deployment":
            continue
        (container,) = doc["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        if doc["metadata"]["labels"]["app.kubernetes.io/component"] == "api":
            assert env["CARACAL_API__PROMETHEUS_URL"] == "http://prometheus.monitoring:9090"
            assert env["CARACAL_API__ALERTMANAGER_URL"] == "http://alertmanager.monitoring:9093"
        else:
            assert not [n for n in env if n.startswith("CARACAL_API__")], doc["metadata"]["name"]
    unset = [d for d in documents(render(URLS)) if d["kind"] == "Deployment"]
    assert not [e for d in unset for e in d["spec"]["template"]["spec"]["containers"][0]["env"] if e["name"].startswith("CARACAL_API__")]
    with pytest.raises(helm_python.HelmError):
        render(dict(URLS, monitoring={"prometheusUrl": "prometheus:9090"}))


def test_telemetry_reaches_every_pod_and_loads_in_the_real_binary():
    endpoint = "http://otel-collector.observability:4318"
    values = dict(URLS, telemetry={"otlpEndpoint": endpoint, "sampleRatio": 0.25, "traceProbes": True})
    docs = documents(render(values))
    services = [d for d in docs if d["kind"] == "Deployment"]
    assert len(services) == 6, "six services (the migration job exports no spans)"
    for doc in services:
        (container,) = doc["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == endpoint, doc["metadata"]["name"]
        assert env["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
        assert env["OTEL_TRACES_SAMPLER_ARG"] == "0.25"
        assert env["CARACAL_TELEMETRY__TRACE_PROBES"] == "true"
    # The rendered env goes through caracal-core's loader: exit 1 (the database is absent), not 2.
    binary = ROOT / "target" / "debug" / "caracal-api"
    (container,) = services[0]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if e["name"].startswith(("OTEL_", "CARACAL_TELEMETRY"))}
    assert len(env) == 4, env
    env.update({"DATABASE_URL": "postgres://x@127.0.0.1:1/x", "REDIS_URL": "redis://127.0.0.1:1/", "CARACAL_MODE": "dev"})
    result = subprocess.run([str(binary), "--migrate"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "invalid configuration" not in result.stderr
    # Off by default; the former top-level `otlpEndpoint` still works.
    for doc in documents(render(URLS)):
        if doc["kind"] == "Deployment":
            assert not [e for e in doc["spec"]["template"]["spec"]["containers"][0]["env"] if e["name"].startswith("OTEL_")]
    legacy = [d for d in documents(render(dict(URLS, otlpEndpoint=endpoint))) if d["kind"] == "Deployment"]
    assert all({"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": endpoint} in d["spec"]["template"]["spec"]["containers"][0]["env"] for d in legacy)
    for bad in [{"sampleRatio": 2}, {"sampler": "jaeger_remote"}, {"otlpEndpoint": "otel-collector:4318"}]:
        with pytest.raises(helm_python.HelmError):
            render(dict(URLS, telemetry=bad))
