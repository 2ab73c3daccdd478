#!/usr/bin/env bash
# Set-up, then the whole test suite (what CI runs):
#   bash scripts/test.sh            # all tiers
#   bash scripts/test.sh -m "not integration"   # the fast tier only
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
exec python -m pytest -q "$@"
