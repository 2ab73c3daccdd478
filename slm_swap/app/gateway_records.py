"""The gateway's records: one JSON line per request (`slm_swap/06_gateway/requests.jsonl` by default),
the capture shim's output. `--no-log-content` keeps only the metadata."""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

from slm_swap.data.traffic_reader import parse_records
from slm_swap.infra.errors import SlmSwapError


class RecordsFile:
    """One JSON line per request, appended whole under a lock and flushed: a kill leaves at most a
    torn last line, which `read_records` skips and the next gateway cuts off before appending (else its
    first line would be glued to the torn one). Opened per line, so the file can be moved away between
    requests. `log_content=False` (`--no-log-content`) keeps only the metadata (`metadata_only`)."""

    def __init__(self, path: Path, log_content: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.log_content = log_content
        self._lock = threading.Lock()
        if cut := cut_torn_tail(self.path):
            print(f"warning: {self.path}: cut a torn last record ({cut} bytes) left by a gateway that was killed mid-write",
                  file=sys.stderr)

    def append(self, record: dict[str, Any]) -> None:
        # Keys in the order given, not sorted: the flywheel rebuilds the SLM's prompt from the recorded
        # tools, and a tool's JSON in a different key order would be another prompt than the one served.
        line = json.dumps(record if self.log_content else metadata_only(record), ensure_ascii=False) + "\n"
        with self._lock, self.path.open("a", encoding="utf-8") as out:
            out.write(line)
            out.flush()


def metadata_only(record: dict[str, Any]) -> dict[str, Any]:
    """A record without anything a request or an answer said: no model output or error text, reasons
    as their codes (an invalid answer's reason quotes its values, a detail the request's fields)."""
    kept = {key: value for key, value in record.items() if key != "request"}  # the user's text and tools
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


def cut_torn_tail(path: Path) -> int:
    """Drop the bytes after the last newline (a line a kill left half-written); how many were dropped."""
    if not path.is_file():
        return 0
    with path.open("rb+") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        handle.seek(max(0, size - 1))
        if handle.read(1) == b"\n":
            return 0
        keep, block = size, 1 << 16
        while keep > 0:  # back to the last newline, a block at a time
            start = max(0, keep - block)
            handle.seek(start)
            found = handle.read(keep - start).rfind(b"\n")
            if found >= 0:
                keep = start + found + 1
                break
            keep = start
        handle.truncate(keep)
        return size - keep


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a gateway records file, a torn last line skipped; any other bad line is one
    line naming the file and line."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SlmSwapError(f"gateway records {path}: {exc.strerror or exc}") from None
    return parse_records(Path(path), data)
