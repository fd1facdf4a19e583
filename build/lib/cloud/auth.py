"""Optional bearer-token auth for the gRPC server, as a server interceptor.

A call must carry the metadata `authorization: Bearer <token>`; otherwise it is answered
UNAUTHENTICATED before it reaches the servicer. Health checks stay open so that load
balancers and orchestrators can probe without the secret. Send tokens over TLS only: on a
plain channel they travel in clear text.
"""

from __future__ import annotations

import hmac

import grpc

# Method-name prefixes that need no token.
OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Rejects calls whose `authorization` metadata is not `Bearer <token>`.

    Args:
        token: the shared secret.
        open_prefixes: method-name prefixes exempt from the check.
    Raises:
        ValueError: an empty token.
    """

    def __init__(self, token: str, open_prefixes: tuple[str, ...] = OPEN_METHOD_PREFIXES) -> None:
        if not token:
            raise ValueError("the auth token must not be empty")
        self._expected = token.encode()
        self._open_prefixes = open_prefixes

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(self._open_prefixes):
            return handler  # None: unknown method, let gRPC answer UNIMPLEMENTED
        if self._authorized(handler_call_details.invocation_metadata or ()):
            return handler
        return _deny(handler)

    def _authorized(self, metadata) -> bool:
        for key, value in metadata:
            if key == "authorization":
                given = value.encode() if isinstance(value, str) else value
                # The scheme name is case-insensitive (RFC 9110 §11.1): "bearer" is "Bearer".
                scheme, _, credentials = given.strip().partition(b" ")
                if scheme.lower() != b"bearer":
                    return False
                # Constant-time comparison: response timing must not reveal the token.
                return hmac.compare_digest(credentials.strip(), self._expected)
        return False


def _reject(_request, context):
    context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")


def _deny(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same streaming shape as `handler` that answers UNAUTHENTICATED."""
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(_reject)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(_reject)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(_reject)
    return grpc.unary_unary_rpc_method_handler(_reject)
