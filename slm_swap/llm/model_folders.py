"""The folders this project writes models into: the marker file that says a folder is complete and
ours, written last, and the refusal to replace a folder someone else wrote."""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path

from slm_swap.infra.errors import SlmSwapError

# Written last into a converted checkpoint: its presence means the directory is complete.
MARKER_FILE = "slm_swap_model.json"
MARKER_SCHEMA = 1


class ModelError(SlmSwapError):
    """The embedded model cannot be found, downloaded or converted. The message is one line.

    A SlmSwapError, so the CLI prints it as one line and exits 2 like any other user-facing error.
    """


def read_marker(path: Path) -> dict | None:
    """The marker of the model folder at `path`, or None when it has none (or an unreadable one)."""
    try:
        return json.loads((path / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return None


def write_marker(directory: Path, content: dict) -> None:
    """Mark `directory` complete: the marker holds `content`, the schema and the time."""
    content = {
        "schema": MARKER_SCHEMA,
        **content,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    tmp = directory / f".{MARKER_FILE}.tmp"
    tmp.write_text(json.dumps(content, indent=2) + "\n")
    os.replace(tmp, directory / MARKER_FILE)


def refuse_foreign_dir(dest: Path, force: bool, allow_existing_checkpoint: bool = False) -> None:
    """Refuse to replace a non-empty directory we did not write, unless forced.

    Publishing deletes the old ``dest``; a mistyped path must not cost someone their files.
    """
    if force or not dest.exists():
        return
    if dest.is_dir() and not any(dest.iterdir()):
        return
    marker = read_marker(dest)
    if marker is not None and (allow_existing_checkpoint or marker.get("kind") == "embedded"):
        # Ours (e.g. an older or different conversion): safe to replace.
        return
    raise ModelError(f"{dest} exists and is not a slm-swap model directory; remove it or pass force=True")


def is_marked(path: Path) -> bool:
    """Whether `path` holds a model folder we wrote (for a publish that lost a race to another process:
    its folder is as complete as ours would be)."""
    return read_marker(path) is not None
