# Sourced by the demos that run after the main job (scripts/gateway.sh, scripts/flywheel.sh): the
# repository root, the main job's .venv, models loaded offline, and tracing off unless LANGFUSE_* are set.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ]; then
  echo "no .venv: run \`bash scripts/main.sh\` first (it sets up, prepares the data and trains the adapters)" >&2
  exit 2
fi
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
# Tracing needs a Langfuse project; the demo runs without one unless LANGFUSE_* are set.
if [ -z "${LANGFUSE_PUBLIC_KEY:-}" ]; then export LANGFUSE_DISABLED=1; fi
