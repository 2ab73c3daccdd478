#!/usr/bin/env bash
# Regenerate constraints.txt from .venv after changing pyproject.toml:
#   bash scripts/setup.sh && bash scripts/lock.sh
# `pip list --format=freeze`, not `pip freeze`: for a package installed from a local wheel
# `pip freeze` writes `name @ file:///...`, a path no other machine has (v0 shipped two such pins).
set -euo pipefail
cd "$(dirname "$0")/.."
{
  sed -n '/^[^#]/q;p' constraints.txt  # the comment block on top stays
  # pip and setuptools are the installer's own; torch's local version tag (+cpu) is not on the registry.
  .venv/bin/python -m pip list --format=freeze --exclude-editable | grep -vE '^(pip|setuptools)==' | sed 's/+cpu$//'
} > constraints.txt.new
mv constraints.txt.new constraints.txt
