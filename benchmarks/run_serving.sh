#!/usr/bin/env bash
# The serving comparison of docs/benchmarks.md ("Serving under load", issue 24 §3) in one go. Run it ALONE.
#
#   bash benchmarks/run_serving.sh                  # results in bench-results/serving/
#
# 1. checkpoints: `tiny` and `tiny-dense` trained briefly (STEPS steps, the same tokenizer), model.max_seq_len
#    1024 so a 512-token prompt and a 256-token answer fit (kept: a second run reuses them);
# 2. the peer's folder: a random-weight MixtralForCausalLM of tiny's activated size and the HF tokenizer
#    (benchmarks/peer_hf_serve.py, in the side venv HF_BIN; without it the peer and guidellm are skipped);
# 3. benchmarks/serve_load.py: glam tiny continuous, tiny static, tiny-dense continuous, the HF peer, one
#    server at a time, Poisson arrivals at RATES (requests/s, inf = a burst), REQUESTS per rate;
# 4. guidellm (a load generator nobody here wrote) against `glam serve` (tiny, continuous), Poisson at
#    GUIDELLM_RATE, its lengths drawn normal with serve_load's means and standard deviations, clipped to the
#    same ranges (guidellm has no log-uniform), after an untimed synchronous guidellm pass of the same requests.
# uptime before and after. Time: the target is <= 20 min alone on the 2-core CPU; most of it is the four glam
# servers' --warmup compiles (366 s each at load 13 beside other jobs) and the rates' arrival spans
# (REQUESTS/rate seconds each). A smoke run beside other jobs (load 12-15), checkpoints reused,
#   OUT=/tmp/rs RATES=inf REQUESTS=6 EXTRA="--prompt-tokens 16 64 --output-tokens 4 16 --no-warmup" bash ...
# took 808 s end to end, rc 0.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
GLAM=${GLAM:-.venv/bin/glam}
HF_BIN=${HF_BIN:-/work/sidevenv-bench/bin}
OUT=${OUT:-bench-results/serving}
STEPS=${STEPS:-50}
RATES=${RATES:-"2 4 8 inf"}
REQUESTS=${REQUESTS:-48}
MAX_BATCH=${MAX_BATCH:-16}
GUIDELLM_RATE=${GUIDELLM_RATE:-4}
EXTRA=${EXTRA:-}  # more serve_load.py flags, e.g. EXTRA="--prompt-tokens 16 64 --no-warmup" for a quick smoke run
mkdir -p "$OUT/logs"
start=$(date +%s)
{ date -u; uptime; } | tee "$OUT/uptime_start.txt"

for preset in tiny tiny-dense; do
  [ -d "$OUT/$preset/checkpoints" ] && continue
  tok=(); [ "$preset" = tiny ] || tok=("data.tokenizer=$OUT/tiny/tokenizer.model")
  $GLAM train "$preset" "train.steps=$STEPS" "checkpoint.every=$STEPS" train.log_every=10 model.max_seq_len=1024 \
    "${tok[@]}" --run-dir "$OUT/$preset" > "$OUT/logs/train_$preset.log" 2>&1
done

rows=(glam:tiny:continuous glam:tiny:static glam:tiny-dense:continuous)
if [ -x "$HF_BIN/transformers" ] && [ -x "$HF_BIN/guidellm" ]; then
  $PY benchmarks/serve_load.py --mixtral-shape tiny --set model.max_seq_len=1024 > "$OUT/mixtral_shape.json"
  "$HF_BIN/python" benchmarks/peer_hf_serve.py --shape "$OUT/mixtral_shape.json" --spm "$OUT/tiny/tokenizer.model" \
    --out "$OUT/hf-mixtral" > "$OUT/hf-mixtral.json"
  rows+=("hf:$OUT/hf-mixtral")
else
  echo "no side venv at $HF_BIN (transformers, guidellm): the HF peer and guidellm are skipped; docs/benchmarks.md sets it up"
fi

# shellcheck disable=SC2086  # RATES and EXTRA are lists
$PY benchmarks/serve_load.py --checkpoints "tiny=$OUT/tiny" "tiny-dense=$OUT/tiny-dense" --rows "${rows[@]}" \
  --rates $RATES --requests "$REQUESTS" --max-batch "$MAX_BATCH" --hf-bin "$HF_BIN" --logs "$OUT/logs" \
  --json "$OUT/serve_load.json" --md "$OUT/serve_load.md" $EXTRA

if [ -x "$HF_BIN/guidellm" ]; then
  port=$($PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  $GLAM serve --checkpoint "$OUT/tiny" --port "$port" --model-name tiny --max-batch "$MAX_BATCH" --max-queue 512 \
    > "$OUT/logs/guidellm_server.log" 2>&1 &
  server=$!
  trap 'kill "$server" 2>/dev/null || true' EXIT
  for _ in $(seq 600); do
    curl -s -m 2 "http://127.0.0.1:$port/health" | grep -q '"status": *"ok"' && break
    kill -0 "$server" 2>/dev/null || { echo "glam serve exited: $OUT/logs/guidellm_server.log"; exit 1; }
    sleep 1
  done
  guidellm=("$HF_BIN/guidellm" run
    --backend "kind=openai_http,target=http://127.0.0.1:$port,request_format=/v1/completions,model=tiny"
    --tokenizer "kind=huggingface_auto,model=$OUT/hf-mixtral"
    --data "kind=synthetic_text,prompt_tokens=143,prompt_tokens_stdev=132,prompt_tokens_min=16,prompt_tokens_max=512,output_tokens=72,output_tokens_stdev=66,output_tokens_min=8,output_tokens_max=256"
    --constraint "kind=max_requests,count=$REQUESTS" --constraint "kind=max_duration,seconds=120"
    --disable-console-interactive)
  # untimed, one request at a time: a warmed-up glam serve still compiles on the first prompt of some lengths
  "${guidellm[@]}" --profile kind=synchronous --output "kind=json,path=$OUT/guidellm_warmup.json" \
    > "$OUT/logs/guidellm_warmup.txt" 2>&1
  "${guidellm[@]}" --profile "kind=poisson,rate=$GUIDELLM_RATE" \
    --output "kind=json,path=$OUT/guidellm.json" --output kind=console 2>&1 | tee "$OUT/guidellm.txt"
  kill "$server"
  wait "$server" 2>/dev/null || true
fi

{ date -u; uptime; echo "total $(( $(date +%s) - start )) s"; } | tee "$OUT/uptime_end.txt"
echo "results in $OUT/ (serve_load.md, serve_load.json, guidellm.txt, guidellm.json)"
