"""Small file helpers: atomic writes, JSON and JSONL read through `json_input` with errors naming the
file and line, content hashes.

Everything the tool writes goes through `atomic_write_text` (temporary file, then rename) so an
interrupted run never leaves a half-written result behind; a whole folder (a model checkpoint) is
built in `staging_dir` and swapped in by `publish_dir` for the same reason.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from slm_swap.infra import json_input
from slm_swap.infra.errors import SlmSwapError


def canonical_json(value: Any) -> str:
    """Sorted keys, compact separators, unicode kept: the form every exact-match metric compares."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def naming_path(path: Path) -> Iterator[None]:
    """Give an OSError raised inside without a file name (a write or fsync on a full disk: "No space
    left on device") the name of `path`, so the one error line says which file could not be written."""
    try:
        yield
    except OSError as exc:
        if not exc.filename:
            exc.filename = str(path)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file, and a
    failed write (a full disk) leaves the old file as it was and no temporary file behind."""
    path = Path(path)
    with naming_path(path):
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
        return json_input.loads(text)
    except json_input.JsonInputError as exc:
        raise SlmSwapError(f"{path}: {exc}") from None


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
            rows.append(json_input.loads(line))
        except json_input.JsonInputError as exc:
            raise SlmSwapError(f"{path}:{number}: {exc}") from None
    return rows


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_writable_file(path: Path, what: str, *, leave_nothing: bool = False) -> None:
    """Refuse, before any work is done, an output file that cannot be written: a folder, a path
    under a file, or a folder that takes no new file (read-only, full). Probed by writing, since
    permission bits say nothing for root or read-only mounts. `leave_nothing`: see `check_writable_dir`."""
    path = Path(path)
    if path.is_dir():
        raise SlmSwapError(f"{what} {path}: is a folder, not a file")
    check_writable_dir(path.parent, what, shown=path, leave_nothing=leave_nothing)


def check_writable_dir(folder: Path, what: str, shown: Path | None = None, *, leave_nothing: bool = False) -> None:
    """Create `folder` if needed and check a file can be written in it (see `check_writable_file`).
    `leave_nothing`: remove again the folders created for the probe, for checks made long before
    the write (a flow's up-front checks), so that a run refused later leaves nothing behind. Not for
    a check just before writing: a folder removed there could vanish under a parallel writer."""
    folder, shown = Path(folder), shown or Path(folder)
    blocking = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise SlmSwapError(f"{what} {shown}: {blocking} is a file, not a folder")
    created = [p for p in (folder, *folder.parents) if not p.exists()] if leave_nothing else []
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
    finally:
        for path in created:  # deepest first
            with contextlib.suppress(OSError):
                path.rmdir()


def remove_stale_temps(path: Path) -> None:
    """Delete temporary files `atomic_write_bytes` left beside `path` when a process was killed mid-write."""
    path = Path(path)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        stale.unlink(missing_ok=True)


def current_umask() -> int:
    """The process umask, read without changing it. `os.umask` can only read by setting, and a
    umask of 0 even for an instant lets files other threads create meanwhile come out world-writable."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022  # no /proc (macOS): the usual default; only the modes of files we publish depend on it


@contextlib.contextmanager
def staging_dir(dest: Path) -> Iterator[Path]:
    """A fresh hidden sibling of `dest` to build a folder in, removed on exit unless it was published
    (`publish_dir`). A sibling (same filesystem) is what makes the final rename atomic."""
    dest = Path(dest)
    with naming_path(dest.parent):
        dest.parent.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        # mkdtemp makes it private (0700); the published folder should read like any other.
        os.chmod(path, 0o777 & ~current_umask())
        with naming_path(path):  # a save into the staging folder that fails on a full disk names it
            yield path
    finally:
        # After a successful publish the staging path no longer exists; otherwise clean up.
        shutil.rmtree(path, ignore_errors=True)


def publish_dir(staging: Path, dest: Path, accept_concurrent: Callable[[Path], bool]) -> None:
    """Move the complete `staging` folder to `dest`, replacing any old one.

    The old folder is first renamed aside, so `dest` is always either the old complete folder,
    absent for an instant, or the new complete one - never a mixture. When another process
    publishes `dest` in between, its folder is kept if `accept_concurrent(dest)` says it is as
    complete as ours; otherwise the rename's error is raised.
    """
    # Some writers (save_pretrained's model.safetensors) create files as 0600 via a temp file: make
    # the folder's files readable like any others, as the umask allows.
    for path in staging.iterdir():
        if path.is_file():
            os.chmod(path, 0o666 & ~current_umask())
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(dest, old)
    try:
        os.rename(staging, dest)
    except OSError:
        if not dest.exists():
            # The rename itself failed: put the old folder back and report.
            if old is not None:
                os.rename(old, dest)
                old = None
            raise
        if not accept_concurrent(dest):
            raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
