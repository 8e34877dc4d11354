"""An OTLP/HTTP trace receiver for the platform suites: every `POST /v1/traces` is decoded with
the official protobuf definitions (PyPI opentelemetry-proto) and each span appended, as one
JSON line, to a file. `.ci/run` starts it before `caracal up --mode rc` and points the platform
at it with OTEL_EXPORTER_OTLP_ENDPOINT; test_traces.py reads the file.

Usage: python otlp_collector.py PORT FILE"""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
STATUS = {0: "UNSET", 1: "OK", 2: "ERROR"}
LOCK = threading.Lock()


def value(any_value):
    which = any_value.WhichOneof("value")
    return getattr(any_value, which) if which else None


def spans(request):
    for resource_spans in request.resource_spans:
        resource = {a.key: value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                yield {
                    "service": resource.get("service.name"),
                    "resource": resource,
                    "trace_id": span.trace_id.hex(),
                    "span_id": span.span_id.hex(),
                    "parent_span_id": span.parent_span_id.hex(),
                    "name": span.name,
                    "kind": KINDS.get(span.kind, "UNSPECIFIED"),
                    "attributes": {a.key: value(a.value) for a in span.attributes},
                    "links": [[link.trace_id.hex(), link.span_id.hex()] for link in span.links],
                    "status": STATUS.get(span.status.code, "UNSET"),
                }


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        if self.path != "/v1/traces":
            self.send_error(404)
            return
        request = ExportTraceServiceRequest()
        request.ParseFromString(self.rfile.read(int(self.headers.get("content-length", "0"))))
        lines = "".join(json.dumps(span) + "\n" for span in spans(request))
        with LOCK, open(sys.argv[2], "a", encoding="utf-8") as out:
            out.write(lines)
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
