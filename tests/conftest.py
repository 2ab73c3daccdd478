"""Shared fixtures. Tests never reach a network service: the hub is off, telemetry is off."""

from __future__ import annotations

import os

# Set before anything imports transformers/prefect/langfuse, which read these at import time.
# setdefault: a developer may still override one deliberately from the shell.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Tests that need tracing override this with monkeypatch.
os.environ.setdefault("LANGFUSE_DISABLED", "1")

import socket  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# Property-based tests draw the same cases on every machine and every run (derandomize), keep no
# example database between runs, and have no per-example deadline (model loads vary by machine).
settings.register_profile("slm-swap", derandomize=True, database=None, deadline=None)
settings.load_profile("slm-swap")


def error_lines(stderr: str) -> list[str]:
    """stderr without the informational lines commands print (resolved settings, the tracing-off and
    short-key warnings, transformers' weight-loading bar): what is left must be exactly the one error line."""
    return [line for line in stderr.splitlines()
            if line.strip() and not line.startswith(("settings: ", "warning: LANGFUSE_DISABLED", "Loading weights"))
            and not (line.startswith("warning: ") and " is shorter than 8 characters" in line)]


@pytest.fixture(scope="session")
def embedded_model_dir():
    """The converted embedded model at its default location (converted once, then reused)."""
    from slm_swap.llm.embedded import fetch_embedded_model

    return fetch_embedded_model()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, embedded_model_dir):
    """A tiny random Llama with the embedded model's tokenizer, for fast training/eval tests."""
    from slm_swap.llm.tiny_model import build_tiny_model

    return build_tiny_model(embedded_model_dir, tmp_path_factory.mktemp("tiny-model") / "model")


@pytest.fixture(scope="session")
def tiny_adapter_dir(tmp_path_factory, tiny_model_dir):
    """A random (non-identity) LoRA adapter for the tiny model: it visibly changes outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM")
    dest = tmp_path_factory.mktemp("tiny-adapter") / "adapter_toolcall"
    get_peft_model(model, config).save_pretrained(dest)
    return dest


@pytest.fixture(scope="session")
def xlam_data_dir(tmp_path_factory):
    """Both tracks prepared from the xLAM fixture: 20 train, 4 val, 12 test."""
    from pathlib import Path

    from slm_swap.app.cli import main

    out = tmp_path_factory.mktemp("xlam-data")
    fixture = Path(__file__).parent / "fixtures" / "xlam_sample.json"
    assert main(["prepare", "--source", "xlam", "--dataset-path", str(fixture), "--train", "20", "--val", "4",
                 "--test", "12", "--out-dir", str(out)]) == 0
    return out


@pytest.fixture
def loopback_only(monkeypatch):
    """No proxies, no SDK switches from the developer's shell, and no connection past 127.0.0.1."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    for name in ("OTEL_SDK_DISABLED", "LANGFUSE_TRACING_ENABLED", "OTEL_EXPORTER_OTLP_HEADERS",
                 "OTEL_EXPORTER_OTLP_TRACES_HEADERS", "LANGFUSE_BASE_URL", "LANGFUSE_DEBUG"):
        monkeypatch.delenv(name, raising=False)

    refused: list[object] = []
    original_connect = socket.socket.connect

    def guarded_connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1"):
            refused.append(address)
            raise ConnectionRefusedError(f"test guard: no connections beyond 127.0.0.1 ({address!r})")
        return original_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    yield
    assert not refused, f"something tried to reach beyond 127.0.0.1: {refused}"


def pytest_terminal_summary(terminalreporter):
    """How many generated hostile cases ran (tests/test_hostile_inputs.py), when that file ran."""
    hostile = sys.modules.get("test_hostile_inputs")
    if hostile is not None and hostile.TRIED:
        counts = ", ".join(f"{name}={count}" for name, count in sorted(hostile.TRIED.items()))
        terminalreporter.write_line(f"hostile cases tried: {sum(hostile.TRIED.values())} ({counts})")
