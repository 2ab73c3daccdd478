"""Work on a bounded number of threads, results in the order they finish.

The hosted client's requests and capture's agent runs both wait on the network, so threads are
what they need. When the caller stops early (an error budget, Ctrl-C) no new item starts, and the
items in flight are abandoned rather than awaited: a blocked HTTP read cannot be interrupted, and a
thread pool would hold the command (even its exit) until each one ended, up to timeout x retries.
So the threads are daemons, not a `ThreadPoolExecutor`.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Iterator, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


def in_threads(items: list[Item], work: Callable[[int, Item], Result], concurrency: int, name: str) -> Iterator[Result]:
    """`work(index, item)` for every item on up to `concurrency` daemon threads; yields results as
    they finish. An exception from `work` is a bug, not an outcome: it is raised to the caller."""
    pending: queue.SimpleQueue[tuple[int, Item]] = queue.SimpleQueue()
    for entry in enumerate(items):
        pending.put(entry)
    finished: queue.SimpleQueue[tuple[bool, Result | BaseException]] = queue.SimpleQueue()
    stop = threading.Event()

    def worker() -> None:
        while not stop.is_set():
            try:
                index, item = pending.get_nowait()
            except queue.Empty:
                return
            try:
                finished.put((True, work(index, item)))
            except BaseException as exc:
                finished.put((False, exc))
                return

    for number in range(min(concurrency, len(items))):
        threading.Thread(target=worker, name=f"{name}-{number}", daemon=True).start()
    try:
        for _ in items:
            ok, outcome = finished.get()
            if not ok:
                raise outcome
            yield outcome
    finally:
        stop.set()
