"""The shared scaffolding of the test servers: an HTTP server on a free 127.0.0.1 port, run on a
background thread for the length of a `with` block."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler

from slm_swap.trajectories.teacher import LoopbackHTTPServer


class LoopbackServer:
    """Subclasses implement `_handler()` (a `BaseHTTPRequestHandler` class) and call `super().__init__()`."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.server = LoopbackHTTPServer(("127.0.0.1", 0), self._handler())
        # A short poll interval: shutdown() waits up to one interval, and tests start many servers.
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02},
                                       name=type(self).__name__, daemon=True)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        raise NotImplementedError

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
