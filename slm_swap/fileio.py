"""Small file helpers: atomic writes, JSONL with row-numbered errors, content hashes.

Everything the tool writes goes through `atomic_write_text` (temporary file, then rename) so an
interrupted run never leaves a half-written result behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

from slm_swap.errors import SlmSwapError


def canonical_json(value: Any) -> str:
    """Sorted keys, compact separators, unicode kept: the form every exact-match metric compares."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def jsonl_text(rows: Iterable[Any]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def read_json(path: Path, what: str = "file") -> Any:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SlmSwapError(f"{path}: no such {what}") from None
    except (IsADirectoryError, UnicodeDecodeError) as exc:
        raise SlmSwapError(f"{path}: cannot read {what}: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SlmSwapError(f"{path}: not valid JSON ({exc})") from None


def read_jsonl(path: Path, what: str = "file") -> list[Any]:
    """Parse a JSONL file; a bad line is reported as `path:line`."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise SlmSwapError(f"{path}: no such {what}") from None
    except (IsADirectoryError, UnicodeDecodeError) as exc:
        raise SlmSwapError(f"{path}: cannot read {what}: {exc}") from None
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise SlmSwapError(f"{path}:{number}: not valid JSON ({exc})") from None
    return rows


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
