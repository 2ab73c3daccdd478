#!/usr/bin/env bash
# CI: run the pipeline deployment on the Prefect server and fail the job when the run fails.
#   PREFECT_API_URL=https://prefect.example/api bash deployments/ci_trigger.sh
#   PARAMS='{"config": {"finetune": "never", "limit": 8}}' bash deployments/ci_trigger.sh
# `prefect deployment run --watch` streams the run's logs and exits 1 unless it ends COMPLETED.
set -euo pipefail
: "${PREFECT_API_URL:?set PREFECT_API_URL to the Prefect server}"
export PREFECT_CLI_PROMPT=false
DEPLOYMENT=${DEPLOYMENT:-slm-swap-pipeline/nightly}
args=(deployment run "$DEPLOYMENT" --watch --watch-timeout "${WATCH_TIMEOUT:-21600}"
      --tag ci --flow-run-name "ci-${GITHUB_RUN_ID:-local}-$(date -u +%Y%m%dT%H%M%S)")
if [ -n "${PARAMS:-}" ]; then args+=(--params "$PARAMS"); fi
exec prefect "${args[@]}"
