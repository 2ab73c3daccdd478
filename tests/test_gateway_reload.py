"""Hot reload under load: a promotion reaches the gateway's in-process SLM without a restart. The
adapter is loaded between two batches and served only once whole; requests in flight finish on what
they started with, the next ones use the new adapter, and no request fails meanwhile."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction
from pathlib import Path

import openai
import pytest
from openai_stub import OpenAIStub
from test_gateway import FIXTURE, HOSTED_KEY, Gateway, read_records, tools_of

from slm_swap.app.gateway import SlmEngine, Upstream, create_gateway_app
from slm_swap.app.gateway_engine import start_in_process_engine
from slm_swap.app.gateway_reload import AdapterReloader
from slm_swap.data.xlam import load_xlam
from slm_swap.evaluation.calibrate import Policy
from slm_swap.infra.config import scrub_secrets

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("loopback_only")]


@dataclass(frozen=True)
class Promotion:
    """A registry entry as the reloader sees it (`registry.PromotedAdapter` is the real one)."""

    version: int
    adapter: Path
    policy: Policy | None = None

    def gate(self) -> Policy | None:
        return self.policy


def policy(name: str, threshold: float | None, adapter: str | None = None) -> Policy:
    return Policy(Path(name), "toolcall", threshold, Fraction(9, 10), "tiny", adapter, "test")


def test_a_promotion_is_served_without_a_restart_and_without_a_failed_request(tmp_path, tiny_model_dir, tiny_adapter_dir):
    example = load_xlam(FIXTURE)[0][0]
    engine = start_in_process_engine(tiny_model_dir, {}, ["structured", "toolcall"], batch_size=4)
    registry = tmp_path / "registry.json"
    promoted: dict[str, Promotion] = {}
    try:
        assert engine.models == {"structured": "base", "toolcall": "base"}
        with OpenAIStub(respond=lambda messages: "the hosted answer") as hosted:
            records = tmp_path / "requests.jsonl"
            app = create_gateway_app(
                Upstream(openai.OpenAI(base_url=f"{hosted.url}/v1", api_key=HOSTED_KEY, max_retries=0), "hosted"),
                SlmEngine(openai.OpenAI(base_url=engine.url, api_key=engine.api_key, max_retries=0), engine.models),
                records, lambda text: scrub_secrets(text, [HOSTED_KEY]))
            reloader = AdapterReloader(registry, lambda path: dict(promoted), engine.add_adapter, engine.models, {})
            gateway = Gateway(app)
            stop = threading.Event()

            def client_loop() -> list[int]:
                client = openai.OpenAI(base_url=f"http://127.0.0.1:{gateway.port}/v1", api_key="k", max_retries=0)
                statuses = []
                while not stop.is_set():
                    raw = client.chat.completions.with_raw_response.create(
                        model="gpt-4o", messages=[{"role": "user", "content": example.request}],
                        tools=tools_of(example), max_tokens=4)
                    statuses.append(raw.status_code)
                return statuses

            try:
                with ThreadPoolExecutor(4) as pool:
                    loops = [pool.submit(client_loop) for _ in range(4)]
                    time.sleep(1.0)  # traffic on the base model
                    promoted["toolcall"] = Promotion(1, Path(tiny_adapter_dir))
                    registry.write_text("v1", encoding="utf-8")
                    assert reloader.check_once() == ["toolcall"]  # loads under load, then switches
                    switched_at = time.time()
                    assert reloader.check_once() == []  # unchanged registry: nothing to do
                    time.sleep(1.5)  # traffic on the promoted adapter
                    stop.set()
                    statuses = [status for loop in loops for status in loop.result(timeout=60)]
            finally:
                gateway.close()
    finally:
        engine.stop()
    assert statuses and set(statuses) == {200}
    served = read_records(records)
    assert len(served) == len(statuses)
    assert all(record["slm"] and "error" not in record["slm"] for record in served)  # the engine never failed
    models = [record["slm"]["model"] for record in served]
    assert set(models) == {"base", "toolcall-v1"} and engine.models["toolcall"] == "toolcall-v1"
    late = [r for r in served if datetime.fromisoformat(r["time"]).timestamp() > switched_at + 0.1]  # started after
    assert late and {r["slm"]["model"] for r in late} == {"toolcall-v1"}  # after the switch: the new adapter only


def test_a_bad_promotion_keeps_the_track_on_what_it_served(tmp_path, capsys):
    registry = tmp_path / "registry.json"
    registry.write_text("x", encoding="utf-8")
    models = {"toolcall": "toolcall"}

    def refuse(name, path):
        raise ValueError("not an adapter")

    reloader = AdapterReloader(registry, lambda path: {"toolcall": Promotion(2, tmp_path / "nope")}, refuse, models, {})
    assert reloader.check_once() == [] and models == {"toolcall": "toolcall"}
    assert "track toolcall keeps 'toolcall'" in capsys.readouterr().err

    def unreadable(path):
        raise ValueError(f"{path}: not a registry")

    reloader = AdapterReloader(registry, unreadable, refuse, models, {})
    assert reloader.check_once() == [] and "not applied" in capsys.readouterr().err


def test_a_promotion_switches_the_adapter_and_its_confidence_gate_together(tmp_path, capsys):
    """The gate calibrated for the promoted adapter comes with it: a request reads the track's model name
    once and gets that name's gate, so it never pairs the new adapter with the old threshold."""
    registry = tmp_path / "registry.json"
    models = {"toolcall": "base", "structured": "base"}
    old, new = policy("policy_base.json", -2.0), policy("round-1/policy_toolcall.json", -0.5, "round-1/adapter")
    gates = {"base": old}
    loaded: list[str] = []
    promoted = {"toolcall": Promotion(1, tmp_path / "round-1" / "adapter", new)}

    def add_adapter(name: str, path: Path) -> None:
        assert name not in models.values()  # loaded before any track points at it
        loaded.append(name)

    reloader = AdapterReloader(registry, lambda path: dict(promoted), add_adapter, models, gates)
    registry.write_text("v1", encoding="utf-8")
    assert reloader.check_once() == ["toolcall"] and loaded == ["toolcall-v1"]
    engine = SlmEngine(openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="k"), models, gates)
    assert engine.serving("toolcall") == ("toolcall-v1", new)
    assert engine.serving("structured") == ("base", old)  # another track keeps its own
    assert "confidence gate >= -0.5" in capsys.readouterr().out

    # Promoted by hand without a gate: the track keeps the gate it had, and the log says it was made for another model.
    promoted["toolcall"] = Promotion(2, tmp_path / "by-hand")
    registry.write_text("v2", encoding="utf-8")
    assert reloader.check_once() == ["toolcall"]
    assert engine.serving("toolcall") == ("toolcall-v2", new)
    assert "v2 was promoted without a confidence gate; it keeps round-1/policy_toolcall.json" in capsys.readouterr().err

    # A gate that cannot be read: the track stays on the adapter and gate it served.
    class Unreadable(Promotion):
        def gate(self) -> Policy | None:
            raise ValueError("not a gateway policy file")

    promoted["toolcall"] = Unreadable(3, tmp_path / "v3")
    registry.write_text("v3", encoding="utf-8")
    assert reloader.check_once() == [] and engine.serving("toolcall") == ("toolcall-v2", new)
    assert "keeps 'toolcall-v2'" in capsys.readouterr().err and "toolcall-v3" not in loaded
