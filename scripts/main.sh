#!/usr/bin/env bash
# The main job on the embedded defaults, from nothing (set-up included):
#   bash scripts/main.sh
# embedded model -> BFCL dataset -> the hosted stand-in -> the Prefect flow `slm-swap-pipeline`
# (`slm-swap pipeline --finetune auto`): baseline evals of both tracks (hosted and SLM) -> compare
# -> fine-tune on CPU where the SLM trails -> re-evaluate -> final compare -> report
# (05_eval/report.md, .png).
# The stand-in is the scripted teacher (`python -m slm_swap.trajectories.teacher`): NOT A MODEL, it
# answers each eval row from the row's gold answer, with scripted faults on some rows, so the hosted
# side scores high but not perfectly and the gate decides by itself. With a real Azure deployment
# (export AZURE_*) or another hosted server (HOSTED_BASE_URL, HOSTED_MODEL) the stand-in is not started.
# The flow runs in-process on a temporary local Prefect API; set PREFECT_API_URL to see it in a
# Prefect UI (docs/prefect.md). Re-running within 12 hours reuses finished evals and adapters.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
# Tracing needs a Langfuse project; the demo runs without one unless LANGFUSE_* are set.
if [ -z "${LANGFUSE_PUBLIC_KEY:-}" ]; then export LANGFUSE_DISABLED=1; fi

slm-swap models fetch
# 80 train rows per track: 20 fine-tuning steps, enough for the embedded model to learn both output
# formats (bench/finetune_gain.py); 24 test rows per track, so one row is about 4 points of a rate;
# the whole job stays within 15 minutes on 2 CPU cores.
slm-swap prepare --source bfcl --train 80 --test 24

if [ -z "${AZURE_ENDPOINT:-}" ] && [ -z "${HOSTED_BASE_URL:-}" ]; then
  port=${SLM_SWAP_DEMO_PORT:-8765}
  # "not-a-model" in the name puts the fact into every metrics file's model identity and the report.
  # Every 12th BFCL row answers with a wrong argument and every 15th is cut off (unparseable):
  # 3 and 1 of the 24 test rows (seed 0).
  export HOSTED_BASE_URL="http://127.0.0.1:$port/v1" HOSTED_MODEL=scripted-stand-in-not-a-model
  python -m slm_swap.trajectories.teacher --port "$port" --source bfcl --model-name "$HOSTED_MODEL" \
    --fault wrong=12 --fault broken=15 > slm_swap/05_eval/stand-in.log 2>&1 &
  server=$!
  trap 'kill $server 2>/dev/null || true' EXIT
  for _ in $(seq 1 60); do curl -sf "$HOSTED_BASE_URL/models" >/dev/null && break; sleep 1; done
  kill -0 "$server" 2>/dev/null || { cat slm_swap/05_eval/stand-in.log; echo "the hosted stand-in did not start" >&2; exit 1; }
  echo "hosted side: a SCRIPTED STAND-IN, NOT A MODEL: it answers every test row from the row's gold answer," \
       "wrong on purpose on a few rows (slm_swap/05_eval/stand-in.log). Export AZURE_* to evaluate a real deployment."
fi

slm-swap pipeline --tracks structured toolcall --split test --delta 0.01 --finetune auto

echo
echo "report: slm_swap/05_eval/report.md (markdown) and slm_swap/05_eval/report.png (chart);" \
     "metrics files in slm_swap/05_eval/, adapters in slm_swap/04_ft/"
