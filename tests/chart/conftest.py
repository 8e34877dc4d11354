"""Shared helpers: render the chart with the real Helm SDK, locate the repository."""

import os
import pathlib
import shutil

import helm_python
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "caracal"
HERE = pathlib.Path(__file__).resolve().parent
# Required values of a default install (the chart refuses to render without them).
URLS = {"database": {"url": "postgres://caracal@postgres:5432/caracal"}, "redis": {"url": "redis://redis:6379/"}}


def render(values=None, name="caracal", namespace="caracal"):
    """Renders the chart; returns {template path: [documents]} (NOTES.txt as text)."""
    chart = helm_python.Chart.load(str(CHART))
    out = chart.render(values=values if values is not None else URLS, name=name, namespace=namespace, is_install=True)
    docs = {}
    for path, text in out.items():
        docs[path] = text if path.endswith("NOTES.txt") else [d for d in yaml.safe_load_all(text) if d]
    return docs


def documents(rendered):
    """Every document of a render, flattened."""
    return [d for path, docs in rendered.items() if not path.endswith("NOTES.txt") for d in docs]


def values_file(name):
    return yaml.safe_load((HERE / name).read_text())


def tool(name):
    """A tool on PATH (or in the tools directory .ci/run prepares), else a clear failure."""
    path = shutil.which(name, path=os.environ.get("PATH", "") + os.pathsep + os.environ.get("CARACAL_CHART_TOOLS", ""))
    if path is None:
        pytest.fail(f"{name} is not installed (apt-get install -y prometheus provides promtool and prometheus)")
    return path
