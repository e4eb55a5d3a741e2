"""``glam serve``: an OpenAI-compatible completions server over a checkpoint (glam.serve).

    glam serve --checkpoint runs/demo                       # http://127.0.0.1:8000/v1/completions
    glam serve --checkpoint runs/demo --port 9000 --max-batch 16
    GLAM_API_KEY=secret glam serve --checkpoint runs/demo --host 0.0.0.0

Needs the optional extra: ``pip install 'glam[serve]'``. SIGTERM or Ctrl-C drains (new requests get
503, admitted ones finish within ``--drain-timeout``), then exits 0; a second signal exits at once.
"""

from __future__ import annotations

import argparse
import os

from glam.cli.arguments import finite_float, mesh_arg, non_negative_int, positive_int

BATCHING = ("continuous", "static")


def port_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"got {text!r}; give a port number from 1 to 65535") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"got {value}; give a port number from 1 to 65535")
    return value


def seconds(text: str) -> float:
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"got {text!r}; give a number of seconds >= 0")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``serve`` subcommand."""
    p = subparsers.add_parser(
        "serve", help="serve a checkpoint over HTTP (OpenAI-compatible /v1/completions and /v1/chat/completions)"
    )
    p.add_argument("--checkpoint", required=True, help="run directory of the model")
    p.add_argument("--step", type=non_negative_int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=port_number, default=8000, help="port, 1-65535 (default 8000)")
    p.add_argument("--max-batch", type=positive_int, default=8, help="rows decoded together (1 = no batching)")
    p.add_argument("--max-queue", type=positive_int, default=64, help="requests admitted at once; more get 429")
    p.add_argument("--max-body-kb", type=positive_int, default=4096, help="largest request body (default 4096 KiB)")
    p.add_argument("--model-name", default=None, help="the model id clients send (default: the run directory's name)")
    p.add_argument(
        "--mesh",
        type=mesh_arg,
        default=None,
        help="DATAxMODEL: run on a device mesh, experts over data, hidden over model (CPU: simulated devices)",
    )
    p.add_argument(
        "--batching",
        choices=BATCHING,
        default=None,
        help="continuous (rows join the running batch; the default) or static",
    )
    p.add_argument(
        "--prefill-chunk", type=positive_int, default=None, help="most prompt tokens per row in one prefill pass"
    )
    p.add_argument(
        "--warmup",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="compile the serving shapes at start-up; /health says ready after it (default: on)",
    )
    p.add_argument(
        "--api-key",
        default=os.environ.get("GLAM_API_KEY") or None,
        help="require Authorization: Bearer KEY on every route but /health (default: $GLAM_API_KEY)",
    )
    p.add_argument("--chat-template", default=None, help="a Jinja2 chat template file for /v1/chat/completions")
    p.add_argument(
        "--drain-timeout", type=seconds, default=30.0, help="seconds admitted requests get to finish after SIGTERM"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from glam.serve import serve

    serve(
        args.checkpoint,
        step=args.step,
        host=args.host,
        port=args.port,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        max_body_bytes=args.max_body_kb * 1024,
        model_name=args.model_name,
        warmup=args.warmup,
        api_key=args.api_key,
        chat_template=args.chat_template,
        batching=args.batching,
        prefill_chunk=args.prefill_chunk,
        drain_timeout_s=args.drain_timeout,
        mesh=args.mesh,
    )
