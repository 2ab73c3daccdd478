"""The Langfuse SDK's failed deliveries: it logs them rather than raising, so its log records are
collected here (not printed) and a flush reports its own in one line."""

from __future__ import annotations

import logging
import threading

import httpx


class Problems(logging.Handler):
    """The `langfuse` and `opentelemetry` loggers' records, kept instead of printed (an application
    that configures logging still gets them), by the thread that logged them, so a flush reports its
    own client's threads and worker only. Errors mean something was not delivered; the last warning
    or failed HTTP status explains them. Threads making this package's own calls (they raise, and the
    caller reports) are skipped."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.own = threading.local()
        self._records: list[tuple[int | None, bool, str]] = []  # (thread, is an error, text)

    def _add(self, thread: int | None, error: bool, text: str) -> None:
        self._records = (self._records + [(thread, error, " ".join(text.split())[:300])])[-500:]

    def emit(self, record: logging.LogRecord) -> None:
        if not getattr(self.own, "active", False):
            try:
                text = record.getMessage()
            except Exception:  # a malformed record is still a problem
                text = str(record.msg)
            self._add(record.thread, record.levelno >= logging.ERROR, text)

    def response(self, response: httpx.Response) -> None:  # the REST client's response hook
        method = response.request.method
        if response.status_code >= 400 and not (response.status_code == 404 and method == "GET"):
            with self.lock:
                self._add(threading.get_ident(), False, f"HTTP {response.status_code} from {method} {response.request.url.path}")

    def drain(self, threads: set[int]) -> str | None:
        with self.lock:
            mine = [record for record in self._records if record[0] in threads]
            self._records = [record for record in self._records if record[0] not in threads]
        errors = [text for _, error, text in mine if error]
        context = next((text for _, error, text in reversed(mine) if not error), None)
        return f"{len(errors)} SDK error(s), last: {errors[-1]}" + (f" (after: {context})" if context else "") \
            if errors else None


PROBLEMS = Problems()  # the process's, on both SDK loggers from import on
for _name in ("langfuse", "opentelemetry"):
    logging.getLogger(_name).addHandler(PROBLEMS)
