"""schemathesis hooks for tests/platform/test_openapi.py (loaded through SCHEMATHESIS_HOOKS).

A target's non-blank `tls.ca_pem` must parse as X.509 (a blank one means none and is generated
as any other value), and its client certificate and key files must exist in the operator's
client directory (and client certificates be enabled at all, `coordinator.tls.client_dir`): no
JSON Schema can say either, so a generated body naming them would be refused (422) however
schema-valid. Likewise an instance whose address literal the
deployment's outbound address policy denies (by default link-local, 0.0.0.0/8, multicast,
broadcast) is refused 422: the policy is configuration, not part of the document. Such bodies
are left out of generation; the refusals are tested with real files, certificates from openssl
and addresses (crates/api/tests, crates/store, caracal-core's outbound tests)."""

import ast
import ipaddress
import threading
import urllib.parse

import schemathesis

# CPython 3.11's parser is not safe to run in two threads at once: with `--workers 2`,
# Hypothesis describing a strategy's lambdas (`ast.parse` of their source) in both workers
# can fail with "SystemError: AST constructor recursion depth mismatch", a schemathesis
# "Runtime Error" that says nothing about the API. One parse at a time avoids it; nothing
# else here parses Python.
_parse = ast.parse
_parsing = threading.Lock()


def _one_parse_at_a_time(*args, **kwargs):
    with _parsing:
        return _parse(*args, **kwargs)


ast.parse = _one_parse_at_a_time

UNKNOWABLE = ("ca_pem", "client_cert_file", "client_key_file")
# caracal-core's default `outbound.deny` (crates/core/src/outbound.rs).
DENIED = [ipaddress.ip_network(n) for n in
          ("169.254.0.0/16", "fe80::/10", "0.0.0.0/8", "::/128", "224.0.0.0/4", "ff00::/8", "255.255.255.255/32")]


def denied(url):
    try:
        address = ipaddress.ip_address(urllib.parse.urlsplit(url).hostname or "")
    except ValueError:
        return False  # a name: judged when it resolves, never at the door
    return any(address in network for network in DENIED)


def admissible(body):
    """Whether a target document is free of what no schema can judge (see above)."""
    if not isinstance(body, dict):
        return True
    tls = body.get("tls")
    if isinstance(tls, dict) and any(isinstance(tls.get(key), str) and tls[key].strip() for key in UNKNOWABLE):
        return False
    instances = body.get("instances")
    return not (isinstance(instances, list) and any(isinstance(u, str) and denied(u) for u in instances))


BATCH_LISTS = ("create", "replace", "delete")


@schemathesis.hook
def filter_case(ctx, case):
    # `filter_case` (not `filter_body`): it applies to every phase, the coverage phase included.
    body = getattr(case, "body", None)
    if not (isinstance(body, dict) and any(k in body for k in BATCH_LISTS)):
        return admissible(body)
    # POST /v1/targets/_batch: each document as above; and what a schema cannot say of the
    # whole batch — a target named in two of its changes, or more than 1,000 changes — is
    # refused 422 (crates/api/tests checks both).
    lists = [body.get(k) if isinstance(body.get(k), list) else [] for k in BATCH_LISTS]
    documents = [d for d in lists[0] + lists[1] if isinstance(d, dict)]
    names = [str(d.get("name")) for d in documents] + [str(n) for n in lists[2]]
    if len(names) != len(set(names)) or sum(map(len, lists)) > 1000:
        return False
    return all(admissible(d) for d in documents)
