"""``glam serve``: an OpenAI-compatible completions server over a checkpoint (glam.serve).

    glam serve --checkpoint runs/demo                       # http://127.0.0.1:8000/v1/completions
    glam serve --checkpoint runs/demo --port 9000 --max-batch 16

Needs the optional extra: ``pip install 'glam[serve]'``.
"""

from __future__ import annotations

import argparse

from glam.cli.arguments import non_negative_int, positive_int


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``serve`` subcommand."""
    p = subparsers.add_parser("serve", help="serve a checkpoint over HTTP (OpenAI-compatible /v1/completions)")
    p.add_argument("--checkpoint", required=True, help="run directory of the model")
    p.add_argument("--step", type=non_negative_int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=non_negative_int, default=8000, help="port (default 8000)")
    p.add_argument("--max-batch", type=positive_int, default=8, help="rows decoded together (1 = no batching)")
    p.add_argument("--max-queue", type=positive_int, default=64, help="requests admitted at once; more get 429")
    p.add_argument("--max-body-kb", type=positive_int, default=4096, help="largest request body (default 4096 KiB)")
    p.add_argument("--model-name", default=None, help="the model id clients send (default: the run directory's name)")
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
    )
