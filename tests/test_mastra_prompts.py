"""The Mastra client's prompts (mastra/prompts.json) are exactly the Python package's export.

mastra/ reads its templates from the committed prompts.json instead of retyping them; this test
keeps that file from drifting when slm_swap/core/prompts.py changes. Fix: `cd mastra && npm run prompts`.
"""

from __future__ import annotations

import json
from pathlib import Path

from slm_swap.core.prompts import export_prompts
from slm_swap.infra.fileio import write_json

PROMPTS_JSON = Path(__file__).resolve().parents[1] / "mastra" / "prompts.json"


def test_committed_mastra_prompts_equal_export():
    committed = json.loads(PROMPTS_JSON.read_text(encoding="utf-8"))
    assert committed == export_prompts(), "mastra/prompts.json is stale: run `cd mastra && npm run prompts`"


def test_committed_mastra_prompts_are_the_export_byte_for_byte(tmp_path):
    # Exactly what `slm-swap prompts export --out` writes, so regenerating it is a no-op diff.
    write_json(tmp_path / "prompts.json", export_prompts())
    assert PROMPTS_JSON.read_bytes() == (tmp_path / "prompts.json").read_bytes(), "run `cd mastra && npm run prompts`"
