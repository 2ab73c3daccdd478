"""The flywheel's collect and rows steps (`slm_swap.data.traffic`): reading the gateway's records since
a watermark, turning validated hosted answers into v0 rows, and the held-out traffic test set that
never reaches train. Records are built in the gateway's exact shape; one test takes them from the
real gateway over HTTP."""

from __future__ import annotations

import json
import random
from fractions import Fraction
from pathlib import Path

import pytest

from slm_swap.core.prompts import build_prompt
from slm_swap.core.tracks import get_row_track
from slm_swap.data.examples import build_row, load_rows
from slm_swap.data.traffic import (
    TrafficRow,
    commit,
    is_drawn,
    merge_train,
    read_heldout,
    read_new_records,
    request_hash,
    rows_from_records,
    update_heldout,
    watermark_path,
    write_rows,
)
from slm_swap.evaluation.rows import load_split
from slm_swap.infra.config import scrub_secrets
from slm_swap.infra.errors import SlmSwapError
from slm_swap.train.data import load_training_rows

WEATHER = {"name": "get_weather", "description": "Weather for a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                           "unit": {"type": "string", "enum": ["c", "f"]}},
                          "required": ["city"]}}
TIME = {"name": "get_time", "description": "Local time in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
FUNCTIONS = [WEATHER, TIME]
SECRET = "sk-user-pasted-0123456789abcdef"


def tool_calls(*calls: tuple[str, str]) -> list[dict]:
    """A hosted answer's `choices` with these (name, arguments JSON text) tool calls."""
    return [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": None, "tool_calls": [
        {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": arguments}}
        for i, (name, arguments) in enumerate(calls)]}}]


def text_answer(content: str) -> list[dict]:
    return [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}]


def record(text: str = "What is the weather in Oslo?", *, track: str | None = "toolcall", mode: str | None = "route",
           route: str = "hosted-fallback", answer_as: str = "tool_calls", forced_name: str | None = None,
           functions: list[dict] | None = None, output: list[dict] | None = None, hosted_error: str | None = None,
           rid: str = "req-1") -> dict:
    """One gateway record as `gateway.py` writes it."""
    if output is None:
        output = tool_calls(("get_weather", '{"city": "Oslo"}'))
    hosted = {"error": hosted_error} if hosted_error else {"model": "gpt-4o", "output": output, "usage": None, "latency_s": 0.1}
    rec = {"id": rid, "time": "2026-12-01T10:00:00+00:00", "requested_model": "gpt-4o", "track": track, "mode": mode,
           "not_swappable": None, "route": route, "verdict": "invalid" if route == "hosted-fallback" else None,
           "reason": None, "slm": None, "hosted": hosted, "status": 200, "trace_id": None,
           "request": {"user_text": text, "functions": functions or FUNCTIONS, "answer_as": answer_as,
                       "forced_name": forced_name}}
    if mode == "shadow":
        rec["shadow"] = {"verdict": "valid", "reason": None, "agrees": False}
    return rec


def append(path: Path, *records: dict) -> None:
    with path.open("a", encoding="utf-8") as out:
        out.writelines(json.dumps(r) + "\n" for r in records)


# ---------------------------------------------------------------------------------------------
# Rows from records


def test_each_source_gives_the_tracks_eval_row():
    records = [
        record("Weather in Oslo?", rid="a"),  # a fallback, answered as tool_calls
        record("Time in Lima?", track="structured", mode="shadow", route="hosted", answer_as="text",
               output=text_answer('{"name": "get_time", "arguments": {"city": "Lima"}}'), rid="b"),
        record("Weather in Rome, in f?", mode="hosted", route="hosted", answer_as="text",
               output=text_answer('<tool_call name="get_weather">{"unit": "f", "city": "Rome"}</tool_call>'), rid="c"),
    ]
    harvest = rows_from_records(records)
    got = {row.record_id: row for row in harvest.rows}
    expected = {"a": ("toolcall", "fallback", "Weather in Oslo?", "get_weather", {"city": "Oslo"}),
                "b": ("structured", "shadow", "Time in Lima?", "get_time", {"city": "Lima"}),
                "c": ("toolcall", "hosted", "Weather in Rome, in f?", "get_weather", {"unit": "f", "city": "Rome"})}
    for rid, (track, source, text, name, arguments) in expected.items():
        row = got[rid]
        assert (row.track, row.source) == (track, source)
        assert row.prompt == build_prompt(track, text, FUNCTIONS)
        assert row.completion == get_row_track(track).completion(name, arguments)
        assert row.request_hash == request_hash(track, text, FUNCTIONS)
    assert harvest.summary() == {"structured": {"shadow": {"seen": 1, "rows": 1, "rejected": {}}},
                                 "toolcall": {"fallback": {"seen": 1, "rows": 1, "rejected": {}},
                                              "hosted": {"seen": 1, "rows": 1, "rejected": {}}}}


def test_rows_are_read_by_train_and_eval(tmp_path):
    records = [record(f"Weather in city {i}?", output=tool_calls(("get_weather", json.dumps({"city": f"c{i}"}))), rid=str(i))
               for i in range(3)]
    rows = rows_from_records(records).for_track("toolcall")
    write_rows(tmp_path / "toolcall" / "train.jsonl", rows)
    write_rows(tmp_path / "toolcall" / "test.jsonl", rows)
    assert load_rows(tmp_path / "toolcall" / "train.jsonl") == [row.row() for row in rows]
    assert load_training_rows(tmp_path / "toolcall" / "train.jsonl", "toolcall") == [row.row() for row in rows]
    _, eval_rows, answers = load_split(tmp_path, "toolcall", "test")
    assert eval_rows == [row.row() for row in rows] and answers is None
    assert read_heldout(tmp_path / "toolcall" / "test.jsonl") == rows


NOT_SWAPPABLE = {**record(track=None, mode=None, route="hosted"), "request": None,
                 "not_swappable": {"reason": "no_tools", "detail": "no tools"}}
NO_LOG_CONTENT = {key: value for key, value in record().items() if key != "request"}


@pytest.mark.parametrize("rec, reason", [
    (NOT_SWAPPABLE, "no_request"),
    (NO_LOG_CONTENT, "no_request"),
    ({**record(route="slm"), "hosted": None}, "slm_answered"),
    (record(hosted_error="APIConnectionError: connection refused"), "hosted_failed"),
    ({**record(), "hosted": None}, "hosted_failed"),
    (record(track="agent"), "invalid_request"),
    (record(output=tool_calls(("get_weather", '{"city": "Oslo"}'), ("get_time", '{"city": "Oslo"}'))), "invalid_hosted_answer"),
    (record(output=tool_calls(("get_news", '{"city": "Oslo"}'))), "invalid_hosted_answer"),  # not among the tools
    (record(forced_name="get_time"), "invalid_hosted_answer"),  # tool_choice named another function
    (record(output=tool_calls(("get_weather", '{"city": "Oslo"'))), "invalid_hosted_answer"),  # arguments not JSON
    (record(output=tool_calls(("get_weather", '["Oslo"]'))), "invalid_hosted_answer"),  # not an object
    (record(output=tool_calls(("get_weather", '{"unit": "c"}'))), "invalid_hosted_answer"),  # misses required city
    (record(output=tool_calls(("get_weather", '{"city": "Oslo", "unit": "k"}'))), "invalid_hosted_answer"),  # not in enum
    (record(output=text_answer("It is sunny in Oslo.")), "invalid_hosted_answer"),  # tools asked, text answered
    (record(answer_as="text", output=text_answer('<tool_call name="get_weather">{"city": 3}</tool_call>')), "invalid_hosted_answer"),
    (record(track="structured", answer_as="text", output=text_answer('{"name": "get_time", "arguments": {"city": "Oslo"}, "x": 1}')),
     "invalid_hosted_answer"),
    (record(track="structured", answer_as="text", output=text_answer('```json\n{"name": "get_time"}\n```')), "invalid_hosted_answer"),
    (record(output=[]), "invalid_hosted_answer"),
    (record(functions=[{"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "cityname"}}}}]),
     "unusable_schema"),
])
def test_a_record_without_a_valid_hosted_answer_gives_no_row_and_says_why(rec, reason):
    harvest = rows_from_records([rec])
    assert harvest.rows == []
    [(key, count)] = harvest.counts.items()
    assert key[2] == reason and count == 1


def test_the_latest_answer_to_a_request_is_kept_and_the_others_count_as_duplicates():
    answers = [("get_weather", '{"city": "Oslo"}'), ("get_weather", '{"city": "Oslo", "unit": "c"}'),
               ("get_weather", '{"city": "Oslo", "unit": "f"}')]
    records = [record(output=tool_calls(a), rid=f"r{i}", mode=mode, route="hosted" if mode != "route" else "hosted-fallback")
               for i, (a, mode) in enumerate(zip(answers, ("route", "shadow", "hosted")))]
    records.append(record(functions=[WEATHER], rid="other-tools"))  # the same text with other tools: another request
    harvest = rows_from_records(records)
    by_id = {row.record_id: row for row in harvest.rows}
    assert sorted(by_id) == ["other-tools", "r2"]
    assert by_id["r2"].completion == get_row_track("toolcall").completion("get_weather", {"city": "Oslo", "unit": "f"})
    summary = harvest.summary()["toolcall"]
    assert summary["fallback"] == {"seen": 2, "rows": 1, "rejected": {"duplicate": 1}}
    assert summary["shadow"] == {"seen": 1, "rows": 0, "rejected": {"duplicate": 1}}
    assert summary["hosted"] == {"seen": 1, "rows": 1, "rejected": {}}


def test_a_secret_in_traffic_never_reaches_a_row(tmp_path):
    rec = record(f"Weather in Oslo? my key is {SECRET}",
                 output=tool_calls(("get_weather", json.dumps({"city": f"Oslo {SECRET}"}))))
    harvest = rows_from_records([rec, record("Time in Lima?", rid="clean")], scrub=lambda t: scrub_secrets(t, [SECRET]))
    assert len(harvest.rows) == 2 and harvest.scrubbed == 1
    write_rows(tmp_path / "toolcall" / "test.jsonl", harvest.rows)
    for path in (tmp_path / "toolcall").iterdir():
        assert SECRET not in path.read_text(encoding="utf-8"), path
    row = next(row for row in harvest.rows if row.record_id == "req-1")
    assert "[redacted]" in row.prompt and "[redacted]" in row.completion
    assert row.request_hash == request_hash("toolcall", "Weather in Oslo? my key is [redacted]", FUNCTIONS)


def test_rows_from_the_real_gateways_records(tmp_path):
    """Route mode over real HTTP: the SLM's broken answer falls back to the hosted model (a row), its
    correct one is served (no hosted answer: no row)."""
    from openai_stub import OpenAIStub
    from test_gateway import FIXTURE, start

    from slm_swap.core.prompts import build_messages
    from slm_swap.data.xlam import load_xlam
    from slm_swap.trajectories.teacher import ScriptedTeacher

    examples = load_xlam(FIXTURE)[0][:2]
    gold = {build_prompt("structured", e.request, e.functions): build_row(e, "structured")["completion"] for e in examples}
    with OpenAIStub(respond=lambda messages: gold[messages[-1]["content"]]) as hosted, \
            ScriptedTeacher(examples, {examples[0].id: "broken", examples[1].id: "correct"}) as teacher:
        gateway, records_path = start(tmp_path, examples, hosted, teacher)
        try:
            for example in examples:
                gateway.client().chat.completions.create(
                    model="structured", messages=build_messages(build_prompt("structured", example.request, example.functions)))
        finally:
            gateway.close()
    harvest = rows_from_records(read_new_records(records_path, "toolcall").records)
    assert [row.row() for row in harvest.rows] == [build_row(examples[0], "structured")]
    assert harvest.summary() == {"structured": {"fallback": {"seen": 1, "rows": 1, "rejected": {}},
                                                "slm": {"seen": 1, "rows": 0, "rejected": {"slm_answered": 1}}}}


# ---------------------------------------------------------------------------------------------
# Reading since the watermark


def test_reading_resumes_after_the_committed_watermark_and_reading_alone_does_not_move_it(tmp_path):
    path = tmp_path / "requests.jsonl"
    append(path, record(rid="1"), record(rid="2"))
    first = read_new_records(path, "toolcall")
    assert [r["id"] for r in first.records] == ["1", "2"]
    assert [r["id"] for r in read_new_records(path, "toolcall").records] == ["1", "2"]  # a round killed before commit: again
    commit(first)
    append(path, record(rid="3"))
    second = read_new_records(path, "toolcall")
    assert [r["id"] for r in second.records] == ["3"] and second.start == first.end and second.restarted is None
    commit(second)
    assert read_new_records(path, "toolcall").records == []
    assert json.loads(watermark_path(path, "toolcall").read_text())["offset"] == path.stat().st_size


def test_each_track_keeps_its_own_watermark_over_one_records_file(tmp_path):
    """A toolcall round must not move the structured round past records it never read."""
    path = tmp_path / "requests.jsonl"
    append(path, record(rid="1"), record(rid="2"))
    commit(read_new_records(path, "toolcall"))
    assert read_new_records(path, "toolcall").records == []
    assert [r["id"] for r in read_new_records(path, "structured").records] == ["1", "2"]
    append(path, record(rid="3"))
    commit(read_new_records(path, "structured"))
    assert [r["id"] for r in read_new_records(path, "toolcall").records] == ["3"]
    assert watermark_path(path, "toolcall") != watermark_path(path, "structured")
    with pytest.raises(SlmSwapError, match="expected a name such as a track"):
        read_new_records(path, "../x")


def test_a_torn_last_line_waits_for_the_next_round(tmp_path):
    path = tmp_path / "requests.jsonl"
    append(path, record(rid="1"))
    line = json.dumps(record(rid="2")) + "\n"
    with path.open("a") as out:
        out.write(line[:40])  # a gateway mid-write
    batch = read_new_records(path, "toolcall")
    assert [r["id"] for r in batch.records] == ["1"]
    commit(batch)
    with path.open("a") as out:
        out.write(line[40:])
    assert [r["id"] for r in read_new_records(path, "toolcall").records] == ["2"]


@pytest.mark.parametrize("change, why", [
    ("replace", "replaced or rotated"),
    ("truncate", "truncated"),
    ("rewrite", "rewritten"),
])
def test_a_rotated_or_truncated_records_file_is_read_from_its_start(tmp_path, change, why):
    path = tmp_path / "requests.jsonl"
    append(path, record(rid="1"), record(rid="2", output=tool_calls(("get_weather", '{"city": "Bergen"}'))))
    commit(read_new_records(path, "toolcall"))
    first_line = path.read_text().splitlines(keepends=True)[0]
    if change == "replace":  # rotated away; the gateway starts a new file, longer than the old one
        path.unlink()
        append(path, record(rid="new-1"), record(rid="new-2"), record(rid="new-3"))
    elif change == "truncate":
        path.write_text(first_line)
    else:  # the same first line, then another second line: the watermark falls inside it
        path.write_text(first_line + json.dumps(record(rid="x" * 200)) + "\n")
    batch = read_new_records(path, "toolcall")
    assert batch.start == 0 and why in batch.restarted
    expected = {"replace": ["new-1", "new-2", "new-3"], "truncate": ["1"], "rewrite": ["1", "x" * 200]}[change]
    assert [r["id"] for r in batch.records] == expected


def test_a_corrupt_line_is_one_error_naming_the_file_and_its_line(tmp_path):
    path = tmp_path / "requests.jsonl"
    append(path, record(rid="1"), record(rid="2"))
    commit(read_new_records(path, "toolcall"))
    append(path, record(rid="3"))
    with path.open("a") as out:
        out.write('{"id": "4", "track": \n')
    append(path, record(rid="5"))
    with pytest.raises(SlmSwapError) as error:
        read_new_records(path, "toolcall")
    message = str(error.value)
    assert message.startswith(f"{path}:4: ") and "\n" not in message  # numbered as in the file, not the batch
    path.write_text("\n".join(path.read_text().splitlines()[:3]) + "\n[1, 2]\n")
    with pytest.raises(SlmSwapError, match=rf"^{path}:4: not a gateway record"):
        read_new_records(path, "toolcall")


def test_no_records_file_yet_is_no_records_and_a_bad_watermark_is_one_line(tmp_path):
    path = tmp_path / "requests.jsonl"
    batch = read_new_records(path, "toolcall")
    assert batch.records == [] and batch.restarted is None
    watermark_path(path, "toolcall").write_text('{"offset": -3}')
    with pytest.raises(SlmSwapError, match=rf"^{watermark_path(path, 'toolcall')}: not a watermark"):
        read_new_records(path, "toolcall")


# ---------------------------------------------------------------------------------------------
# The held-out traffic test set


def traffic_rows(texts: list[str], answer: str = "Oslo") -> list[TrafficRow]:
    records = [record(text, output=tool_calls(("get_weather", json.dumps({"city": answer}))), rid=text) for text in texts]
    return rows_from_records(records).rows


def test_held_out_requests_never_reach_train_over_rounds(tmp_path):
    rng = random.Random(7)
    seed_rows = [build_row_like(f"Seed request {i}") for i in range(10)]  # `prepare`'s train rows
    train: list[dict[str, str]] = list(seed_rows)
    heldout: list[TrafficRow] = []
    ever_trained = {row["prompt"] for row in train}
    seen_texts: list[str] = []
    for round_number in range(4):
        fresh = [f"Round {round_number} request {i}" for i in range(25)]
        # Traffic repeats itself: earlier requests (held out or trained) and the seed rows' own requests come back.
        repeats = rng.sample(seen_texts, min(10, len(seen_texts))) + [f"Seed request {i}" for i in range(3)]
        seen_texts += fresh
        rows = traffic_rows(fresh + repeats, answer=f"answer {round_number}")
        before = list(heldout)
        heldout = update_heldout(heldout, rows, trained_prompts={row["prompt"] for row in train}, max_new=3)
        train = merge_train(train, rows, heldout)
        write_rows(tmp_path / "toolcall" / "test.jsonl", heldout)
        write_rows(tmp_path / "toolcall" / "train.jsonl", train)
        heldout = read_heldout(tmp_path / "toolcall" / "test.jsonl")  # the next round starts from the files
        train = load_rows(tmp_path / "toolcall" / "train.jsonl")

        assert heldout[: len(before)] == before and len(heldout) - len(before) <= 3  # drawn once, grown slowly
        assert all(is_drawn(row.request_hash) for row in heldout)
        held_prompts = {row.prompt for row in heldout}
        assert not held_prompts & {row["prompt"] for row in train}
        assert not held_prompts & ever_trained  # nothing held out was ever trained on, in any round
        ever_trained |= {row["prompt"] for row in train}
        assert len({row["prompt"] for row in train}) == len(train)  # one row per request
    assert len(heldout) == 12  # 3 per round: traffic had enough qualifying requests each time
    assert {row["prompt"] for row in seed_rows} <= {row["prompt"] for row in train}


def build_row_like(text: str) -> dict[str, str]:
    return {"prompt": build_prompt("toolcall", text, FUNCTIONS),
            "completion": get_row_track("toolcall").completion("get_weather", {"city": "Oslo"})}


def test_a_held_out_prompt_is_taken_out_of_the_existing_train_rows():
    [row] = traffic_rows(["Weather in Oslo?"])
    train = [build_row_like("Weather in Oslo?"), build_row_like("Weather in Rome?")]
    assert merge_train(train, [], [row]) == [build_row_like("Weather in Rome?")]


def test_the_draw_follows_the_share_and_the_cap():
    rows = traffic_rows([f"Request {i}" for i in range(200)])
    drawn = update_heldout([], rows, share=Fraction(1, 4))
    assert {row.request_hash for row in drawn} == {row.request_hash for row in rows if int(row.request_hash, 16) % 4 == 0}
    assert 25 <= len(drawn) <= 75  # about a quarter of 200 distinct hashes
    capped = update_heldout([], rows, share=Fraction(1, 4), max_new=5)
    assert capped == sorted(drawn, key=lambda row: row.request_hash)[:5]
    assert update_heldout([], list(reversed(rows)), share=Fraction(1, 4), max_new=5) == capped  # order-free
    with pytest.raises(SlmSwapError):
        update_heldout([], rows, share=Fraction(0))


def test_one_split_takes_one_tracks_rows_of_one_kind(tmp_path):
    harvest = rows_from_records([record("Weather in Oslo?"), record(
        "Time in Lima?", track="structured", answer_as="text",
        output=text_answer('{"name": "get_time", "arguments": {"city": "Lima"}}'))])
    with pytest.raises(SlmSwapError, match="several tracks"):
        merge_train([], harvest.rows, [])
    with pytest.raises(SlmSwapError, match="several tracks"):
        update_heldout([], harvest.rows, share=Fraction(1))
    toolcall = harvest.for_track("toolcall")
    with pytest.raises(SlmSwapError, match="mixed"):
        write_rows(tmp_path / "train.jsonl", [*toolcall, build_row_like("Weather in Rome?")])
    assert not (tmp_path / "train.jsonl").exists()


def test_a_request_already_trained_on_is_never_drawn_for_held_out():
    rows = [row for row in traffic_rows([f"Request {i}" for i in range(40)]) if is_drawn(row.request_hash)]
    assert len(rows) >= 2
    trained, fresh = rows[0], rows[1]
    heldout = update_heldout([], rows[:2], trained_prompts={trained.prompt})
    assert heldout == [fresh]
