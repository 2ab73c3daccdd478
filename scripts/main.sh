#!/usr/bin/env bash
# The main job on the embedded defaults, from nothing (set-up included):
#   bash scripts/main.sh
# embedded model -> BFCL dataset -> `slm-swap serve` as the hosted stand-in -> baseline evals of
# both tracks (hosted and SLM) -> compare -> fine-tune on CPU -> re-evaluate -> final compare.
# With a real Azure deployment, export AZURE_* and the stand-in is not started.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
# Tracing needs a Langfuse project; the demo runs without one unless LANGFUSE_* are set.
if [ -z "${LANGFUSE_PUBLIC_KEY:-}" ]; then export LANGFUSE_DISABLED=1; fi

slm-swap models fetch
slm-swap prepare --source bfcl

if [ -z "${AZURE_ENDPOINT:-}" ] && [ -z "${HOSTED_BASE_URL:-}" ]; then
  # The stand-in serves the same base model as the SLM, so the two sides tie and compare says
  # FINE_TUNE=0: the demo fine-tunes anyway (the pipeline's `--finetune always`) to show that path.
  port=${SLM_SWAP_DEMO_PORT:-8765}
  slm-swap serve --port "$port" --model-name hosted-stand-in > slm_swap/05_eval/stand-in.log 2>&1 &
  server=$!
  trap 'kill $server 2>/dev/null || true' EXIT
  export HOSTED_BASE_URL="http://127.0.0.1:$port/v1" HOSTED_MODEL=hosted-stand-in
  for _ in $(seq 1 120); do curl -sf "$HOSTED_BASE_URL/models" >/dev/null && break; sleep 1; done
  always=1
fi

for track in structured toolcall; do
  slm-swap eval --track "$track" --model-kind azure --split test
  slm-swap eval --track "$track" --model-kind slm --split test
  set +e
  slm-swap compare --track "$track" --azure "slm_swap/05_eval/${track}_azure_test.json" --slm "slm_swap/05_eval/${track}_slm_test.json" --delta 0.01
  decision=$?
  set -e
  [ "$decision" = 2 ] && exit 2
  if [ "$decision" = 10 ] || [ "${always:-0}" = 1 ]; then
    slm-swap train --track "$track" --overwrite
    slm-swap eval --track "$track" --model-kind slm --split test --adapter "slm_swap/04_ft/adapter_${track}"
    slm-swap compare --track "$track" --azure "slm_swap/05_eval/${track}_azure_test.json" --slm "slm_swap/05_eval/${track}_slm_ft_test.json" --delta 0.01 || true
  fi
done
