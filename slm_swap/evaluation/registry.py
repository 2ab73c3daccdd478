"""The registry of promoted adapters: per track, the adapter the gateway serves and every promotion
before it, in one small JSON file beside the gateway's records.

    registry = load_registry(DEFAULT_REGISTRY)          # absent file: nothing promoted yet
    entry = promoted_adapter(registry, "toolcall")      # PromotedAdapter(version=3, adapter=Path(...), ...) or None
    load_promoted(DEFAULT_REGISTRY)                     # {track: PromotedAdapter}: what the gateway's reloader reads

Each promotion is a new entry with the track's next version number, holding the adapter folder,
its manifest, hashes of its config and weights, the metrics summary it was promoted on, the gate's
decision, whether it was forced, and the time. The file is rewritten whole through a temporary file
and a rename, under a lock against a second writer, so a reader sees the old registry or the new
one, never half of either; and the adapter folder is checked to be whole (manifest for this track,
config, weights whose safetensors header covers the file) before the registry may point at it.
A change is cheap to detect: every write is a new file (new inode and mtime), and a track's
promoted `version` only grows.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from slm_swap.core.tracks import get_track
from slm_swap.evaluation.calibrate import Policy, policy_from_data
from slm_swap.infra.config import DEFAULT_GATEWAY_RECORDS
from slm_swap.infra.errors import SlmSwapError
from slm_swap.infra.fileio import read_json, remove_stale_temps, sha256_file, write_json
from slm_swap.train.manifest import MANIFEST

DEFAULT_REGISTRY = DEFAULT_GATEWAY_RECORDS.parent / "registry.json"
REGISTRY_FORMAT = 1
ADAPTER_CONFIG = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")  # PEFT's, newest format first


@dataclass(frozen=True)
class PromotedAdapter:
    """One promotion of one track. `version` and `adapter` are what the gateway's reloader needs."""

    track: str
    version: int
    adapter: Path
    manifest: dict[str, Any]
    files: dict[str, str]  # adapter config and weights -> sha256, as they were when promoted
    metrics: dict[str, Any] | None  # the candidate's MetricsSummary.as_dict(); None: forced without metrics
    decision: dict[str, Any] | None  # PromotionDecision.as_dict(); None: forced without a gate
    forced: bool
    promoted_at: str
    # The gateway's confidence gate calibrated for this adapter (the policy file's content, and where
    # that file was): switched with the adapter in one registry write. None: promoted without one.
    policy: dict[str, Any] | None = None
    policy_file: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"track": self.track, "version": self.version, "adapter": str(self.adapter), "manifest": self.manifest,
                "files": self.files, "metrics": self.metrics, "decision": self.decision, "forced": self.forced,
                "promoted_at": self.promoted_at, "policy": self.policy, "policy_file": self.policy_file}

    def gate(self) -> Policy | None:
        """The confidence gate promoted with this adapter, or None."""
        if self.policy is None:
            return None
        return policy_from_data(self.policy, Path(self.policy_file or "policy"),
                                where=f"the policy of {self.track} v{self.version} in the registry")

    @classmethod
    def from_dict(cls, data: Any, where: str) -> PromotedAdapter:
        if not isinstance(data, dict):
            raise SlmSwapError(f"{where}: a promotion must be an object")
        kinds = {"track": str, "version": int, "adapter": str, "manifest": dict, "files": dict, "forced": bool,
                 "promoted_at": str, "metrics": (dict, type(None)), "decision": (dict, type(None))}
        for key, kind in kinds.items():
            if not isinstance(data.get(key), kind) or (kind is int and isinstance(data[key], bool)):
                raise SlmSwapError(f"{where}: bad or missing {key!r} in a promotion")
        # Optional: registries written before gates were promoted with their adapters lack them.
        for key, kind in {"policy": (dict, type(None)), "policy_file": (str, type(None))}.items():
            if not isinstance(data.get(key), kind):
                raise SlmSwapError(f"{where}: bad {key!r} in a promotion")
        if data["version"] < 1:
            raise SlmSwapError(f"{where}: 'version' must be >= 1, got {data['version']}")
        return cls(track=data["track"], version=data["version"], adapter=Path(data["adapter"]),
                   manifest=data["manifest"], files=data["files"], metrics=data["metrics"], decision=data["decision"],
                   forced=data["forced"], promoted_at=data["promoted_at"], policy=data.get("policy"),
                   policy_file=data.get("policy_file"))


@dataclass(frozen=True)
class Registry:
    """Every track's promotions, oldest first; the last one is the promoted adapter."""

    path: Path
    history: dict[str, list[PromotedAdapter]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"format": REGISTRY_FORMAT,
                "tracks": {track: {"promoted": entries[-1].as_dict(), "history": [e.as_dict() for e in entries]}
                           for track, entries in sorted(self.history.items()) if entries}}


def promoted_adapter(registry: Registry, track: str) -> PromotedAdapter | None:
    """The adapter the track serves (its latest promotion), or None: the base model serves it."""
    entries = registry.history.get(track)
    return entries[-1] if entries else None


def load_promoted(path: Path) -> dict[str, PromotedAdapter]:
    """{track: promoted adapter} for every track with one: what the gateway's reloader reads."""
    registry = load_registry(path)
    return {track: entries[-1] for track, entries in registry.history.items() if entries}


def registry_stamp(path: Path) -> tuple[int, int, int] | None:
    """(inode, mtime_ns, size) of the file, None when absent: a rename gives each write a new inode,
    so a changed stamp is the cue to `load_registry` again (even where mtime is coarse)."""
    try:
        stat = Path(path).stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def load_registry(path: Path) -> Registry:
    """The registry at `path` (absent: empty). A file that is not one is one line naming it."""
    path = Path(path)
    if not path.exists():
        return Registry(path)
    data = read_json(path, "promotion registry")
    where = f"{path}: not a promotion registry"
    if not isinstance(data, dict) or data.get("format") != REGISTRY_FORMAT or not isinstance(data.get("tracks"), dict):
        raise SlmSwapError(f"{where} (expected an object with format {REGISTRY_FORMAT} and 'tracks')")
    history = {}
    for track, record in data["tracks"].items():
        try:
            get_track(track)
        except SlmSwapError as exc:
            raise SlmSwapError(f"{where} ({exc})") from None
        if not isinstance(record, dict) or not isinstance(record.get("history"), list) or not record["history"]:
            raise SlmSwapError(f"{where} (track {track!r} needs a non-empty 'history' list)")
        entries = [PromotedAdapter.from_dict(entry, f"{where} (track {track!r})") for entry in record["history"]]
        versions = [entry.version for entry in entries]
        if any(entry.track != track for entry in entries) or versions != sorted(set(versions)):
            raise SlmSwapError(f"{where} (track {track!r}: history out of order or of another track)")
        if PromotedAdapter.from_dict(record.get("promoted"), f"{where} (track {track!r})") != entries[-1]:
            raise SlmSwapError(f"{where} (track {track!r}: 'promoted' is not the last entry of its history)")
        history[track] = entries
    return Registry(path, history)


def check_adapter_folder(adapter: Path, track: str) -> tuple[dict[str, Any], dict[str, str]]:
    """(manifest, {file: sha256}) of a whole adapter trained for `track`; anything less is one line.
    Whole: its manifest, its config, and weights whose safetensors header covers the whole file (a
    copy or publish cut short fails here, before the registry may point at it)."""
    adapter = Path(adapter)
    if not adapter.is_dir():
        raise SlmSwapError(f"--adapter {adapter}: no such adapter folder")
    if not (adapter / MANIFEST).is_file():
        raise SlmSwapError(f"--adapter {adapter}: not an adapter slm-swap trained (no {MANIFEST})")
    manifest = read_json(adapter / MANIFEST, "adapter manifest")
    if not isinstance(manifest, dict):
        raise SlmSwapError(f"{adapter / MANIFEST}: not an adapter manifest (expected a JSON object)")
    if manifest.get("track") != track:
        raise SlmSwapError(f"--adapter {adapter}: trained for track {manifest.get('track')!r}, not {track!r}")
    weights = next((adapter / name for name in WEIGHT_FILES if (adapter / name).is_file()), None)
    if not (adapter / ADAPTER_CONFIG).is_file() or weights is None:
        raise SlmSwapError(f"--adapter {adapter}: not a whole adapter (needs {ADAPTER_CONFIG} and one of "
                           f"{', '.join(WEIGHT_FILES)})")
    read_json(adapter / ADAPTER_CONFIG, "adapter config")
    if weights.suffix == ".safetensors":
        _check_safetensors(weights)
    return manifest, {path.name: sha256_file(path) for path in (adapter / ADAPTER_CONFIG, weights)}


def _check_safetensors(path: Path) -> None:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as weights:
            weights.keys()
    except (SafetensorError, OSError) as exc:
        raise SlmSwapError(f"{path}: not whole adapter weights: {' '.join(str(exc).split())}") from None


def verify_adapter(entry: PromotedAdapter) -> None:
    """The promoted folder still holds what was promoted (a retrain into the same folder, or a
    deleted file, is one line): for a reader about to load it."""
    for name, digest in entry.files.items():
        path = entry.adapter / name
        if not path.is_file() or sha256_file(path) != digest:
            raise SlmSwapError(f"{path}: changed or gone since track {entry.track} promoted it as v{entry.version}")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One writer at a time (a flywheel round and a promotion by hand): a read-modify-write of the
    registry holds an exclusive lock on `<registry>.lock`. Readers need no lock: the file is renamed in."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def record_promotion(path: Path, track: str, adapter: Path, *, metrics: dict[str, Any] | None,
                     decision: dict[str, Any] | None, forced: bool, policy_file: Path | None = None) -> PromotedAdapter:
    """Append a promotion of `adapter` for `track` with the track's next version and make it the one
    served, with its confidence gate when `policy_file` (calibrated for this very adapter) is given; the
    adapter and the policy are checked first, and the registry written atomically last."""
    path, adapter = Path(path), Path(adapter).resolve()
    get_track(track)
    manifest, files = check_adapter_folder(adapter, track)
    policy = _checked_policy(Path(policy_file), track, adapter) if policy_file is not None else None
    with _locked(path):
        remove_stale_temps(path)  # a writer killed mid-write leaves its temporary file
        registry = load_registry(path)
        entries = registry.history.get(track, [])
        entry = PromotedAdapter(track=track, version=entries[-1].version + 1 if entries else 1, adapter=adapter,
                                manifest=manifest, files=files, metrics=metrics, decision=decision, forced=forced,
                                promoted_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), policy=policy,
                                policy_file=str(policy_file) if policy_file is not None else None)
        write_json(path, Registry(path, {**registry.history, track: [*entries, entry]}).as_dict())
    return entry


def _checked_policy(policy_file: Path, track: str, adapter: Path) -> dict[str, Any]:
    """The content of a policy file calibrated for `adapter` on `track`; anything else is one line."""
    data = read_json(policy_file, "policy file")
    policy = policy_from_data(data, policy_file)
    if policy.track != track:
        raise SlmSwapError(f"--policy {policy_file}: calibrated for track {policy.track!r}, not {track!r}")
    if not same_folder(policy.adapter, adapter):
        raise SlmSwapError(f"--policy {policy_file}: calibrated for {policy.adapter or 'the base model'}, not the "
                           f"adapter {adapter} (run `slm-swap gateway calibrate --adapter {adapter}`)")
    return data


def same_folder(a: str | Path | None, b: Path) -> bool:
    """Whether two spellings of a folder are one folder (a relative one taken from here)."""
    return a is not None and os.path.realpath(a) == os.path.realpath(b)
