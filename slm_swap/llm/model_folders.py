"""The folders this project writes models into: the marker file that says a folder is complete and
ours (written last, listing the folder's files), and the refusal to replace a folder someone else
wrote, or one that holds a file we did not write."""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

from slm_swap.infra import json_input
from slm_swap.infra.errors import SlmSwapError
from slm_swap.infra.fileio import atomic_write_text
from slm_swap.infra.output_safety import refuse_foreign_folder

# Written last into a converted checkpoint: its presence means the directory is complete.
MARKER_FILE = "slm_swap_model.json"
MARKER_SCHEMA = 1
# What a conversion writes (save_pretrained of the model and tokenizer, and the marker): all a marker
# written before markers listed their folder's files can vouch for.
CHECKPOINT_FILES = frozenset({
    "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
    "chat_template.jinja", "special_tokens_map.json", "vocab.json", "merges.txt", "added_tokens.json", MARKER_FILE,
})


class ModelError(SlmSwapError):
    """The embedded model cannot be found, downloaded or converted. The message is one line.

    A SlmSwapError, so the CLI prints it as one line and exits 2 like any other user-facing error.
    """


def read_marker(path: Path) -> dict | None:
    """The marker of the model folder at `path`, or None when it has none (or an unreadable one)."""
    try:
        marker = json_input.loads((Path(path) / MARKER_FILE).read_bytes())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def write_marker(directory: Path, content: dict) -> None:
    """Mark `directory` complete: the marker holds `content`, the schema, the time, and the names of
    the files in it (what a later replacement may delete: anything else is someone else's)."""
    content = {
        "schema": MARKER_SCHEMA,
        **content,
        "files": sorted({*(entry.name for entry in Path(directory).iterdir()), MARKER_FILE}),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_text(Path(directory) / MARKER_FILE, json.dumps(content, indent=2) + "\n")


def files_written(path: Path, marker: dict) -> frozenset[str]:
    """The names the product wrote in the model folder at `path`, from its marker; a marker written
    before markers listed them vouches for the checkpoint files a conversion writes, and no others."""
    files = marker.get("files")
    if isinstance(files, list) and all(isinstance(name, str) for name in files):
        return frozenset(files)
    return CHECKPOINT_FILES


def refuse_foreign_dir(dest: Path, force: bool, allow_existing_checkpoint: bool = False, flag: str = "--dest") -> None:
    """Refuse to replace a directory unless it is absent, empty, or a model folder we wrote holding
    nothing but what we wrote: publishing deletes the old `dest`, and a mistyped path must not cost
    someone their files. `force` only lets one of our folders of another kind (e.g. the tiny model
    where the embedded one goes) be replaced; it never reaches a folder or file that is not ours."""
    marker = read_marker(dest) if Path(dest).is_dir() else None
    refuse_foreign_folder(dest, flag, None if marker is None else files_written(dest, marker),
                          f"a slm-swap model folder (no {MARKER_FILE})")
    if marker is None or force or allow_existing_checkpoint or marker.get("kind") == "embedded":
        return  # absent, empty, or ours (e.g. an older or different conversion): safe to replace
    raise ModelError(f"{flag} {dest}: holds the slm-swap {marker.get('kind')!r} model, not the embedded one; "
                     "pass --force to replace it")


def is_marked(path: Path) -> bool:
    """Whether `path` holds a model folder we wrote (for a publish that lost a race to another process:
    its folder is as complete as ours would be)."""
    return read_marker(path) is not None


def require_checkpoint(path: Path) -> None:
    """`SlmSwapError` (one line) unless `path` holds a Hugging Face checkpoint: what the local SLM, its
    evals and training load (SLM_MODEL_PATH)."""
    if not (Path(path) / "config.json").is_file():
        raise SlmSwapError(f"SLM_MODEL_PATH {path}: no checkpoint there (config.json missing); "
                           "run `slm-swap models fetch` for the embedded model")
