#!/usr/bin/env bash
# Start the worker for the `gpu` work pool on the GPU box (4x RTX 3090), from this checkout:
#   export PREFECT_API_URL=http://PREFECT_HOST:4200/api
#   bash deployments/start_gpu_worker.sh                 # runs in the foreground; Ctrl-C stops it
#   POOL=default bash deployments/start_gpu_worker.sh    # the parent pipeline's worker (also needs the GPU for SLM evals)
#
# The worker runs each fine-tune (`accelerate launch ... -m slm_swap.train`) in a subprocess with
# this environment: put AZURE_*, LANGFUSE_* (or LANGFUSE_DISABLED=1) and SLM_MODEL_PATH in it or in
# ./.env. One flow run at a time (--limit 1): the GPUs train one adapter at a time.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
export PREFECT_SERVER_ANALYTICS_ENABLED=false HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
: "${PREFECT_API_URL:?set PREFECT_API_URL to the Prefect server, e.g. http://127.0.0.1:4200/api}"
POOL=${POOL:-gpu}
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader || true
else
  echo "warning: nvidia-smi not found: fine-tunes on this worker will train on CPU (accelerate_config/cpu.yaml)" >&2
fi
exec prefect worker start --pool "$POOL" --type process --limit "${WORKER_LIMIT:-1}" --name "${WORKER_NAME:-$POOL-$(hostname)}"
