"""The STS's tokens checked by an independent JOSE implementation (PyJWT), against a running
platform (see conftest.py)."""

import base64
import json
import os
import time

import jwt
import pytest

from conftest import API, STS, call, create_client, delete_client, issue


@pytest.fixture(scope="module")
def client():
    client = create_client(f"pyjwt-{os.getpid()}-{int(time.time())}", ["targets:read", "events:read"])
    yield client
    delete_client(client[0])


def token(client_id, secret, scope=None):
    return issue((client_id, secret), scope)


def metadata():
    status, _, body = call("GET", f"{STS}/.well-known/oauth-authorization-server")
    assert status == 200
    return json.loads(body)


def test_metadata_names_the_endpoints():
    meta = metadata()
    assert meta["grant_types_supported"] == ["client_credentials"]
    assert set(meta["token_endpoint_auth_methods_supported"]) == {"client_secret_basic", "client_secret_post"}
    for key in ("token_endpoint", "jwks_uri", "revocation_endpoint", "introspection_endpoint"):
        assert meta[key].startswith(meta["issuer"])


def test_pyjwt_verifies_an_issued_token_with_the_published_jwks(client):
    issued = token(*client, scope="events:read")
    access = issued["access_token"]
    header = jwt.get_unverified_header(access)
    assert header["typ"] == "at+jwt" and header["alg"] == "EdDSA" and header["kid"]
    keys = jwt.PyJWKClient(f"{STS}/.well-known/jwks.json").get_signing_key_from_jwt(access)
    claims = jwt.decode(
        access,
        keys.key,
        algorithms=["EdDSA"],
        audience="caracal",
        issuer=metadata()["issuer"],
        options={"require": ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]},
    )
    assert claims["client_id"] == client[0] and claims["sub"] == client[0]
    assert claims["scope"] == "events:read" == issued["scope"]
    assert claims["exp"] - claims["iat"] == issued["expires_in"]


def test_pyjwt_refuses_a_tampered_token(client):
    access = token(*client)["access_token"]
    head, payload, signature = access.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["scope"] = "clients:write"
    forged = ".".join([head, base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode(), signature])
    keys = jwt.PyJWKClient(f"{STS}/.well-known/jwks.json").get_signing_key_from_jwt(access)
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(forged, keys.key, algorithms=["EdDSA"], audience="caracal")
    # And the platform refuses it too.
    status, _, _ = call("GET", f"{API}/v1/targets", headers={"authorization": f"Bearer {forged}"})
    assert status == 401


def test_a_token_pyjwt_made_with_a_key_of_its_own_is_refused(client):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    real = jwt.get_unverified_header(token(*client)["access_token"])
    claims = {"iss": metadata()["issuer"], "sub": client[0], "client_id": client[0], "aud": "caracal",
              "exp": int(time.time()) + 600, "iat": int(time.time()), "nbf": int(time.time()),
              "jti": "forged", "scope": "targets:read"}
    forged = jwt.encode(claims, Ed25519PrivateKey.generate(), algorithm="EdDSA",
                        headers={"typ": "at+jwt", "kid": real["kid"]})
    status, _, body = call("GET", f"{API}/v1/targets", headers={"authorization": f"Bearer {forged}"})
    assert status == 401, body
    assert json.loads(body)["error"]["code"] == "invalid_token"
