"""The gateway's records: one JSON line per request (`slm_swap/06_gateway/requests.jsonl` by default),
the capture shim's output. `--no-log-content` keeps only the metadata."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any


class RecordsFile:
    """One JSON line per request, appended whole under a lock and flushed: a kill leaves at most a
    torn last line, which readers skip. Opened per line, so the file can be moved away between requests.
    `log_content=False` (`--no-log-content`) keeps only the metadata (`metadata_only`)."""

    def __init__(self, path: Path, log_content: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.log_content = log_content
        self._lock = threading.Lock()

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record if self.log_content else metadata_only(record), ensure_ascii=False, sort_keys=True) + "\n"
        with self._lock, self.path.open("a", encoding="utf-8") as out:
            out.write(line)
            out.flush()


def metadata_only(record: dict[str, Any]) -> dict[str, Any]:
    """A record without anything a request or an answer said: no model output or error text, reasons
    as their codes (an invalid answer's reason quotes its values, a detail the request's fields)."""
    kept = dict(record)
    for side in ("slm", "hosted"):
        if isinstance(kept.get(side), dict):
            kept[side] = {key: value for key, value in kept[side].items() if key not in ("output", "error")}
            kept[side]["failed"] = "error" in record[side]
    if kept.get("reason"):
        kept["reason"] = kept["reason"].split(":", 1)[0]
    if isinstance(kept.get("shadow"), dict) and kept["shadow"].get("reason"):
        kept["shadow"] = {**kept["shadow"], "reason": kept["shadow"]["reason"].split(":", 1)[0]}
    if isinstance(kept.get("not_swappable"), dict):
        kept["not_swappable"] = {"reason": kept["not_swappable"].get("reason")}
    return kept
