"""A CSDS client for tests/envoy/csds.rs, on Envoy's own generated Python
stubs (PyPI package xds-protos) and grpcio: what mesh tooling does to ask a
control plane about its proxies.

    csds_client.py ADDR [--id-exact ID] [--id-prefix P] [--group G]...
                        [--no-contents] [--stream N]

Calls envoy.service.status.v3.ClientStatusDiscoveryService on ADDR
(host:port, plaintext): FetchClientStatus once, or with --stream N sends N
requests on one StreamClientStatus stream. Each --id-exact, --id-prefix and
--group adds one NodeMatcher (matching node.id exactly, node.id by prefix,
or the proxy group, as teal's node_metadatas path "node.cluster").

Prints one JSON document on stdout: the ClientStatusResponse (a list of
them with --stream), with proto field names and the resources unpacked.
A failed call prints {"error": CODE_NAME, "message": ...} and exits 2.
"""

import argparse
import importlib
import json
import pkgutil
import sys

import grpc
from google.protobuf import json_format

from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc
from envoy.type.matcher.v3 import node_pb2, string_pb2, struct_pb2

TIMEOUT_S = 20


def load_envoy_types():
    """Imports every Envoy message module xds-protos ships (about a
    second), so the JSON printer can unpack any Any a resource holds: a
    cluster's typed_extension_protocol_options, a listener's filters."""
    import envoy

    for module in pkgutil.walk_packages(envoy.__path__, "envoy."):
        if module.name.endswith("_pb2"):
            try:
                importlib.import_module(module.name)
            except ImportError:
                pass


def request(args):
    matchers = []
    for node_id in args.id_exact:
        matchers.append(node_pb2.NodeMatcher(node_id=string_pb2.StringMatcher(exact=node_id)))
    for prefix in args.id_prefix:
        matchers.append(node_pb2.NodeMatcher(node_id=string_pb2.StringMatcher(prefix=prefix)))
    for group in args.group:
        by_group = struct_pb2.StructMatcher(
            path=[struct_pb2.StructMatcher.PathSegment(key="node.cluster")]
        )
        by_group.value.string_match.exact = group
        matchers.append(node_pb2.NodeMatcher(node_metadatas=[by_group]))
    return csds_pb2.ClientStatusRequest(
        node_matchers=matchers, exclude_resource_contents=args.no_contents
    )


def as_json(message):
    return json.loads(json_format.MessageToJson(message, preserving_proto_field_name=True))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("addr")
    p.add_argument("--id-exact", action="append", default=[])
    p.add_argument("--id-prefix", action="append", default=[])
    p.add_argument("--group", action="append", default=[])
    p.add_argument("--no-contents", action="store_true")
    p.add_argument("--stream", type=int, default=0)
    args = p.parse_args()
    req = request(args)
    load_envoy_types()
    with grpc.insecure_channel(args.addr) as channel:
        stub = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(channel)
        try:
            if args.stream:
                answers = stub.StreamClientStatus(iter([req] * args.stream), timeout=TIMEOUT_S)
                out = [as_json(a) for a in answers]
            else:
                out = as_json(stub.FetchClientStatus(req, timeout=TIMEOUT_S))
        except grpc.RpcError as e:
            print(json.dumps({"error": e.code().name, "message": e.details()}))
            sys.exit(2)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
