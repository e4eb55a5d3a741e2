"""The serving peer (issue 24 §3): a random-weight ``MixtralForCausalLM`` of ``tiny``'s activated size, in a folder
that ``transformers serve`` loads, with glam's SentencePiece tokenizer converted to Hugging Face's format.

Runs in the side venv (torch, transformers, tokenizers, sentencepiece; docs/benchmarks.md "Serving under load"),
never in glam's own. The shape comes from glam (``benchmarks/serve_load.py --mixtral-shape`` prints it):

    .venv/bin/python benchmarks/serve_load.py --mixtral-shape tiny > /tmp/mixtral.json
    /work/sidevenv-bench/bin/python benchmarks/peer_hf_serve.py --shape /tmp/mixtral.json \\
        --spm runs/sl/tiny/tokenizer.model --out runs/sl/hf-mixtral
    /work/sidevenv-bench/bin/transformers serve runs/sl/hf-mixtral --continuous-batching --device cpu

Matching ``tiny``: same d_model, layers, heads, head_dim, vocabulary and tied embedding; Mixtral puts a
top-2 MoE of SwiGLU experts (3·M·F_m each) in every layer where tiny alternates a gated dense FFN (3·M·F)
with a top-2 MoE of non-gated experts (2·M·F): per pair of layers tiny activates 7·M·F, Mixtral 12·M·F_m,
so F_m = 7F/12 (448 for tiny) and the activated parameters match; its total is larger (8 experts in every
layer). Mixtral uses rotary positions instead of T5 relative bias (no parameters either way).

``--hf-tokenizer-only`` writes just the tokenizer (what guidellm's ``--processor`` needs). The conversion
(a Unigram model with byte fallback, no normalisation, spaces as ``▁``, digits split, ``\\n`` and ``\\t``
as pieces) matches glam's tokenizer on ordinary text; glam's own HF export (issue 27) supersedes it.
Generation ignores eos (``generation_config.json`` names none), as ``ignore_eos`` does for glam.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def hf_tokenizer(spm_path: str, out: Path) -> None:
    """glam's SentencePiece model as tokenizer.json + tokenizer_config.json (the ``tokenizers`` library)."""
    import sentencepiece as spm
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import Unigram

    sp = spm.SentencePieceProcessor(model_file=spm_path)
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    tok = Tokenizer(Unigram(vocab, unk_id=sp.unk_id(), byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split("\n", "isolated"),
            pre_tokenizers.Split("\t", "isolated"),
            pre_tokenizers.Digits(individual_digits=True),
        ]  # fmt: skip
    )
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    specials = [sp.id_to_piece(i) for i in (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id())]
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    from tokenizers.processors import TemplateProcessing

    bos = sp.id_to_piece(sp.bos_id())
    tok.post_processor = TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, sp.bos_id())]
    )
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": sp.id_to_piece(sp.eos_id()),
        "pad_token": sp.id_to_piece(sp.pad_id()),
        "unk_token": sp.id_to_piece(sp.unk_id()),
        "add_bos_token": True,
        "model_max_length": 1 << 20,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def mixtral(shape: dict, out: Path, seed: int) -> int:
    """A random-weight MixtralForCausalLM of ``shape`` saved to ``out``; returns its parameter count."""
    import torch
    from transformers import GenerationConfig, MixtralConfig, MixtralForCausalLM

    torch.manual_seed(seed)
    config = MixtralConfig(
        vocab_size=shape["vocab_size"],
        hidden_size=shape["d_model"],
        intermediate_size=shape["expert_ffn"],
        num_hidden_layers=shape["num_layers"],
        num_attention_heads=shape["num_heads"],
        num_key_value_heads=shape["num_heads"],
        head_dim=shape["head_dim"],
        max_position_embeddings=shape["max_seq_len"],
        num_local_experts=shape["num_experts"],
        num_experts_per_tok=shape["top_k"],
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
        torch_dtype="float32",
    )
    model = MixtralForCausalLM(config).eval()
    model.save_pretrained(out)
    # no eos: every request generates exactly max_tokens (glam's rows send ignore_eos for the same)
    GenerationConfig(bos_token_id=2, pad_token_id=0, eos_token_id=None, do_sample=False).save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spm", required=True, help="glam's tokenizer.model (the run's)")
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--shape", help="JSON from `benchmarks/serve_load.py --mixtral-shape PRESET`")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hf-tokenizer-only", action="store_true", help="write only the tokenizer (for guidellm)")
    args = p.parse_args()
    out = Path(args.out)
    hf_tokenizer(args.spm, out)
    if args.hf_tokenizer_only:
        print(f"wrote {out}/tokenizer.json")
        return
    if not args.shape:
        p.error("--shape is needed to write the model (or --hf-tokenizer-only)")
    shape = json.loads(Path(args.shape).read_text())
    n = mixtral(shape, out, args.seed)
    print(json.dumps({"out": str(out), "parameters": n, **shape}))


if __name__ == "__main__":
    main()
