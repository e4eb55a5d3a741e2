"""``glam export RUN OUT``: a trained model in the Hugging Face format (docs/export.md).

    glam export runs/demo hf/demo                       # float32, the newest checkpoint
    glam export runs/demo hf/demo-bf16 --dtype bfloat16 --step 200
    glam export runs/demo hf/tok --tokenizer-only       # just tokenizer.json and its configs

``OUT`` then loads with ``AutoModelForCausalLM.from_pretrained(OUT, trust_remote_code=True)`` and
``AutoTokenizer.from_pretrained(OUT)``, with no glam installed. A non-empty ``OUT`` is refused unless
``--force`` (which replaces the export's files in it and leaves other files alone).
"""

from __future__ import annotations

import argparse

from glam.cli.arguments import non_negative_int


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``export`` subcommand."""
    p = subparsers.add_parser("export", help="export a run's checkpoint to the Hugging Face format (transformers)")
    p.add_argument("run_dir", metavar="RUN", help="the run directory (made by `glam train`)")
    p.add_argument("out_dir", metavar="OUT", help="the folder to write (new or empty)")
    p.add_argument("--step", type=non_negative_int, default=None, help="checkpoint step (default: the newest)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="weights (default float32)")
    p.add_argument("--force", action="store_true", help="write into a non-empty OUT, replacing the export's files")
    p.add_argument("--tokenizer-only", action="store_true", help="write only the tokenizer files")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from glam.export.writer import export_run

    names = export_run(
        args.run_dir,
        args.out_dir,
        step=args.step,
        dtype=args.dtype,
        force=args.force,
        tokenizer_only=args.tokenizer_only,
    )
    print(f"wrote {len(names)} files to {args.out_dir}: {', '.join(names)}")
    return 0
