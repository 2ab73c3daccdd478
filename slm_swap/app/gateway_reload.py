"""Hot reload: the gateway follows the registry of promoted adapters without a restart.

A promotion (the flywheel, or `slm-swap gateway promote`) rewrites the registry file. The reloader
notices the change, loads the promoted adapter into the in-process engine under a new name
(`<track>-v<version>`; the engine's worker loads it between two batches, and the name is served only
once the adapter is whole), installs the confidence gate promoted with it under that name, then points
the track at that name. Requests in flight finish on the adapter (and gate) they started with, which
stays loaded; the next ones use the new pair. A promotion without a gate keeps the track's gate, with
a warning: it was calibrated for another model.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from slm_swap.evaluation.calibrate import Policy

POLL_S = 1.0


class Promotion(Protocol):
    """What the reloader needs of a promotion (`registry.PromotedAdapter` is one)."""

    @property
    def version(self) -> int: ...

    @property
    def adapter(self) -> Path: ...

    def gate(self) -> Policy | None: ...


def served_name(track: str, promotion: Promotion) -> str:
    return f"{track}-v{promotion.version}"


class AdapterReloader:
    """Polls `registry_path`; `load_promoted(path)` reads it ({track: Promotion}); `add_adapter(name,
    path)` loads an adapter into the engine; `models` (track -> model name) and `gates` (model name ->
    confidence gate) are the gateway's own maps (`gateway.SlmEngine`)."""

    def __init__(self, registry_path: Path, load_promoted: Callable[[Path], dict[str, Promotion]],
                 add_adapter: Callable[[str, Path], None], models: MutableMapping[str, str],
                 gates: MutableMapping[str, Policy], poll_s: float = POLL_S):
        self.registry_path = Path(registry_path)
        self.load_promoted, self.add_adapter, self.models, self.poll_s = load_promoted, add_adapter, models, poll_s
        self.gates = gates
        self._seen: tuple[int, int, int] | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def check_once(self) -> list[str]:
        """Apply a changed registry now; the tracks switched. A bad registry or adapter is one warning
        line, and the track keeps serving what it served."""
        try:
            stat = self.registry_path.stat()
        except FileNotFoundError:
            return []
        stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)  # every registry write is a rename: a new inode
        if stamp == self._seen:
            return []
        self._seen = stamp
        try:
            promoted = self.load_promoted(self.registry_path)
        except Exception as exc:  # noqa: BLE001 - keep serving; say why once per change of the file
            print(f"warning: gateway: registry {self.registry_path} not applied: {exc}", file=sys.stderr, flush=True)
            return []
        switched = []
        for track, promotion in promoted.items():
            name = served_name(track, promotion)
            if track not in self.models or self.models[track] == name:
                continue
            try:
                gate = promotion.gate()
                self.add_adapter(name, promotion.adapter)
            except Exception as exc:  # noqa: BLE001
                print(f"warning: gateway: track {track} keeps {self.models[track]!r}: adapter v{promotion.version} "
                      f"{promotion.adapter} did not load: {exc}", file=sys.stderr, flush=True)
                continue
            if gate is None and (gate := self.gates.get(self.models[track])) is not None:
                print(f"warning: gateway: track {track} v{promotion.version} was promoted without a confidence gate; "
                      f"it keeps {gate.path} (threshold {gate.threshold}), calibrated for "
                      f"{gate.adapter or 'the base model'}", file=sys.stderr, flush=True)
            if gate is not None:
                self.gates[name] = gate  # before the switch: a request never sees the name without its gate
            self.models[track] = name  # one assignment: each request reads the map once
            switched.append(track)
            threshold = f"confidence gate >= {gate.threshold}" if gate is not None else "no confidence gate"
            print(f"gateway: track {track} now served by promoted adapter v{promotion.version} ({promotion.adapter}), "
                  f"{threshold}", flush=True)
        return switched

    def start(self) -> AdapterReloader:
        def poll() -> None:
            while not self._stopping.wait(self.poll_s):
                self.check_once()

        self._thread = threading.Thread(target=poll, name="gateway-reload", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(10)
