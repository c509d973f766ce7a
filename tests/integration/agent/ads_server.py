"""A small ADS (aggregated xDS, state of the world) server for the agent's xDS tests.

Serves one cluster and one TCP listener over gRPC with mutual TLS. It holds its
answers until ``--release-file`` exists, so a test can watch the agent stay
not-ready until the first CDS and LDS arrive. Everything it learns (the node
Envoy sent, the authorization header, ACKs and NACKs) goes to ``--report``.

Run: python3 ads_server.py --port P --cert C --key K --ca CA --release-file F --report R
     --listen-port 18080 --app-port 8080 [--bind 127.0.0.1] [--lifetime-s 0]

``--bind`` is the address it listens on (loopback unless told otherwise);
``--lifetime-s`` makes it stop on its own after that many seconds (0: never),
so a server started for a test run cannot outlive it.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from concurrent import futures
from typing import Any, Dict, Iterator

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2, json_format

CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
VERSION = "v1"


def _addr(ip: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(address=ip, port_value=port))


def resources(listen_port: int, app_port: int) -> Dict[str, Any]:
    cluster = cluster_pb2.Cluster(
        name="app",
        type=cluster_pb2.Cluster.STATIC,
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name="app",
            endpoints=[
                endpoint_components_pb2.LocalityLbEndpoints(
                    lb_endpoints=[
                        endpoint_components_pb2.LbEndpoint(
                            endpoint=endpoint_components_pb2.Endpoint(address=_addr("127.0.0.1", app_port))
                        )
                    ]
                )
            ],
        ),
    )
    cluster.connect_timeout.FromSeconds(1)
    proxy = any_pb2.Any()
    proxy.Pack(tcp_proxy_pb2.TcpProxy(stat_prefix="app", cluster="app"))
    listener = listener_pb2.Listener(
        name="app",
        stat_prefix="inbound",
        address=_addr("0.0.0.0", listen_port),
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[listener_components_pb2.Filter(name="envoy.filters.network.tcp_proxy", typed_config=proxy)]
            )
        ],
    )
    return {CLUSTER_TYPE: [cluster], LISTENER_TYPE: [listener]}


class Ads(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.resources = resources(args.listen_port, args.app_port)
        self.report: Dict[str, Any] = {"requests": [], "acks": [], "nacks": []}
        self.lock = threading.Lock()
        self.nonce = 0

    def _save(self) -> None:
        tmp = self.args.report + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(self.report, fh)
        os.replace(tmp, self.args.report)

    def StreamAggregatedResources(
        self, request_iterator: Iterator[discovery_pb2.DiscoveryRequest], context: grpc.ServicerContext
    ) -> Iterator[discovery_pb2.DiscoveryResponse]:
        with self.lock:
            self.report["authorization"] = dict(context.invocation_metadata()).get("authorization", "")
        for req in request_iterator:
            with self.lock:
                if req.HasField("node"):
                    self.report["node"] = json_format.MessageToDict(req.node)
                self.report["requests"].append(req.type_url)
                if req.response_nonce and req.HasField("error_detail"):
                    self.report["nacks"].append({"type": req.type_url, "error": req.error_detail.message})
                elif req.response_nonce and req.version_info == VERSION:
                    self.report["acks"].append(req.type_url)
                self._save()
            if req.version_info == VERSION or req.type_url not in self.resources:
                continue  # an ACK, or a type we do not serve
            while not os.path.exists(self.args.release_file):
                if not context.is_active():
                    return
                time.sleep(0.05)
            with self.lock:
                self.nonce += 1
                nonce = str(self.nonce)
            packed = []
            for res in self.resources[req.type_url]:
                a = any_pb2.Any()
                a.Pack(res)
                packed.append(a)
            yield discovery_pb2.DiscoveryResponse(
                version_info=VERSION, type_url=req.type_url, resources=packed, nonce=nonce
            )


def main() -> None:
    p = argparse.ArgumentParser()
    for name in ("--cert", "--key", "--ca", "--release-file", "--report"):
        p.add_argument(name, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--listen-port", type=int, default=18080)
    p.add_argument("--app-port", type=int, default=8080)
    p.add_argument("--bind", default="127.0.0.1", help="address to listen on (default: loopback)")
    p.add_argument("--lifetime-s", type=float, default=0, help="stop after this many seconds (0: never)")
    args = p.parse_args()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(Ads(args), server)
    with open(args.key, "rb") as k, open(args.cert, "rb") as c, open(args.ca, "rb") as ca:
        creds = grpc.ssl_server_credentials(
            [(k.read(), c.read())], root_certificates=ca.read(), require_client_auth=True
        )
    host = f"[{args.bind}]" if ":" in args.bind else args.bind
    server.add_secure_port(f"{host}:{args.port}", creds)
    server.start()
    print("serving", flush=True)
    timed_out = server.wait_for_termination(timeout=args.lifetime_s or None)
    if timed_out:
        print(f"lifetime of {args.lifetime_s:g}s is over: stopping", flush=True)
        server.stop(grace=1).wait()


if __name__ == "__main__":
    main()
