"""``glam export RUN OUT``: a run's checkpoint as a Hugging Face model folder (docs/export.md).

``export_run`` checks the output folder, loads the checkpoint (``glam.checkpoint.load_for_inference``)
and calls ``export_model``, which writes:

- ``config.json`` (``auto_map`` → the two files below), ``configuration_glam.py``, ``modeling_glam.py``;
- ``model.safetensors`` (the ``safetensors`` library; float32, or bfloat16 with the router and the
  relative position bias kept in float32);
- the tokenizer (``glam.export.tokenizer.write_hf_tokenizer``), ``generation_config.json``;
- ``README.md``: a model card with the architecture, parameter counts, training data and the
  held-out loss from the run's ``metrics.jsonl`` (``glam.export.card``).

Files are written into a temporary folder inside ``OUT`` and moved into place once all are written,
so a failed export leaves no half-written weights under their final names.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from glam.config import GLaMConfig
from glam.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer
from glam.export.card import model_card
from glam.export.model import check_exportable, hf_config, hf_weights, parameter_counts
from glam.export.tokenizer import ExportError, write_hf_tokenizer

HF_CODE = Path(__file__).parent / "hf"
CODE_FILES = ("configuration_glam.py", "modeling_glam.py")
WEIGHTS_FILE = "model.safetensors"


def config_json(cfg: GLaMConfig, dtype: str) -> dict:
    return {
        "architectures": ["GlamForCausalLM"],
        "model_type": "glam",
        "auto_map": {
            "AutoConfig": "configuration_glam.GlamConfig",
            "AutoModelForCausalLM": "modeling_glam.GlamForCausalLM",
        },
        **hf_config(cfg),
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": PAD_ID,
        "tie_word_embeddings": True,
        "use_cache": True,
        "dtype": dtype,
        "torch_dtype": dtype,  # what transformers before 5 reads
    }


def generation_config(cfg: GLaMConfig, tokenizer: Tokenizer) -> dict:
    """Greedy by default, as ``glam generate``; stops at </s>; never generates the ids of a model
    vocabulary padded beyond the tokenizer's (glam's ``vocab_limit``)."""
    config = {
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": PAD_ID,
        "do_sample": False,
        "max_length": cfg.model.max_seq_len,
    }
    if tokenizer.vocab_size < cfg.model.vocab_size:
        config["suppress_tokens"] = list(range(tokenizer.vocab_size, cfg.model.vocab_size))
    return config


def export_model(
    cfg: GLaMConfig,
    params: dict,
    tokenizer: Tokenizer,
    out_dir: str,
    *,
    dtype: str = "float32",
    source: dict | None = None,
) -> list[str]:
    """Write the Hugging Face folder of (cfg, params, tokenizer) into ``out_dir`` (created if needed);
    returns the names written. ``source``: what the card says about the run (``card.model_card``)."""
    from safetensors.numpy import save_file

    check_exportable(cfg)
    weights = hf_weights(cfg, params, dtype)
    os.makedirs(out_dir, exist_ok=True)
    tmp = os.path.join(out_dir, f".glam-export-{os.getpid()}")
    os.makedirs(tmp, exist_ok=True)
    try:
        names = write_hf_tokenizer(tokenizer, tmp, model_max_length=cfg.model.max_seq_len)
        save_file(weights, os.path.join(tmp, WEIGHTS_FILE), metadata={"format": "pt"})
        for name in CODE_FILES:
            shutil.copyfile(HF_CODE / name, os.path.join(tmp, name))
        _write_json(os.path.join(tmp, "config.json"), config_json(cfg, dtype))
        _write_json(os.path.join(tmp, "generation_config.json"), generation_config(cfg, tokenizer))
        card = model_card(cfg, parameter_counts(cfg, weights), dtype, source or {})
        with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as f:
            f.write(card)
        names = [*names, WEIGHTS_FILE, *CODE_FILES, "config.json", "generation_config.json", "README.md"]
        for name in names:
            os.replace(os.path.join(tmp, name), os.path.join(out_dir, name))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return names


def check_out_dir(out_dir: str, force: bool) -> None:
    """Refuse a non-empty ``out_dir`` unless ``force`` (then the export's files replace theirs)."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ExportError(f"{out_dir!r} is a file; give a folder to export into")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not force:
        raise ExportError(
            f"{out_dir!r} is not empty; give a new or empty folder, or --force to write the export's files into it "
            "(files of the same names are replaced, others are left as they are)"
        )


def export_run(
    run_dir: str,
    out_dir: str,
    *,
    step: int | None = None,
    dtype: str = "float32",
    force: bool = False,
    tokenizer_only: bool = False,
    log=None,
) -> list[str]:
    """Export checkpoint ``step`` (default: the newest) of ``run_dir`` into ``out_dir``;
    ``tokenizer_only`` writes just the tokenizer files. Returns the names written."""
    from glam.checkpoint import load_for_inference

    log = log or (lambda message: print(f"note: {message}", file=sys.stderr, flush=True))
    if dtype not in ("float32", "bfloat16"):
        raise ExportError(f"--dtype {dtype!r}: choose float32 or bfloat16")
    if not os.path.isdir(run_dir):
        raise ExportError(f"{run_dir!r} is not a folder; give a glam run directory (made by `glam train`)")
    check_out_dir(out_dir, force)
    run_cfg = _run_config(run_dir)
    if tokenizer_only:
        max_len = run_cfg.model.max_seq_len if run_cfg is not None else None
        return write_hf_tokenizer(run_dir, out_dir, model_max_length=max_len)
    if run_cfg is not None:
        check_exportable(run_cfg)  # refuse before reading the weights (the checkpoint's own config decides later)
    step = step if step is not None else _newest_step(run_dir)
    cfg, params, tokenizer = load_for_inference(run_dir, step=step, log=log)
    source = {"run_dir": os.path.abspath(run_dir), "step": step, "metrics": _heldout(run_dir, step)}
    return export_model(cfg, params, tokenizer, out_dir, dtype=dtype, source=source)


def _run_config(run_dir: str) -> GLaMConfig | None:
    """``RUN/config.yaml`` if it is there and reads (a copy: the checkpoint holds its own config)."""
    from glam.checkpoint.manager import CONFIG_FILE, read_config
    from glam.errors import GLaMError

    if not os.path.isfile(os.path.join(run_dir, CONFIG_FILE)):
        return None
    try:
        return read_config(run_dir)
    except GLaMError:
        return None


def _newest_step(run_dir: str) -> int | None:
    """The newest finished checkpoint's step (None: let ``load_for_inference`` say why there is none)."""
    from glam.checkpoint.manager import Checkpointer, checkpoint_dir

    if not os.path.isdir(checkpoint_dir(run_dir)):
        return None
    checkpointer = Checkpointer(run_dir)
    try:
        return checkpointer.latest_step()
    finally:
        checkpointer.close()


def _heldout(run_dir: str, step: int | None) -> dict | None:
    """The run's last held-out evaluation at or before ``step`` (None if it has none)."""
    from glam.train.metrics import read_metrics

    evals = [r for r in read_metrics(run_dir) if r.get("kind") == "eval" and "heldout/mean" in r]
    evals = [r for r in evals if step is None or r.get("step", 0) <= step]
    return evals[-1] if evals else None


def _write_json(path: str, value: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2)
        f.write("\n")
