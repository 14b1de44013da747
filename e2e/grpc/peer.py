"""A real gRPC server and client (Python grpcio) for the proxy's e2e tests.

No .proto: the service `trellis.test.Echo` uses raw bytes as messages.

    python3 peer.py server PORT
        Unary(bytes) -> the same bytes, trailing metadata x-trailer: unary
        Stream(b"N") -> N messages b"0".."N-1", trailing metadata x-trailer: stream
        Flaky(bytes) -> UNAVAILABLE the first time a given x-request-id is
                        seen, the bytes after that
        Prints "ready" when it listens.

    python3 peer.py client TARGET AUTHORITY
        Calls each method through TARGET (the proxy) with :authority
        AUTHORITY and prints one JSON object with what came back.
"""

import json
import sys
from concurrent import futures

import grpc

SERVICE = "trellis.test.Echo"


def identity(b):
    return b


def serve(port):
    seen = set()

    def unary(request, context):
        context.set_trailing_metadata((("x-trailer", "unary"),))
        return request

    def stream(request, context):
        context.set_trailing_metadata((("x-trailer", "stream"),))
        for i in range(int(request.decode())):
            yield str(i).encode()

    def flaky(request, context):
        rid = dict(context.invocation_metadata()).get("x-request-id", "")
        if rid not in seen:
            seen.add(rid)
            context.abort(grpc.StatusCode.UNAVAILABLE, "try again")
        return request

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary, identity, identity),
        "Stream": grpc.unary_stream_rpc_method_handler(stream, identity, identity),
        "Flaky": grpc.unary_unary_rpc_method_handler(flaky, identity, identity),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def call(fn):
    try:
        value, call = fn()
        return {"code": "OK", "value": value, "trailers": dict(call.trailing_metadata() or ())}
    except grpc.RpcError as e:
        return {"code": e.code().name, "details": e.details()}


def client(target, authority):
    channel = grpc.insecure_channel(
        target, options=(("grpc.default_authority", authority), ("grpc.enable_http_proxy", 0))
    )
    unary = channel.unary_unary(f"/{SERVICE}/Unary", identity, identity)
    stream = channel.unary_stream(f"/{SERVICE}/Stream", identity, identity)
    flaky = channel.unary_unary(f"/{SERVICE}/Flaky", identity, identity)

    def unary_call():
        value, c = unary.with_call(b"hello", timeout=5)
        return value.decode(), c

    def stream_call():
        it = stream(b"5", timeout=5)
        values = [m.decode() for m in it]
        return values, it

    def flaky_call():
        value, c = flaky.with_call(b"again", timeout=5)
        return value.decode(), c

    out = {"unary": call(unary_call), "stream": call(stream_call), "flaky": call(flaky_call)}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        serve(int(sys.argv[2]))
    else:
        client(sys.argv[2], sys.argv[3])
