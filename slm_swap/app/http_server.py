"""What every slm-swap HTTP server shares (`serve`, `gateway`): OpenAI's error shape, the API-key
check, and the listening socket bound before anything slow. Kept apart from `serve` so the gateway
does not import the local model's stack (torch) to reuse them.
"""

from __future__ import annotations

import errno
import hmac
import socket

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from slm_swap.infra.errors import SlmSwapError


def openai_error(status: int, message: str, kind: str, code: str | None = None, param: str | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind, "param": param, "code": code}})


class RequireApiKey:
    """Answers 401 to a request without the key (`Authorization: Bearer KEY`, or Azure's `api-key`).
    Plain ASGI, not `@app.middleware("http")`: starlette's BaseHTTPMiddleware wraps `receive` so that
    `request.is_disconnected()` never sees a client leave (starlette discussion #2094), and the
    server would decode to the end for clients long gone."""

    def __init__(self, app: ASGIApp, api_key: str):
        self.app = app
        self.api_key = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = Headers(scope=scope)
            bearer = headers.get("authorization", "")
            given = bearer[7:] if bearer.lower().startswith("bearer ") else headers.get("api-key", "")
            if not hmac.compare_digest(given.encode(), self.api_key):
                response = openai_error(401, "Invalid or missing API key.", "invalid_request_error", "invalid_api_key")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port and listening, or one line saying why not. Bound before the model
    loads, so a port in use is refused at once, and handed to uvicorn, so nothing can take the port
    in between. Port 0: any free port (the socket says which)."""
    if not 0 <= port <= 65535:
        raise SlmSwapError(f"--port {port}: not a TCP port (0-65535)")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as uvicorn reads --host
    try:
        address = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)[0][4]
    except (socket.gaierror, UnicodeError) as exc:
        raise SlmSwapError(f"--host {host}: cannot be resolved ({exc})") from None
    where = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
    # IPPROTO_TCP, not 0: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on sockets that say
    # TCP, and with it on, every answer on a kept-alive connection waits ~40 ms for the client's ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restarts reuse the port at once
        sock.bind(address)
        sock.listen(2048)  # uvicorn's default backlog; listening now keeps any other server off the port
    except OSError as exc:
        sock.close()
        reasons = {
            errno.EADDRINUSE: "already in use (another server?): choose another --port",
            errno.EACCES: "permission denied (ports below 1024 need privileges)",
            errno.EADDRNOTAVAIL: "not an address of this machine",
        }
        raise SlmSwapError(f"cannot listen on {where}: {reasons.get(exc.errno, exc.strerror or exc)}") from None
    return sock
