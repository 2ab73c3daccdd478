"""`slm-swap serve` refuses a bad flag with one line and exit 2 before it loads the model: the port
(out of range, in use), the host, the adapters and the batch settings are all checked first."""

from __future__ import annotations

import socket

import pytest

from conftest import error_lines
from slm_swap.app import serve as serve_module
from slm_swap.app.cli import main


@pytest.fixture
def model_never_loads(monkeypatch, tmp_path):
    """A checkpoint path that exists, and a LocalModel that fails the test if anything loads it."""

    def refuse_to_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the flags were checked")

    monkeypatch.setattr(serve_module, "LocalModel", refuse_to_load)
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}")
    return checkpoint


@pytest.fixture
def port_in_use():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def refusal(capsys, *args: str) -> str:
    """The one error line of `slm-swap serve ARGS`, which must exit 2."""
    assert main(["serve", *args]) == 2
    captured = capsys.readouterr()
    assert "serving" not in captured.out
    lines = error_lines(captured.err)
    assert len(lines) == 1 and lines[0].startswith("slm-swap: error: "), captured.err
    return lines[0]


def test_a_port_out_of_range_is_refused(capsys, model_never_loads):
    line = refusal(capsys, "--model-path", str(model_never_loads), "--port", "99999")
    assert "--port 99999" in line


def test_a_port_in_use_is_refused_naming_host_and_port(capsys, model_never_loads, port_in_use):
    line = refusal(capsys, "--model-path", str(model_never_loads), "--port", str(port_in_use))
    assert f"127.0.0.1:{port_in_use}" in line and "in use" in line


def test_a_host_that_cannot_be_resolved_is_refused(capsys, model_never_loads):
    line = refusal(capsys, "--model-path", str(model_never_loads), "--host", "no-such-host.invalid", "--port", "0")
    assert "--host no-such-host.invalid" in line


def test_a_missing_adapters_dir_is_refused(capsys, model_never_loads, tmp_path):
    missing = tmp_path / "no-such-dir"
    line = refusal(capsys, "--model-path", str(model_never_loads), "--adapters-dir", str(missing), "--port", "0")
    assert f"--adapters-dir {missing}" in line and "does not exist" in line


def test_an_adapters_dir_that_is_a_file_is_refused(capsys, model_never_loads, tmp_path):
    afile = tmp_path / "adapters.txt"
    afile.write_text("not a folder")
    line = refusal(capsys, "--model-path", str(model_never_loads), "--adapters-dir", str(afile), "--port", "0")
    assert str(afile) in line and "not a folder" in line


def test_an_adapter_whose_folder_is_missing_or_not_an_adapter_is_refused(capsys, model_never_loads, tmp_path):
    missing = tmp_path / "gone"
    line = refusal(capsys, "--model-path", str(model_never_loads), "--adapter", f"toolcall={missing}", "--port", "0")
    assert str(missing) in line
    not_adapter = tmp_path / "plain"
    not_adapter.mkdir()
    (not_adapter / "notes.txt").write_text("hi")
    line = refusal(capsys, "--model-path", str(model_never_loads), "--adapter", f"toolcall={not_adapter}", "--port", "0")
    assert str(not_adapter) in line and "not a PEFT adapter" in line


def test_an_adapter_name_given_twice_is_refused(capsys, model_never_loads, tmp_path):
    line = refusal(capsys, "--model-path", str(model_never_loads), "--port", "0",
                   "--adapter", f"a={tmp_path}", "--adapter", f"a={tmp_path / 'other'}")
    assert "'a'" in line and "twice" in line


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--batch-size", "0"], "--batch-size"),
        (["--batch-wait-ms", "nan"], "--batch-wait-ms"),
        (["--max-new-tokens", "0"], "--max-new-tokens"),
        (["--api-key", " "], "--api-key"),
    ],
)
def test_bad_batch_and_key_settings_are_refused(capsys, model_never_loads, flags, named):
    line = refusal(capsys, "--model-path", str(model_never_loads), "--port", "0", *flags)
    assert named in line


def test_the_port_is_bound_before_the_model_loads_and_handed_to_the_server(monkeypatch, model_never_loads):
    """The socket the server listens on is the one bound before the load: nothing can take the port
    in between. (A stand-in model and server: what matters is the order and the socket.)"""
    events: list[str] = []
    listening: list[int] = []

    class StandInModel:
        adapters: dict = {}
        quantization, precision = None, "fp32"

        def __init__(self, *args, **kwargs):
            events.append("load")
            with socket.socket() as other:  # the port is already ours
                with pytest.raises(OSError):
                    other.bind(("127.0.0.1", port))

    class StandInServer:
        started = True

        def __init__(self, config):
            pass

        def run(self, sockets):
            events.append("run")
            listening.extend(sock.getsockname()[1] for sock in sockets)

    monkeypatch.setattr(serve_module, "LocalModel", StandInModel)
    monkeypatch.setattr(serve_module, "create_app", lambda *args, **kwargs: object())
    monkeypatch.setattr("uvicorn.Server", StandInServer)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    serve_module.serve(model_never_loads, port=port)
    assert events == ["load", "run"]
    assert listening == [port]


def test_connections_to_the_bound_socket_send_without_nagles_delay():
    """The server's accepted connections have TCP_NODELAY, as uvicorn gives its own sockets: with
    Nagle's algorithm on, each answer on a kept-alive connection waits ~40 ms for the client's ACK."""
    import asyncio

    from slm_swap.app.http_server import listening_socket

    async def accepted_nodelay() -> int:
        accepted: asyncio.Future = asyncio.get_running_loop().create_future()

        def on_connect(reader, writer):
            accepted.set_result(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        sock = listening_socket("127.0.0.1", 0)
        server = await asyncio.start_server(on_connect, sock=sock)  # as uvicorn serves a socket handed to it
        async with server:
            _, writer = await asyncio.open_connection(*sock.getsockname())
            value = await asyncio.wait_for(accepted, 10)
            writer.close()
        return value

    assert asyncio.run(accepted_nodelay()) != 0
