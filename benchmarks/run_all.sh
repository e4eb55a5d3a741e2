#!/usr/bin/env bash
# Every benchmark of docs/benchmarks.md in one go, JSON results into OUT (default bench-results/).
# On a GPU machine: pip install -e '.[bench]' first for the torch peer (optional), then
#   bash benchmarks/run_all.sh            # or OUT=somewhere bash benchmarks/run_all.sh
# bf16 figures: DTYPE=bfloat16 bash benchmarks/run_all.sh
# MaxText beside glam in the peers run: MAXTEXT_PYTHON=../maxtext-venv/bin/python (docs/benchmarks.md §4)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-bench-results}
DTYPE=${DTYPE:-float32}
mkdir -p "$OUT"
$PY benchmarks/moe_layer.py --dtype "$DTYPE" --experts-only 1.25 2.0 --json "$OUT/moe_layer.json"
$PY benchmarks/peers.py ${MAXTEXT_PYTHON:+--maxtext-python "$MAXTEXT_PYTHON"} --json "$OUT/peers.json"
$PY benchmarks/train_step.py --presets tiny tiny-dense --json "$OUT/train_tiny.json"
$PY benchmarks/train_step.py --presets glam-0.1b-8e dense-0.1b \
  --set train.batch_size=8 train.seq_len=1024 model.remat=none "model.activation_dtype=$DTYPE" \
  --json "$OUT/train_0.1b.json"
$PY benchmarks/decode.py --json "$OUT/decode.json"
echo "results in $OUT/"
