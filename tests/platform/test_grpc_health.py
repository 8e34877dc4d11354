"""gRPC health (grpc.health.v1) on every service's own port, checked by a client nobody here
wrote: PyPI grpcio-health-checking. Service "" is liveness, "ready" the readiness ladder; with
the platform's PostgreSQL frozen, "ready" turns NOT_SERVING while "" stays SERVING."""

import json
import os
import pathlib
import signal
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# The platform `caracal up` started: .caracal/ holds the secrets, its ports and its PostgreSQL.
CARACAL = pathlib.Path(os.environ.get("CARACAL_ADMIN_TOKEN_FILE", ".caracal/secrets/admin_token")).resolve().parent.parent
SERVICES = ["api", "sts", "gateway", "audit", "coordinator", "control"]


def ports():
    state = json.loads((CARACAL / "state.json").read_text())
    return {name: state["ports"][name] for name in SERVICES}


def check(port, service):
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def wait_for(port, service, want, seconds):
    deadline = time.monotonic() + seconds
    seen = None
    while time.monotonic() < deadline:
        try:
            seen = check(port, service)
        except grpc.RpcError as error:
            seen = error.code()
        if seen == want:
            return
        time.sleep(0.2)
    pytest.fail(f"port {port} service {service!r}: {seen}, not {want}, after {seconds}s")


def postgres_processes():
    """The platform's PostgreSQL: the postmaster and every backend it forked."""
    data = pathlib.Path((CARACAL / "postgres.path").read_text().strip()) / "data"
    postmaster = int((data / "postmaster.pid").read_text().split()[0])
    children = []
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == postmaster:
            children.append(int(stat.parent.name))
    return [postmaster] + children


def test_every_service_serves_liveness_and_readiness():
    for name, port in ports().items():
        assert check(port, "") == SERVING, name
        wait_for(port, "ready", SERVING, 30)
    with grpc.insecure_channel(f"127.0.0.1:{ports()['api']}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.RpcError) as error:
            stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
        # Watch starts with the current status.
        stream = stub.Watch(health_pb2.HealthCheckRequest(service="ready"), timeout=5)
        assert next(stream).status == SERVING
        stream.cancel()


def test_ready_is_not_serving_while_postgres_is_frozen():
    audit = ports()["audit"]
    frozen = postgres_processes()
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(audit, "ready", NOT_SERVING, 30)
        assert check(audit, "") == SERVING, "liveness does not depend on PostgreSQL"
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    for name, port in ports().items():
        wait_for(port, "ready", SERVING, 60)
