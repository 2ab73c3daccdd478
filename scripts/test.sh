#!/usr/bin/env bash
# Set-up, then the whole test suite (what CI runs):
#   bash scripts/test.sh                          # all tiers: pytest, then the Mastra client's tests
#   bash scripts/test.sh -m "not integration"     # the fast pytest tier only (arguments go to pytest)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
# The layers contract (pyproject.toml [tool.importlinter]): an import that runs up a layer fails here.
lint-imports
python -m pytest -q "$@"
if [ "$#" -eq 0 ]; then
  # The TypeScript client (mastra/) against a real `slm-swap serve` on a tiny model.
  (cd mastra && npm ci --no-audit --no-fund --loglevel=error && npm test)
fi
