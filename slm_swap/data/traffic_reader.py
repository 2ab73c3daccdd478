"""The gateway's records appended since the last round, by a watermark kept beside the records file.

    batch = read_new_records(records_path, "toolcall")   # the complete lines after toolcall's watermark
    ...                                                  # the round's work
    commit(batch)                                        # that watermark moves past them, atomically

Each reader (a flywheel track) keeps its own watermark beside the records, `<records>.<reader>.watermark.json`,
so rounds of both tracks over one records file each see every record once. A watermark holds the byte offset after the last line consumed, the
number of lines before it (so an error names the file's own line number) and the sha256 of the
file's first line. A records file that was replaced, rotated or truncated (another first line, a
size below the offset, or no line ending just before it) is read again from its start, and the
batch says why in `restarted`. Only complete lines are read: a torn last line (a gateway killed
mid-write, or one still writing) is left for the next round. Reading never moves the watermark.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slm_swap.infra import json_input
from slm_swap.infra.errors import SlmSwapError
from slm_swap.infra.fileio import read_json, write_json

WATERMARK_KEYS = {"offset", "lines", "first_line_sha256"}


@dataclass(frozen=True)
class TrafficBatch:
    """The records read in one round, and where the reader's next round starts once `commit`ted."""

    records_path: Path
    reader: str  # whose watermark this batch moves
    records: list[dict[str, Any]]
    start: int  # byte offset the reading began at
    end: int  # byte offset after the last complete line read
    lines: int  # lines in the file before `end`
    first_line_sha256: str | None  # None while the file has no complete line
    restarted: str | None = None  # why the file was read from its start though a watermark was kept


def watermark_path(records_path: Path, reader: str) -> Path:
    records_path = Path(records_path)
    if not reader.isidentifier():
        raise SlmSwapError(f"watermark reader {reader!r}: expected a name such as a track")
    return records_path.with_name(f"{records_path.name}.{reader}.watermark.json")


def read_new_records(records_path: Path, reader: str) -> TrafficBatch:
    """The complete records after `reader`'s watermark (all of them without one, or after a rotation).
    A bad line: one line naming the file and line number. No records file yet: no records."""
    path = Path(records_path)
    mark = _load_watermark(path, reader)
    try:
        with path.open("rb") as handle:
            first = handle.readline()
            fingerprint = hashlib.sha256(first).hexdigest() if first.endswith(b"\n") else None
            size = handle.seek(0, os.SEEK_END)
            start, lines, restarted = _resume_point(mark, fingerprint, size, handle)
            handle.seek(start)
            data = handle.read(size - start)  # what is appended meanwhile waits for the next round
    except FileNotFoundError:
        gone = "the records file is gone" if mark and mark["offset"] else None
        return TrafficBatch(path, reader, [], 0, 0, 0, None, gone)
    except OSError as exc:
        raise SlmSwapError(f"gateway records {path}: {exc.strerror or exc}") from None
    complete = data[: data.rfind(b"\n") + 1]  # a torn last line is left for later
    records = parse_records(path, complete, first_number=lines + 1)
    return TrafficBatch(path, reader, records, start, start + len(complete), lines + complete.count(b"\n"), fingerprint,
                        restarted)


def commit(batch: TrafficBatch) -> None:
    """Move the reader's watermark past the batch's records (atomically): its next round reads after them."""
    write_json(watermark_path(batch.records_path, batch.reader), {
        "records": batch.records_path.name, "offset": batch.end, "lines": batch.lines,
        "first_line_sha256": batch.first_line_sha256})


def _resume_point(mark: dict[str, Any] | None, fingerprint: str | None, size: int, handle: Any) -> tuple[int, int, str | None]:
    """(offset, lines before it, why the file is read from the start or None)."""
    if mark is None or mark["offset"] == 0:
        return 0, 0, None
    if fingerprint != mark["first_line_sha256"]:
        return 0, 0, "the records file was replaced or rotated (its first line differs)"
    if size < mark["offset"]:
        return 0, 0, f"the records file was truncated ({size} bytes, the watermark is at {mark['offset']})"
    handle.seek(mark["offset"] - 1)
    if handle.read(1) != b"\n":
        return 0, 0, "the records file was rewritten (no line ends at the watermark)"
    return mark["offset"], mark["lines"], None


def _load_watermark(records_path: Path, reader: str) -> dict[str, Any] | None:
    path = watermark_path(records_path, reader)
    if not path.exists():
        return None
    mark = read_json(path, "watermark file")
    valid = (isinstance(mark, dict) and WATERMARK_KEYS <= set(mark)
             and all(isinstance(mark[key], int) and not isinstance(mark[key], bool) and mark[key] >= 0
                     for key in ("offset", "lines"))
             and isinstance(mark["first_line_sha256"], (str, type(None))))
    if not valid:
        raise SlmSwapError(f"{path}: not a watermark (offset, lines, first_line_sha256): delete it to read every "
                           "record again")
    return mark


def parse_records(path: Path, data: bytes, first_number: int = 1) -> list[dict[str, Any]]:
    """The gateway records in `data`, its complete lines only (what follows the last newline is a torn
    line, skipped); a bad line is one line naming `path` and its number (counted from `first_number`)."""
    records = []
    for number, line in enumerate(data.split(b"\n")[:-1], start=first_number):
        if not line.strip():
            continue
        try:
            record = json_input.loads(line)
        except json_input.JsonInputError as exc:
            raise SlmSwapError(f"{path}:{number}: {exc}") from None
        if not isinstance(record, dict):
            raise SlmSwapError(f"{path}:{number}: not a gateway record (a JSON object)")
        records.append(record)
    return records
