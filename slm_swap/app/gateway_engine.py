"""The gateway's default SLM engine: `serve`'s own app, loaded inside the gateway's process.

The gateway talks to every SLM engine the same way, over OpenAI's HTTP API, so the in-process engine is
`serve.create_app` (its model worker, batching, context and body limits, adapters by model name) on a
private 127.0.0.1 port with a random key that never leaves this process. One code path for the SLM,
whether it is this engine, a separate `slm-swap serve`, or vLLM on a GPU box (`SLM_BASE_URL`).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from slm_swap.app.http_server import listening_socket
from slm_swap.app.serve import create_app, discover_adapters
from slm_swap.infra.errors import SlmSwapError
from slm_swap.llm.local import LocalModel, check_adapter

BASE_MODEL_NAME = "base"  # the name the base model answers to, for a track without an adapter
_START_TIMEOUT_S = 30.0
_LOAD_TIMEOUT_S = 600.0  # an adapter load waits for the batch being decoded, then loads


@dataclass(frozen=True)
class InProcessEngine:
    url: str
    api_key: str
    models: dict[str, str]  # track -> the model name that serves it (its adapter, else the base model)
    identity: str
    model_identity: str  # the loaded model's (`LocalModel.identity`): what a policy was calibrated on
    stop: Callable[[], None]
    add_adapter: Callable[[str, Path], None]  # load one more adapter under a name, between batches (blocks until loaded)


def track_adapters(adapters_dir: Path | None, tracks: Iterable[str]) -> dict[str, Path]:
    """The `adapter_<track>/` folders of `adapters_dir` for the gateway's tracks; none when the folder
    does not exist yet (the main job has not trained: the base model answers)."""
    if adapters_dir is None or not Path(adapters_dir).exists():
        return {}
    found = discover_adapters(Path(adapters_dir))
    return {track: path for track, path in found.items() if track in set(tracks)}


def start_in_process_engine(model_path: Path, adapters: dict[str, Path], tracks: Iterable[str],
                            batch_size: int = 8, precision: str = "fp32", compile: bool = False) -> InProcessEngine:
    """Load the model and the tracks' adapters, and serve them on a private loopback port in a thread
    (`precision` and `compile` as `LocalModel` takes them)."""
    import uvicorn

    for path in adapters.values():
        check_adapter(path)  # one line naming the folder, before minutes of loading
    model = LocalModel(Path(model_path), batch_size=batch_size, precision=precision, compile=compile)
    for name, path in adapters.items():
        model.add_adapter(name, path)
    api_key = secrets.token_urlsafe(24)
    app = create_app(model, BASE_MODEL_NAME, api_key=api_key, batch_size=batch_size)
    sock = listening_socket("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="gateway-slm-engine", daemon=True)
    thread.start()
    deadline = time.monotonic() + _START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise SlmSwapError("the in-process SLM engine did not start")
        time.sleep(0.01)

    def stop() -> None:
        server.should_exit = True
        thread.join(_START_TIMEOUT_S)
        sock.close()

    def add_adapter(name: str, path: Path) -> None:
        check_adapter(Path(path))
        app.state.worker.call(lambda: model.add_adapter(name, Path(path))).result(timeout=_LOAD_TIMEOUT_S)

    models = {track: (track if track in adapters else BASE_MODEL_NAME) for track in tracks}
    described = ", ".join(f"{track}={path}" for track, path in adapters.items()) or "no adapter"
    return InProcessEngine(f"http://127.0.0.1:{sock.getsockname()[1]}/v1", api_key, models,
                           f"{model.identity} in process ({described})", model.identity, stop, add_adapter)
