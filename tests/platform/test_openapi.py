"""Every `/v1` API against its own OpenAPI document, by schemathesis (PyPI): every check, every
phase (examples, coverage, fuzzing, stateful), a fixed seed and bounded examples. A failure
prints schemathesis's report, with a curl line per failing case."""

import os
import pathlib
import subprocess
import sys

import pytest

from conftest import ADMIN, API, GATEWAY, STS

AUDIT = os.environ.get("CARACAL_AUDIT_URL", "http://127.0.0.1:9090")
HERE = pathlib.Path(__file__).resolve().parent
CONFIG = HERE / "schemathesis.toml"


@pytest.mark.parametrize("name,base", [("api", API), ("audit", AUDIT), ("sts", STS), ("gateway", GATEWAY)])
def test_the_api_matches_its_openapi_document(name, base):
    schemathesis = pathlib.Path(sys.executable).parent / "schemathesis"
    result = subprocess.run(
        [str(schemathesis), "--no-color", "--config-file", str(CONFIG), "run", f"{base}/openapi.json",
         "--seed", "1", "-H", f"Authorization: Bearer {ADMIN}"],
        capture_output=True, text=True, timeout=600,
        # What no schema can say (a PEM that parses, a file that exists) is left to other tests.
        env={**os.environ, "SCHEMATHESIS_HOOKS": "schemathesis_hooks",
             "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))})
    assert result.returncode == 0, f"{name}:\n{result.stdout[-20000:]}\n{result.stderr[-2000:]}"
