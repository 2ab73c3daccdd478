#!/usr/bin/env bash
# Prefect set-up for SLM Swap, idempotent. Run once from the checkout the workers will use:
#   export PREFECT_API_URL=http://PREFECT_HOST:4200/api
#   bash deployments/setup_work_pools.sh            # pools + slm-gpu limit + deploy all four deployments
#   SLM_SWAP_DEPLOY=0 bash deployments/setup_work_pools.sh   # pools and limit only
#
# - work pool `default` (process): runs the parent flow `slm-swap-pipeline` (the `nightly` deployment)
#   and the Phase II flow `slm-swap-distill` (the `weekly` deployment, its schedule off until turned on)
#   and the flywheel `slm-swap-flywheel` (its `nightly` deployment: one round over the gateway's traffic)
# - work pool `gpu` (process): runs the fine-tune subflow `slm-swap-finetune` (the `gpu` deployment)
# - tag concurrency limit `slm-gpu` = 1: tasks that load the SLM or train (eval-slm, train-adapter)
#   carry this tag, so across all flow runs only one of them holds the GPU at a time
set -euo pipefail
cd "$(dirname "$0")/.."
export PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_CLI_PROMPT=false
: "${PREFECT_API_URL:?set PREFECT_API_URL to the Prefect server, e.g. http://127.0.0.1:4200/api}"
PREFECT=${PREFECT:-prefect}

for pool in default gpu; do
  if "$PREFECT" work-pool inspect "$pool" >/dev/null 2>&1; then
    echo "work pool $pool: exists"
  else
    "$PREFECT" work-pool create "$pool" --type process
  fi
done
# Upsert: creates the limit, or resets it to 1 if it exists.
"$PREFECT" concurrency-limit create slm-gpu "${SLM_GPU_LIMIT:-1}" >/dev/null
echo "concurrency limit slm-gpu: ${SLM_GPU_LIMIT:-1}"

if [ "${SLM_SWAP_DEPLOY:-1}" = 1 ]; then
  # PWD is this checkout: prefect.yaml's pull step records it as the flow runs' working directory.
  PWD=$(pwd) "$PREFECT" --no-prompt deploy --all
fi
