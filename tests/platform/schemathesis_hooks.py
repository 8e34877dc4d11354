"""schemathesis hooks for tests/platform/test_openapi.py (loaded through SCHEMATHESIS_HOOKS).

A target's `tls.ca_pem` must parse as X.509 and its client certificate and key files must exist
where the API runs: no JSON Schema can say either, so a generated body naming them would be
refused (422) however schema-valid. Such bodies are left out of generation; the refusals are
tested with real files and certificates from openssl (crates/api/tests, crates/store)."""

import schemathesis

UNKNOWABLE = ("ca_pem", "client_cert_file", "client_key_file")


@schemathesis.hook
def filter_case(ctx, case):
    # `filter_case` (not `filter_body`): it applies to every phase, the coverage phase included.
    body = getattr(case, "body", None)
    if not isinstance(body, dict):
        return True
    tls = body.get("tls")
    return not (isinstance(tls, dict) and any(tls.get(key) is not None for key in UNKNOWABLE))
