"""The gateway's modes per track: `shadow` (the hosted model answers; the SLM's answer is recorded off the
response path, with its verdict and whether it agrees) and `hosted` (pass-through), over real HTTP with
the real `openai` SDK; and `--mode` as a user types it."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from openai_stub import OpenAIStub
from test_gateway import FIXTURE, read_records, start

from slm_swap.app.cli import main
from slm_swap.app.gateway_requests import Swappable
from slm_swap.app.gateway_shadow import agrees, parse_modes
from slm_swap.core.prompts import build_messages, build_prompt
from slm_swap.core.tracks import get_track
from slm_swap.data.xlam import load_xlam
from slm_swap.infra.errors import SlmSwapError
from slm_swap.trajectories.teacher import ScriptedTeacher

pytestmark = pytest.mark.usefixtures("loopback_only")

SLM_DELAY_S = 1.5  # the SLM engine's time per answer: far slower than the hosted stub


@pytest.fixture(scope="module")
def examples():
    return load_xlam(FIXTURE)[0][:4]


def gold_answers(examples) -> dict[str, str]:
    """The hosted stand-in answers each row's structured prompt with the row's true answer."""
    track = get_track("structured")
    return {build_prompt("structured", e.request, e.functions): track.completion(e.name, e.arguments) for e in examples}


def wait_for_records(path, count: int, timeout_s: float = 10.0) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and len(records := read_records(path)) >= count:
            return records
        time.sleep(0.05)
    raise AssertionError(f"{count} records did not arrive in {timeout_s} s")


def test_shadow_mode_answers_at_the_hosted_speed_and_records_the_slm_verdict(tmp_path, examples):
    gold = gold_answers(examples)
    behaviours = {examples[0].id: "correct", examples[1].id: "wrong", examples[2].id: "broken"}
    with OpenAIStub(respond=lambda messages: gold[messages[-1]["content"]]) as hosted, \
            ScriptedTeacher(examples, behaviours, step_delay_s=SLM_DELAY_S) as teacher:
        gateway, records = start(tmp_path, examples, hosted, teacher, modes={"structured": "shadow", "toolcall": "route"})
        try:
            def ask(example):
                began = time.perf_counter()
                raw = gateway.client().chat.completions.with_raw_response.create(
                    model="structured", messages=build_messages(build_prompt("structured", example.request, example.functions)))
                return raw.headers, raw.parse(), time.perf_counter() - began

            with ThreadPoolExecutor(3) as pool:
                answers = list(pool.map(ask, examples[:3]))
            for (headers, answer, took), example in zip(answers, examples):
                assert headers["x-slm-swap-route"] == "hosted" and headers["x-slm-swap-reason"] == "mode_shadow"
                assert json.loads(answer.choices[0].message.content) == {"name": example.name, "arguments": example.arguments}
                assert took < SLM_DELAY_S, "the response waited for the shadow SLM"
            found = {record["slm"]["output"] and json.loads(record["hosted"]["output"][0]["message"]["content"])["name"]: record
                     for record in wait_for_records(records, 3)}
        finally:
            gateway.close()
    assert teacher.requests == 3  # every request also went to the SLM
    right, wrong, broken = (found[example.name] for example in examples[:3])
    assert (right["mode"], right["route"], right["shadow"]) == ("shadow", "hosted", {"verdict": "valid", "reason": None, "agrees": True})
    assert (wrong["shadow"]["verdict"], wrong["shadow"]["agrees"]) == ("valid", False)  # valid, yet not the hosted answer
    assert (broken["shadow"]["verdict"], broken["shadow"]["agrees"]) == ("invalid", False)
    assert broken["shadow"]["reason"].startswith("invalid_answer: ")


def test_hosted_mode_passes_through_without_asking_the_slm(tmp_path, examples):
    gold = gold_answers(examples)
    with OpenAIStub(respond=lambda messages: gold[messages[-1]["content"]]) as hosted, ScriptedTeacher(examples) as teacher:
        gateway, records = start(tmp_path, examples, hosted, teacher, modes={"structured": "hosted", "toolcall": "hosted"})
        try:
            raw = gateway.client().chat.completions.with_raw_response.create(
                model="structured", messages=build_messages(build_prompt("structured", examples[0].request, examples[0].functions)))
        finally:
            gateway.close()
    assert (raw.headers["x-slm-swap-route"], raw.headers["x-slm-swap-reason"]) == ("hosted", "mode_hosted")
    assert teacher.requests == 0 and len(hosted.requests) == 1
    [record] = read_records(records)
    assert (record["track"], record["mode"], record["slm"]) == ("structured", "hosted", None)


def test_tool_call_agreement_is_exact():
    decision = Swappable("toolcall", "weather in Paris?", ({"name": "weather", "parameters": {}},), "tool_calls")
    slm = '<tool_call name="weather">{"city": "Paris", "days": 2}</tool_call>'

    def hosted(name: str, arguments: str) -> dict:
        return {"role": "assistant", "content": None,
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": name, "arguments": arguments}}]}

    assert agrees(decision, slm, hosted("weather", '{"days": 2, "city": "Paris"}'))  # key order does not matter
    assert not agrees(decision, slm, hosted("weather", '{"city": "Paris", "days": 3}'))
    assert not agrees(decision, slm, hosted("forecast", '{"city": "Paris", "days": 2}'))
    assert not agrees(decision, slm, {"role": "assistant", "content": "It is sunny."})  # the hosted model did not call
    assert not agrees(decision, "no call at all", hosted("weather", '{"city": "Paris", "days": 2}'))


def test_mode_flags():
    assert parse_modes(["shadow", "toolcall=route"], ["structured", "toolcall"]) == {"structured": "shadow", "toolcall": "route"}
    assert parse_modes([], ["structured", "toolcall"]) == {"structured": "route", "toolcall": "route"}
    for bad in ("fast", "agent=shadow", "toolcall=fast", "=route"):
        with pytest.raises(SlmSwapError, match="--mode"):
            parse_modes([bad], ["structured", "toolcall"])


def test_a_bad_mode_flag_is_one_line(capsys, monkeypatch):
    monkeypatch.setenv("SLM_BASE_URL", "http://127.0.0.1:9/v1")
    assert main(["gateway", "--port", "0", "--mode", "toolcall=fast"]) == 2
    [line] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("slm-swap: error")]
    assert "--mode 'toolcall=fast'" in line
