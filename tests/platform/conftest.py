"""A running platform (what `.ci/run` starts with `caracal up --mode rc`) and HTTP helpers.

Settings (environment): CARACAL_STS_URL, CARACAL_API_URL, CARACAL_GATEWAY_URL (the local
defaults), CARACAL_ADMIN_TOKEN_FILE and METRICS_BEARER_FILE (.caracal/secrets/...)."""

import base64
import json
import os
import urllib.error
import urllib.parse
import urllib.request

import pytest

STS = os.environ.get("CARACAL_STS_URL", "http://127.0.0.1:8080")
API = os.environ.get("CARACAL_API_URL", "http://127.0.0.1:3000")
GATEWAY = os.environ.get("CARACAL_GATEWAY_URL", "http://127.0.0.1:8081")
ADMIN = open(os.environ.get("CARACAL_ADMIN_TOKEN_FILE", ".caracal/secrets/admin_token")).read().split()[0]
BEARER = open(os.environ.get("METRICS_BEARER_FILE", ".caracal/secrets/metrics_bearer")).read().split()[0]


def call(method, url, body=None, headers=None, timeout=30):
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def create_client(client_id, scopes):
    status, _, body = call(
        "POST", f"{STS}/v1/clients", json.dumps({"client_id": client_id, "scopes": scopes}).encode(),
        {"authorization": f"Bearer {ADMIN}", "content-type": "application/json"})
    assert status == 201, body
    return client_id, json.loads(body)["client_secret"]


def delete_client(client_id):
    call("DELETE", f"{STS}/v1/clients/{client_id}", headers={"authorization": f"Bearer {ADMIN}"})


def basic(client):
    return "Basic " + base64.b64encode(f"{client[0]}:{client[1]}".encode()).decode()


def issue(client, scope=None):
    form = {"grant_type": "client_credentials"}
    if scope:
        form["scope"] = scope
    status, headers, body = call("POST", f"{STS}/oauth/token", urllib.parse.urlencode(form).encode(),
                                 {"authorization": basic(client), "content-type": "application/x-www-form-urlencoded"})
    assert status == 200, body
    assert headers.get("Cache-Control") == "no-store"
    return json.loads(body)


def revoke(client, token):
    status, _, body = call("POST", f"{STS}/oauth/revoke", urllib.parse.urlencode({"token": token}).encode(),
                           {"authorization": basic(client), "content-type": "application/x-www-form-urlencoded"})
    assert status == 200, body
