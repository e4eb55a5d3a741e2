#!/usr/bin/env bash
# The accelerator check of docs/benchmarks.md §9: one script, bf16, under 8 minutes on one GPU.
# Prints (and writes as JSON into OUT, default gpu-check/): the measured bf16 matmul peak and how
# jax.lax.ragged_dot lowers here (grouped GEMM or dense expansion), the MoE layer's time over a dense
# FFN per dispatch path and of the experts alone (the capacity paths' floor), train-step tokens/s
# and MFU (against that measured peak) for tiny and glam-0.1b-8e with their dense baselines, and
# decode tokens/s.
#   bash benchmarks/gpu_check.sh            # on the accelerator
#   bash benchmarks/gpu_check.sh --quick    # small sizes: a smoke run of the same steps on a CPU
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
BF16=(model.activation_dtype=bfloat16)
if [[ "${1:-}" == "--quick" ]]; then
  # one preset per step (no dense baselines, and no 0.1B step: its optimizer update alone takes
  # seconds per step on a CPU), few tokens: it checks that every step runs, not speed
  CHECK=(--quick --repeats 2)
  MOE=(--tokens 1024 --group 256 --experts 8 --cfs 2.0 --experts-only 2.0 --repeats 2)
  TRAIN=("--presets tiny --repeats 1 --peak-n 1024 --set train.batch_size=1 train.seq_len=64")
  DECODE=(--presets tiny --batch 1 --prompt 16 --tokens 8 --prefill-batch 1 --prefill-len 32 --repeats 1)
else
  CHECK=(--repeats 5)
  MOE=(--experts 8 64 --cfs 1.0 2.0 --experts-only 2.0 --repeats 5)
  TRAIN=("--presets tiny tiny-dense --repeats 5 --peak-n 8192 --set"
    "--presets glam-0.1b-8e dense-0.1b --repeats 5 --peak-n 8192 --set train.batch_size=8 train.seq_len=1024")
  DECODE=(--presets tiny tiny-dense --batch 1 8 64 --repeats 3)
fi
echo "== device, bf16 matmul peak, ragged_dot lowering"
$PY benchmarks/gpu_check.py "${CHECK[@]}" --json "$OUT/gpu_check.json" | grep -v '^[{} ]'
echo "   (${SECONDS}s so far)"
echo "== MoE layer fwd+bwd over a dense FFN of equal activated FLOPs (bf16)"
$PY benchmarks/moe_layer.py --dtype bfloat16 "${MOE[@]}" --json "$OUT/moe_layer.json" | grep '^E='
echo "   (${SECONDS}s so far)"
echo "== train step tokens/s and MFU against the measured bf16 peak"
for i in "${!TRAIN[@]}"; do
  # shellcheck disable=SC2086  # each TRAIN entry is one word-split argument list
  $PY benchmarks/train_step.py --peak-dtype bfloat16 ${TRAIN[$i]} model.remat=none "${BF16[@]}" \
    --json "$OUT/train_$i.json" | grep 'MFU'
done
echo "   (${SECONDS}s so far)"
echo "== decode tokens/s (bf16 activations and parameters)"
$PY benchmarks/decode.py --set "${BF16[@]}" --param-dtype bfloat16 "${DECODE[@]}" --json "$OUT/decode.json" \
  | grep -E '^(decode|prefill) '
echo "   (${SECONDS}s so far)"
echo "JSON results in $OUT/"
