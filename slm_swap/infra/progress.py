"""Progress of long work: a bar in a terminal, or a line every so often where a bar cannot show.

Prefect's run logs capture printed lines (tasks run with `log_prints=True`), not a bar redrawn on
stderr, so the pipeline asks for `lines`: examples done of total, the rate and the time left.
"""

from __future__ import annotations

import time
from typing import Callable, Literal

from tqdm import tqdm

from slm_swap.infra.errors import SlmSwapError

Progress = Literal["bar", "lines", "off"]
LINE_EVERY_S = 15.0


class ProgressLines:
    """`update`/`close` like tqdm's, written as a line at the start, every `every_s` and at the end."""

    def __init__(self, label: str, total: int, initial: int = 0, every_s: float = LINE_EVERY_S,
                 clock: Callable[[], float] = time.monotonic, write: Callable[[str], object] | None = None):
        self.label, self.total, self.initial, self.done = label, total, initial, initial
        self.every_s, self.clock = every_s, clock
        self.write = write or (lambda line: print(line, flush=True))
        self.started = self.last = clock()
        self.written_at = initial
        self.write(self.line())

    def line(self) -> str:
        text = f"{self.label}: {self.done}/{self.total} examples"
        elapsed, finished_here = self.clock() - self.started, self.done - self.initial
        if finished_here and elapsed > 0:
            rate = finished_here / elapsed
            text += f", {rate:.2f}/s, about {_duration((self.total - self.done) / rate)} left"
        return text

    def update(self, n: int = 1) -> None:
        self.done += n
        now = self.clock()
        if now - self.last >= self.every_s or self.done == self.total:
            self.last, self.written_at = now, self.done
            self.write(self.line())

    def close(self) -> None:
        if self.written_at != self.done:
            self.written_at = self.done
            self.write(self.line())


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def progress_meter(mode: Progress, label: str, total: int, initial: int = 0):
    """A tqdm bar (`bar`, or nothing for `off`) or `ProgressLines` (`lines`)."""
    if mode == "lines":
        return ProgressLines(label, total, initial)
    if mode in ("bar", "off"):
        return tqdm(total=total, initial=initial, unit="ex", desc=label, disable=mode == "off")
    raise SlmSwapError(f"unknown progress mode {mode!r}: expected bar, lines or off")
