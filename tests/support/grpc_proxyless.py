"""Both ends of tests/envoy/grpc_proxyless.rs, on Python's grpcio (no codegen).

    grpc_proxyless.py server NAME
        A gRPC server on 127.0.0.1 (a free port) whose one method,
        /teal.Fleet/Name, answers every call with NAME (raw bytes). Prints
        `port PORT` once it listens.

    grpc_proxyless.py client TARGET
        A proxyless gRPC client: dials TARGET (`xds:///web`), so gRPC's own
        xDS client fetches the listener, routes, clusters and endpoints from
        the server named in the bootstrap file that the GRPC_XDS_BOOTSTRAP
        environment variable points to. Calls /teal.Fleet/Name every 50 ms
        and prints one line per call: `ok NAME` or `error STATUS_CODE`.

Both exit on their own after a few minutes, in case the test that started
them could not stop them.
"""

import sys
import time
from concurrent import futures

import grpc

METHOD = "/teal.Fleet/Name"
LIFETIME_S = 300


def serve(name):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    # Without (de)serializers, handlers take and return raw bytes.
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: name.encode())
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("teal.Fleet", {"Name": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"port {port}", flush=True)
    server.wait_for_termination(timeout=LIFETIME_S)


def call(target):
    channel = grpc.insecure_channel(target)
    name = channel.unary_unary(METHOD)
    deadline = time.monotonic() + LIFETIME_S
    while time.monotonic() < deadline:
        try:
            # wait_for_ready: while the xDS resources are still on their way,
            # wait instead of failing the call.
            answer = name(b"", timeout=2, wait_for_ready=True)
            print(f"ok {answer.decode()}", flush=True)
        except grpc.RpcError as e:
            print(f"error {e.code().name} {e.details()}", flush=True)
        time.sleep(0.05)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "server":
        serve(sys.argv[2])
    elif len(sys.argv) == 3 and sys.argv[1] == "client":
        call(sys.argv[2])
    else:
        sys.exit(f"usage: {sys.argv[0]} server NAME | client TARGET")
