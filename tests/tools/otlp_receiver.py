"""A small OpenTelemetry (OTLP/gRPC) trace receiver for the tracing tests; test-only.

It answers ``opentelemetry.proto.collector.trace.v1.TraceService/Export`` and appends one
JSON line per span it receives to ``--report``: trace and span ids (hex), the parent's
span id, the span's name and kind, its attributes, and the ``service.name`` of the
resource that sent it. It prints "serving" once it listens.

Run: python3 otlp_receiver.py --report FILE [--port 4317] [--bind 127.0.0.1] [--lifetime-s 0]

``--bind`` is the address it listens on (loopback unless told otherwise); ``--lifetime-s``
makes it stop on its own after that many seconds (0: never), so a receiver started for
a test run cannot outlive it. Needs grpcio and opentelemetry-proto.
"""

from __future__ import annotations

import argparse
import json
import threading
from concurrent import futures
from typing import Any, Dict, List

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2


def _value(v: common_pb2.AnyValue) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind in ("string_value", "bool_value", "int_value", "double_value") else str(v)


def _attributes(items: Any) -> Dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in items}


def spans_of(request: trace_service_pb2.ExportTraceServiceRequest) -> List[Dict[str, Any]]:
    """The request's spans as plain dicts, each with the service that sent it."""
    out = []
    for resource_spans in request.resource_spans:
        service = _attributes(resource_spans.resource.attributes).get("service.name", "")
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                out.append(
                    {
                        "service_name": service,
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex(),
                        "name": span.name,
                        "kind": span.kind,
                        "attributes": _attributes(span.attributes),
                    }
                )
    return out


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, report: str) -> None:
        self.report = report
        self.lock = threading.Lock()

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        lines = [json.dumps(span, sort_keys=True) + "\n" for span in spans_of(request)]
        with self.lock, open(self.report, "a", encoding="utf-8") as fh:
            fh.writelines(lines)
        return trace_service_pb2.ExportTraceServiceResponse()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--report", required=True, help="file to append one JSON line per span to")
    p.add_argument("--port", type=int, default=4317)
    p.add_argument("--bind", default="127.0.0.1", help="address to listen on (default: loopback)")
    p.add_argument("--lifetime-s", type=float, default=0, help="stop after this many seconds (0: never)")
    args = p.parse_args()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Receiver(args.report), server)
    host = f"[{args.bind}]" if ":" in args.bind else args.bind
    server.add_insecure_port(f"{host}:{args.port}")
    server.start()
    print("serving", flush=True)
    if server.wait_for_termination(timeout=args.lifetime_s or None):
        print(f"lifetime of {args.lifetime_s:g}s is over: stopping", flush=True)
        server.stop(grace=1).wait()


if __name__ == "__main__":
    main()
