"""`lsc4rec serve`: host a trained candidate generator over gRPC until SIGTERM/SIGINT.

Logs are JSON lines on stderr, and nothing else is: gRPC's own C-core lines are turned into
records too. The `listening` line carries the bound port (useful with `--port 0`), `serving`
follows once the model is loaded. A start-up failure (a model folder that differs from its
manifest or cannot be read, a taken port, a TLS key that is not the certificate's) is one
record at level "error" and exit status 2. See docs/grpc.md for calling it.
"""

from __future__ import annotations

import argparse
import logging

from cli.common import CLIError, read_token
from cloud.logs import NativeStderrRouter, configure_json_logging
from cloud.server import ServerConfig, serve

logger = logging.getLogger("lsc4rec.server")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve the candidate generator over gRPC (health, reflection, batching)"
    )
    parser.add_argument("--model", required=True, metavar="DIR", help="generator folder")
    parser.add_argument("--host", default="[::]", help="address to bind (default all, IPv4+6)")
    parser.add_argument("--port", type=int, default=50051, help="port (0 = pick a free one)")
    batching = parser.add_argument_group("micro-batching")
    batching.add_argument("--max-batch-size", type=int, default=32, help="1 = no batching")
    batching.add_argument("--max-wait-ms", type=float, default=2.0, help="wait for a batch to fill")
    batching.add_argument("--max-queue-size", type=int, default=256, help="then RESOURCE_EXHAUSTED")
    limits = parser.add_argument_group("request limits")
    limits.add_argument("--default-n", type=int, default=50, help="candidates when n = 0")
    limits.add_argument("--max-n", type=int, default=500, help="most candidates per request")
    limits.add_argument("--max-history", type=int, default=1000, help="longest history accepted")
    limits.add_argument(
        "--max-exclude", type=int, default=10_000, help="most item ids excluded beyond the history"
    )
    security = parser.add_argument_group("security")
    security.add_argument(
        "--auth-token-file",
        metavar="FILE",
        help="file holding a bearer token; calls without it get UNAUTHENTICATED",
    )
    security.add_argument("--tls-cert", metavar="PEM", help="certificate chain (turns TLS on)")
    security.add_argument("--tls-key", metavar="PEM", help="private key of the certificate")
    lifecycle = parser.add_argument_group("lifecycle")
    lifecycle.add_argument("--grace", type=float, default=10.0, help="seconds for in-flight calls")
    lifecycle.add_argument(
        "--drain", type=float, default=0.0, help="seconds NOT_SERVING before calls stop"
    )
    parser.add_argument(
        "--torch-threads", type=int, default=0, help="torch intra-op threads (0 = torch default)"
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (a GPU when torch sees one and the model can use it: the item LM), cpu "
        "or cuda[:N]",
    )
    parser.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error")
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    configure_json_logging(args.log_level)
    router = NativeStderrRouter().start()
    try:
        return _serve(args)
    except (CLIError, ValueError, OSError) as err:  # BindError and a missing file included
        logger.error("cannot start", extra={"error": str(err)})
        return 2
    finally:
        router.stop()


def _serve(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    config = ServerConfig(
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        max_queue_size=args.max_queue_size,
        default_n=args.default_n,
        max_n=args.max_n,
        max_history_items=args.max_history,
        max_exclude_items=args.max_exclude,
        max_batch_requests=min(256, args.max_queue_size),
        auth_token=read_token(args.auth_token_file),
        tls_cert_file=args.tls_cert,
        tls_key_file=args.tls_key,
        grace_s=args.grace,
        drain_s=args.drain,
    )
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    if args.device not in ("auto", "cpu") and not args.device.startswith("cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda[:N], got {args.device!r}")
    return serve(args.model, f"{args.host}:{args.port}", config, device=args.device)
