#!/usr/bin/env bash
# The Phase II demo on the embedded model, from nothing (set-up included):
#   bash scripts/distill.sh
# The Prefect flow `slm-swap-distill` (`slm-swap distill`): the teacher as a CodeAct agent over 160 BFCL
# tasks (simulated tools) -> automatic filter -> build (train/val/test; agent rows with loss on the
# teacher's turns only) -> the teacher and the embedded SmolLM2 evaluated as agents on the 16 test tasks
# -> compare -> fine-tune where the student trails -> agent re-eval -> compare -> report
# (slm_swap/05_eval/distill/report.md, .png).
#
# Without AZURE_* or HOSTED_BASE_URL the teacher is a SCRIPTED stand-in, not a model: a local
# OpenAI-compatible server (`python -m slm_swap.trajectories.teacher`) that answers each task in
# CodeAct form from BFCL's gold call, with every 7th task answered with a wrong call and every 11th
# with broken code, so the filter has something to reject. Its success rate says nothing about any
# real model; the student's before/after numbers are real. With a real hosted model, export
# AZURE_* (or HOSTED_BASE_URL/HOSTED_MODEL) and it is the teacher.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
# Tracing needs a Langfuse project; the demo runs without one unless LANGFUSE_* are set.
if [ -z "${LANGFUSE_PUBLIC_KEY:-}" ]; then export LANGFUSE_DISABLED=1; fi

slm-swap models fetch
mkdir -p slm_swap/05_eval/distill
if [ -z "${AZURE_ENDPOINT:-}" ] && [ -z "${HOSTED_BASE_URL:-}" ]; then
  port=${SLM_SWAP_TEACHER_PORT:-8766}
  python -m slm_swap.trajectories.teacher --port "$port" --fault wrong=7 --fault broken=11 \
    > slm_swap/05_eval/distill/teacher.log 2>&1 &
  teacher=$!
  trap 'kill $teacher 2>/dev/null || true' EXIT
  export HOSTED_BASE_URL="http://127.0.0.1:$port/v1" HOSTED_MODEL=scripted-teacher-not-a-model
  for _ in $(seq 1 120); do grep -q "^scripted teacher" slm_swap/05_eval/distill/teacher.log && break; sleep 0.5; done
  kill -0 "$teacher" 2>/dev/null || { cat slm_swap/05_eval/distill/teacher.log; echo "the scripted teacher did not start" >&2; exit 1; }
  echo "teacher: a SCRIPTED stand-in, not a model: it answers from BFCL's gold calls (wrong every 7th" \
       "task, broken code every 11th). Its own scores mean nothing; the student's before/after do."
fi

# Two turns per task (the call, then final_answer) of at most 128 new tokens each: the teacher's
# turns need no more (its longest is about 110 SmolLM2 tokens), and the untrained student, which
# rarely stops by itself, costs the least CPU time. 160 tasks leave about 100 accepted ones to train
# on (one conversation per optimizer step: about 7 minutes on a 2-core CPU) after the 16 test tasks
# that teacher and student are evaluated on, all 16 agents decoded as one batch.
slm-swap distill --source bfcl --limit 160 --max-steps 2 --max-turn-tokens 128 --val 8 --test 16 \
  --concurrency 16 --finetune auto

echo
echo "report: slm_swap/05_eval/distill/report.md (markdown) and report.png (chart); trajectories in" \
     "slm_swap/03_trajectories/, datasets in slm_swap/02_dataset/distill/, the adapter in slm_swap/04_ft/adapter_agent/"
