"""Small file helpers: atomic writes, JSONL with row-numbered errors, content hashes.

Everything the tool writes goes through `atomic_write_text` (temporary file, then rename) so an
interrupted run never leaves a half-written result behind.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

from slm_swap.infra.errors import SlmSwapError


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


def read_lines(path: Path, what: str = "file") -> list[str]:
    """A text file's lines, or one line saying why it cannot be read."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise SlmSwapError(f"{path}: no such {what}") from None
    except (IsADirectoryError, UnicodeDecodeError) as exc:
        raise SlmSwapError(f"{path}: cannot read {what}: {exc}") from None


def read_jsonl(path: Path, what: str = "file") -> list[Any]:
    """Parse a JSONL file; a bad line is reported as `path:line`."""
    lines = read_lines(path, what)
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


def check_writable_file(path: Path, what: str) -> None:
    """Refuse, before any work is done, an output file that cannot be written: a folder, a path
    under a file, or a folder that takes no new file (read-only, full). Probed by writing, since
    permission bits say nothing for root or read-only mounts."""
    path = Path(path)
    if path.is_dir():
        raise SlmSwapError(f"{what} {path}: is a folder, not a file")
    check_writable_dir(path.parent, what, shown=path)


def check_writable_dir(folder: Path, what: str, shown: Path | None = None) -> None:
    """Create `folder` if needed and check a file can be written in it (see `check_writable_file`)."""
    folder, shown = Path(folder), shown or Path(folder)
    blocking = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise SlmSwapError(f"{what} {shown}: {blocking} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=folder)
        try:
            os.write(fd, b"\0")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        raise SlmSwapError(f"{what} {shown}: cannot write in {exc.filename or folder}: {exc.strerror}") from None


def remove_stale_temps(path: Path) -> None:
    """Delete temporary files `atomic_write_bytes` left beside `path` when a process was killed mid-write."""
    path = Path(path)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        stale.unlink(missing_ok=True)
