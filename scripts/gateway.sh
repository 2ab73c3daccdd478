#!/usr/bin/env bash
# The gateway demo, after the main job (`bash scripts/main.sh`: the data in slm_swap/02_dataset, the
# adapters in slm_swap/04_ft); it trains nothing:
#   bash scripts/gateway.sh
# For each track: the hosted model's accuracy on the val split (`slm-swap eval --model-kind azure`),
# then `slm-swap gateway calibrate` on val (the confidence threshold: slm_swap/06_gateway/policy_<track>.json
# and its risk-coverage chart policy_<track>.png); then the test split replayed through the gateway in
# route mode with those policies (bench/gateway_replay.py: the embedded model with the main job's
# adapters in process, the real openai SDK over HTTP), printing the route table: coverage, the
# gateway's accuracy next to the hosted model alone and the SLM alone, hosted calls and tokens saved,
# the fallback reasons.
# The hosted side is the scripted stand-in, NOT A MODEL, as in the main job (wrong on purpose on every
# 12th row, cut off on every 15th); with AZURE_* or HOSTED_BASE_URL/HOSTED_MODEL exported, the real
# deployment. About 1 minute on 2 CPU cores when the gate accepts nothing (the SLM is
# not asked), a few minutes when it does.
set -euo pipefail
. "$(dirname "$0")/demo_env.sh"

tracks="structured toolcall"
for track in $tracks; do
  for split in val test; do
    if [ ! -f "slm_swap/02_dataset/$track/$split.jsonl" ]; then
      echo "no prepared data (slm_swap/02_dataset/$track/$split.jsonl): run \`bash scripts/main.sh\` first" >&2
      exit 2
    fi
  done
done
faults=(--fault wrong=12 --fault broken=15)
hosted=(--hosted stand-in "${faults[@]}")

if [ -z "${AZURE_ENDPOINT:-}" ] && [ -z "${HOSTED_BASE_URL:-}" ]; then
  # The main job's stand-in, for the hosted model's val accuracy that calibration aims at.
  port=${SLM_SWAP_DEMO_PORT:-8765}
  export HOSTED_BASE_URL="http://127.0.0.1:$port/v1" HOSTED_MODEL=scripted-stand-in-not-a-model
  python -m slm_swap.trajectories.teacher --port "$port" --source bfcl --model-name "$HOSTED_MODEL" \
    "${faults[@]}" > slm_swap/06_gateway/stand-in.log 2>&1 &
  server=$!
  trap 'kill $server 2>/dev/null || true' EXIT
  for _ in $(seq 1 60); do curl -sf "$HOSTED_BASE_URL/models" >/dev/null && break; sleep 1; done
  kill -0 "$server" 2>/dev/null || { cat slm_swap/06_gateway/stand-in.log; echo "the hosted stand-in did not start" >&2; exit 1; }
  echo "hosted side: a SCRIPTED STAND-IN, NOT A MODEL (gold answers, a few wrong on purpose). Export AZURE_* for a real deployment."
else
  hosted=(--hosted real)
fi

replay=()
for track in $tracks; do
  adapter=()
  if [ -d "slm_swap/04_ft/adapter_$track" ]; then adapter=(--adapter "slm_swap/04_ft/adapter_$track"); fi
  slm-swap eval --track "$track" --model-kind azure --split val
  slm-swap gateway calibrate --track "$track" --split val "${adapter[@]}"
  replay+=(--track "$track" --policy "slm_swap/06_gateway/policy_$track.json")
done
if [ -n "${server:-}" ]; then kill "$server" 2>/dev/null || true; fi

python bench/gateway_replay.py --split test "${hosted[@]}" "${replay[@]}"

echo
echo "gateway records: slm_swap/06_gateway/replay.jsonl; calibration: slm_swap/06_gateway/policy_<track>.json" \
     "and policy_<track>.png (the risk-coverage chart)"
