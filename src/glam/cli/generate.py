"""``glam generate``: complete prompts with a trained checkpoint, streaming text to the terminal.

    glam generate --checkpoint runs/demo --prompt "Once upon a time" --max-tokens 64
    glam generate --checkpoint runs/demo --prompt "Q: Who wrote Hamlet?\\nA:" --beam 4 --stop "\\n"
    glam generate --checkpoint runs/demo --file prompts.txt --temperature 0.8 --top-p 0.95

``--file``: one prompt per line (``\\n`` in a line is a newline), or a ``.jsonl`` file of strings or
``{"prompt": ...}`` objects. One prompt streams token by token; with several, each completion is
printed once its batch finishes. Greedy decoding unless a temperature, top-k/top-p or a beam is given.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from glam.cli.arguments import finite_float, mesh_arg, non_negative_int, positive_int
from glam.errors import GLaMError
from glam.files import read_text


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``generate`` subcommand."""
    p = subparsers.add_parser("generate", help="generate text from a checkpoint (streams to the terminal)")
    p.add_argument("--checkpoint", required=True, help="run directory of the model")
    p.add_argument("--step", type=non_negative_int, default=None, help="checkpoint step (default: the latest)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="the prompt text (\\n is a newline)")
    src.add_argument("--file", help="prompts: one per line, or a .jsonl file")
    p.add_argument("--max-tokens", type=positive_int, default=64, help="tokens to generate per prompt (default 64)")
    p.add_argument("--temperature", type=finite_float, default=None, help="sampling temperature (default: greedy)")
    p.add_argument("--top-k", type=non_negative_int, default=0, help="sample from the k most likely tokens")
    p.add_argument("--top-p", type=finite_float, default=1.0, help="sample from the top-p probability mass")
    p.add_argument("--beam", type=positive_int, default=None, help="beam search with this width (the paper uses 4)")
    p.add_argument("--length-penalty", type=finite_float, default=0.0, help="beam search GNMT alpha (0 = none)")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable; \\n is a newline)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="prompts decoded together (default 8)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument(
        "--mesh",
        type=mesh_arg,
        default=None,
        help="DATAxMODEL: decode on a device mesh, experts over data, hidden over model (CPU: simulated devices)",
    )
    p.set_defaults(func=run)


def _unescape(text: str) -> str:
    return text.replace("\\n", "\n").replace("\\t", "\t")


def read_prompts(path: str) -> list[str]:
    """Prompts from a text file (one per line) or a .jsonl file (strings or {"prompt": ...})."""
    file = Path(path)
    if not file.is_file():
        raise GLaMError(f"--file {path!r} does not exist; give a text file with one prompt per line")
    lines = [line for line in read_text(path, "--file ").splitlines() if line.strip()]
    if file.suffix != ".jsonl":
        prompts = [_unescape(line) for line in lines]
    else:
        try:
            items = [json.loads(line) for line in lines]
        except json.JSONDecodeError as exc:
            raise GLaMError(f"--file {path!r}: bad JSON ({exc}); write one string or object per line") from None
        prompts = [item["prompt"] if isinstance(item, dict) and "prompt" in item else item for item in items]
        if not all(isinstance(p, str) for p in prompts):
            raise GLaMError(f"--file {path!r}: each line must be a JSON string or an object with a 'prompt' string")
    if not prompts:
        raise GLaMError(f"--file {path!r} holds no prompts")
    return prompts


def make_sampler(args: argparse.Namespace):
    """The decoding strategy the flags ask for: beam search, sampling, or greedy."""
    from glam.inference import BeamSearch, Sampler

    sampling = args.temperature is not None or args.top_k > 0 or args.top_p < 1.0
    if args.beam is not None:
        if sampling:
            raise GLaMError("--beam cannot be combined with --temperature/--top-k/--top-p; choose one")
        return BeamSearch(args.beam, args.length_penalty)
    temperature = args.temperature if args.temperature is not None else (1.0 if sampling else 0.0)
    return Sampler(temperature, args.top_k, args.top_p)


def run(args: argparse.Namespace) -> int:
    """Load the checkpoint and print completions: one prompt streams, several print in order as they end."""
    from glam.inference import generate
    from glam.inference.lm import load_language_model

    prompts = [_unescape(args.prompt)] if args.prompt is not None else read_prompts(args.file)
    sampler = make_sampler(args)  # fail on bad flags before loading the model
    batch_size = min(args.batch_size, len(prompts))
    if args.mesh is not None:
        from glam.sharding.mesh import request_devices

        request_devices(args.mesh[0] * args.mesh[1])
        batch_size = -(-batch_size // args.mesh[0]) * args.mesh[0]  # filler rows: the batch splits over data
    lm = load_language_model(args.checkpoint, step=args.step)
    cfg, params, mesh = lm.cfg, lm.params, None
    if args.mesh is not None:
        from glam.sharding.mesh import place_for_inference

        cfg, params, mesh = place_for_inference(cfg, params, args.mesh, batch_size)
    from glam.sharding.rules import activate

    printer = _Printer(prompts)
    with activate(mesh):
        generate(
            cfg,
            params,
            lm.tokenizer,
            prompts,
            max_tokens=args.max_tokens,
            sampler=sampler,
            stop=[_unescape(s) for s in args.stop],
            stream=printer,
            seed=args.seed,
            batch_size=batch_size,
        )
    return 0


class _Printer:
    """Stream callback: a single prompt's text goes out as it comes; otherwise whole completions in order."""

    def __init__(self, prompts: list[str]):
        self.prompts = prompts
        self.texts = [""] * len(prompts)
        self.tokens = [0] * len(prompts)
        self.reasons: list[str | None] = [None] * len(prompts)
        self.printed = 0

    def __call__(self, event) -> None:
        i = event.index
        self.texts[i] += event.text
        self.tokens[i] += len(event.tokens)
        self.reasons[i] = event.finish_reason
        if len(self.prompts) == 1:
            sys.stdout.write(event.text + ("\n" if event.finish_reason else ""))
            sys.stdout.flush()
        while self.printed < len(self.prompts) and self.reasons[self.printed]:
            j = self.printed
            if len(self.prompts) > 1:
                print(f"=== [{j}] {self.prompts[j]}\n{self.texts[j]}", flush=True)
            print(f"[{self.reasons[j]}, {self.tokens[j]} tokens]", file=sys.stderr)
            self.printed += 1
