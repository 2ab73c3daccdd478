#!/usr/bin/env bash
# The CUDA paths on a GPU machine without network (docs/gpu.md says what it showed). Two steps:
#   bash scripts/gpu_check.sh prepare [core|unsloth]   # here: model files + wheels into .gpu_check/
#   bash scripts/gpu_check.sh run [--only CHECK ...]   # there: installs the carried wheels, runs the checks
# `prepare core` carries what the library needs beside the machine's own torch/transformers/peft/
# accelerate (bitsandbytes, TRL, datasets, DeepSpeed, Langfuse, pydantic-settings); `prepare
# unsloth` carries Unsloth and its own needs instead (two groups: together they pass the 64 MiB a
# call may carry). Wheels are for the machine's Python (3.12, x86-64 manylinux), at the versions
# constraints.txt pins. The report is written to $OUT/gpu_check.json (or ./gpu_check.json).
set -euo pipefail
cd "$(dirname "$0")/.."

CORE="bitsandbytes trl datasets dill multiprocess pydantic pydantic-core pydantic-settings python-dotenv typing-inspection
      langfuse backoff opentelemetry-api opentelemetry-sdk opentelemetry-exporter-otlp-proto-http
      opentelemetry-exporter-otlp-proto-common opentelemetry-proto opentelemetry-semantic-conventions
      googleapis-common-protos hjson"
UNSLOTH="unsloth==2026.10.9 unsloth_zoo tyro hf_transfer docstring_parser shtab trl datasets dill multiprocess
         pydantic pydantic-core pydantic-settings python-dotenv typing-inspection bitsandbytes"

pinned() {  # NAME -> NAME==VERSION from constraints.txt, else NAME as given
  local line
  line=$(grep -i -m1 -E "^${1//[-_]/[-_]}==" constraints.txt || true)
  echo "${line:-$1}"
}

case "${1:-}" in
  prepare)
    group=${2:-core}
    bash scripts/setup.sh
    .venv/bin/slm-swap models fetch > /dev/null
    rm -rf .gpu_check && mkdir -p .gpu_check/smollm2 .gpu_check/wheels
    for name in config.json generation_config.json tokenizer.json tokenizer_config.json chat_template.jinja; do
      cp "slm_swap/models/smollm2-135m-instruct/$name" .gpu_check/smollm2/
    done
    names=$([ "$group" = unsloth ] && echo "$UNSLOTH" || echo "$CORE")
    for name in $names; do
      spec=$(case "$name" in *==*) echo "$name" ;; *) pinned "$name" ;; esac)
      .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .gpu_check/wheels "$spec" 2>/dev/null \
      || .venv/bin/python -m pip download -q --no-deps --only-binary=:all: -d .gpu_check/wheels "$spec" 2>/dev/null \
      || echo "no wheel for $spec"
    done
    if [ "$group" = core ]; then  # DeepSpeed ships an sdist only: build its pure-Python wheel here (no ops compiled)
      DS_BUILD_OPS=0 .venv/bin/python -m pip wheel -q --no-deps --no-build-isolation -w .gpu_check/wheels \
        "$(pinned deepspeed==0.19.8)" || echo "could not build a deepspeed wheel"
    fi
    du -sh .gpu_check
    echo "carry .gpu_check (gitignored) and run: bash scripts/gpu_check.sh run"
    ;;
  run)
    shift
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .gpu_check/site .gpu_check/wheels/*.whl
    export PYTHONPATH="$PWD/.gpu_check/site" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 LANGFUSE_DISABLED=1 PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    python3 scripts/gpu_check.py --model-files .gpu_check/smollm2 --out "${OUT:-.}/gpu_check.json" "$@"
    ;;
  *)
    sed -n '2,9p' "$0"
    exit 2
    ;;
esac
