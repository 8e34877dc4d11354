"""Every `/v1` API against its own OpenAPI document, by schemathesis (PyPI): every check, every
phase (examples, coverage, fuzzing, stateful), a fixed seed, bounded examples and two workers
(`--max-examples 80 --seed 1 --workers 2`, with every check enabled by schemathesis.toml: the
same as `--checks all`, except that a check named on the command line would override the
per-operation settings below). A failure prints schemathesis's report, with a curl line per
failing case. What is configured apart from that, each by name with its reason, is in
schemathesis.toml (`use_after_free` for a target's history, which outlives the target by
design; `positive_data_acceptance` at the OAuth token endpoint, which RFC 6749 answers with
400) and schemathesis_hooks.py (bodies no schema can judge)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from conftest import ADMIN, API, GATEWAY, STS, call

AUDIT = os.environ.get("CARACAL_AUDIT_URL", "http://127.0.0.1:9090")
HERE = pathlib.Path(__file__).resolve().parent
CONFIG = HERE / "schemathesis.toml"


@pytest.mark.parametrize("name,base", [("api", API), ("audit", AUDIT), ("sts", STS), ("gateway", GATEWAY)])
def test_the_api_matches_its_openapi_document(name, base):
    schemathesis = pathlib.Path(sys.executable).parent / "schemathesis"
    result = subprocess.run(
        [str(schemathesis), "--no-color", "--config-file", str(CONFIG), "run", f"{base}/openapi.json",
         "--max-examples", "80", "--seed", "1", "--workers", "2",
         "-H", f"Authorization: Bearer {ADMIN}"],
        capture_output=True, text=True, timeout=600,
        # What no schema can say (a PEM that parses, a file that exists) is left to other tests.
        env={**os.environ, "SCHEMATHESIS_HOOKS": "schemathesis_hooks",
             "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))})
    assert result.returncode == 0, f"{name}:\n{result.stdout[-20000:]}\n{result.stderr[-2000:]}"


def test_the_sts_document_lists_the_oauth_refusals():
    """RFC 6749 §5.2 answers `invalid_scope` (a well-formed scope the client was not granted)
    with 400: the document lists it, as schemathesis.toml's narrowed check relies on."""
    status, _, body = call("GET", f"{STS}/openapi.json")
    assert status == 200, body
    responses = json.loads(body)["paths"]["/oauth/token"]["post"]["responses"]
    assert "invalid_scope" in responses["400"]["description"], responses
