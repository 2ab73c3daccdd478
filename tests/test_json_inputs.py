"""Every reader of outside JSON goes through `json_input`: a file nested 100,000 deep or holding a
5,000-digit integer is one line naming the file and line (exit 2, nothing written), and a model's
answer holding either (or a lone surrogate) is scored invalid while the eval still writes its metrics.
Also: xLAM rows with wrong-typed fields, `compare --delta` out of range, and the scripted teacher's
answers to malformed requests (a 400 in OpenAI's shape, no traceback)."""

from __future__ import annotations

import http.client
import json
import shutil
from pathlib import Path

import pytest

from conftest import error_lines
from openai_stub import OpenAIStub
from slm_swap.app.cli import main
from slm_swap.infra.fileio import read_jsonl

pytestmark = pytest.mark.usefixtures("loopback_only")

DEEP = "[" * 100_000 + "]" * 100_000  # json.loads: RecursionError
BIG = "9" * 5000  # int(): ValueError, past Python's 4,300-digit limit
XLAM_FIXTURE = Path(__file__).parent / "fixtures" / "xlam_sample.json"


def refused(capsys, argv, *expected: str) -> str:
    """The command exits 2 with exactly one error line holding each expected text, and no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = error_lines(err)
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    for text in expected:
        assert text in lines[0], (text, lines[0][:500])
    return lines[0]


@pytest.fixture
def hosted(monkeypatch):
    """A hosted endpoint whose answer each test sets (`hosted.answer`)."""
    with OpenAIStub(lambda messages: hosted.answer) as server:
        server.answer = "ok"
        for key in ("HOSTED_BASE_URL", "HOSTED_MODEL", "HOSTED_API_KEY", "AZURE_DEPLOYMENT"):
            monkeypatch.delenv(key, raising=False)
        monkeypatch.setenv("AZURE_ENDPOINT", f"{server.url}/openai/deployments/d")
        monkeypatch.setenv("AZURE_API_KEY", "sk-test-json-inputs-1234")
        monkeypatch.setenv("LANGFUSE_DISABLED", "1")
        hosted = server
        yield server


@pytest.fixture
def data_dir(xlam_data_dir, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(xlam_data_dir, copy)
    return copy


def eval_cmd(data_dir: Path, out: Path, track: str, *extra: str) -> list[str]:
    return ["eval", "--track", track, "--model-kind", "azure", "--split", "test", "--data-dir", str(data_dir),
            "--out", str(out), *extra]


def replace_line(path: Path, number: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n")


# -- input files: one line naming the file and line ---------------------------------------------

@pytest.mark.parametrize("hostile,reason", [(DEEP, "nested more than"), (BIG, "digits")])
def test_prepare_xlam_file_deep_or_with_a_huge_integer(hostile, reason, tmp_path, capsys):
    source, out = tmp_path / "xlam.json", tmp_path / "out"
    source.write_text(hostile)
    refused(capsys, ["prepare", "--source", "xlam", "--dataset-path", str(source), "--out-dir", str(out)], str(source), reason)
    lines = tmp_path / "xlam.jsonl"
    rows = json.loads(XLAM_FIXTURE.read_text())
    lines.write_text("".join(json.dumps(row) + "\n" for row in rows[:3]) + hostile + "\n")
    refused(capsys, ["prepare", "--source", "xlam", "--dataset-path", str(lines), "--out-dir", str(out)], f"{lines}:4:", reason)
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("field", ["answers", "tools"])
@pytest.mark.parametrize("hostile,reason", [(DEEP, "nested more than"), ('[{"x": ' + BIG + "}]", "digits")])
def test_prepare_xlam_json_strings_inside_a_row(field, hostile, reason, tmp_path, capsys):
    rows = json.loads(XLAM_FIXTURE.read_text())
    rows[2][field] = hostile
    source, out = tmp_path / "xlam.json", tmp_path / "out"
    source.write_text(json.dumps(rows))
    refused(capsys, ["prepare", "--source", "xlam", "--dataset-path", str(source), "--out-dir", str(out)],
            str(source), f"row id={rows[2]['id']}", repr(field), reason)


@pytest.mark.parametrize("parameters", [["a", "b"], "a string", 7, True])
def test_prepare_xlam_tool_parameters_of_the_wrong_type(parameters, tmp_path, capsys):
    calls = [len(json.loads(row["answers"])) for row in json.loads(XLAM_FIXTURE.read_text())]
    for index in calls.index(1), calls.index(2):  # a row that would be kept, and one skipped as multi-call
        rows = json.loads(XLAM_FIXTURE.read_text())
        tools = json.loads(rows[index]["tools"])
        tools[-1]["parameters"] = parameters
        rows[index]["tools"] = json.dumps(tools)
        source, out = tmp_path / "xlam.json", tmp_path / "out"
        source.write_text(json.dumps(rows))
        refused(capsys, ["prepare", "--source", "xlam", "--dataset-path", str(source), "--out-dir", str(out)],
                str(source), f"row id={rows[index]['id']}", f"'tools' entry {len(tools)}",
                "'parameters' must be an object", type(parameters).__name__)
    assert not out.exists() or not any(out.iterdir())


def test_prepare_xlam_tools_without_parameters_still_convert(tmp_path, capsys):
    rows = json.loads(XLAM_FIXTURE.read_text())
    for row in rows:  # a tool of no parameters, written as null or an empty list
        tools = json.loads(row["tools"])
        for tool in tools:
            if tool["name"] not in {call["name"] for call in json.loads(row["answers"])}:
                tool["parameters"] = None if len(tool["name"]) % 2 else []
        row["tools"] = json.dumps(tools)
    source, out = tmp_path / "xlam.json", tmp_path / "out"
    source.write_text(json.dumps(rows))
    assert main(["prepare", "--source", "xlam", "--dataset-path", str(source), "--out-dir", str(out),
                 "--train", "4", "--val", "2", "--test", "2"]) == 0


@pytest.mark.parametrize("hostile,reason", [(DEEP, "nested more than"), (BIG, "digits")])
@pytest.mark.parametrize("where", ["row line", "gold completion", "answers line"])
def test_eval_inputs_deep_or_with_a_huge_integer(where, hostile, reason, hosted, data_dir, tmp_path, capsys):
    track = "structured"
    rows, out = data_dir / track / "test.jsonl", tmp_path / "out.json"
    if where == "row line":
        replace_line(rows, 3, hostile)
        expected = f"{rows}:3:"
    elif where == "gold completion":
        row = json.loads(rows.read_text().splitlines()[2])
        replace_line(rows, 3, json.dumps({**row, "completion": hostile}))
        expected = f"{rows}: row 3: the structured completion is not JSON"
    else:
        answers = rows.with_name("test.answers.jsonl")
        answers.write_text("".join('{"possible_answer": {}, "functions": []}\n' for _ in rows.read_text().splitlines()))
        replace_line(answers, 2, hostile)
        expected = f"{answers}:2:"
    line = refused(capsys, eval_cmd(data_dir, out, track), expected)
    if where != "gold completion":
        assert reason in line
    assert not hosted.requests and not out.exists()


@pytest.mark.parametrize("hostile,reason", [(DEEP, "nested more than"), ("[" + BIG + "]", "digits")])
def test_infer_functions_deep_or_with_a_huge_integer(hostile, reason, hosted, tmp_path, capsys):
    functions = tmp_path / "functions.json"
    functions.write_text(hostile)
    refused(capsys, ["infer", "--track", "toolcall", "--model-kind", "azure", "--text", "hi", "--functions", str(functions)],
            str(functions), reason)
    assert not hosted.requests


def metrics_pair(tmp_path: Path) -> tuple[Path, Path]:
    from slm_swap.core.results import metrics_document
    from slm_swap.core.tracks import get_track
    from slm_swap.infra.fileio import jsonl_text, write_json

    gold = '<tool_call name="f">{"x":1}</tool_call>'
    paths = []
    for name in ("azure", "slm"):
        records = [{"index": i, "output": gold, **get_track("toolcall").score({"output": gold, "completion": gold})}
                   for i in range(4)]
        (tmp_path / f"{name}.records.jsonl").write_text(jsonl_text(records))
        write_json(tmp_path / f"{name}.json", metrics_document(
            track="toolcall", split="test", dataset={"path": "t", "sha256": "ab" * 32}, model={"kind": name},
            records=records, records_path=f"{name}.records.jsonl"))
        paths.append(tmp_path / f"{name}.json")
    return paths[0], paths[1]


def compare_cmd(azure: Path, slm: Path, delta: str = "0.01") -> list[str]:
    return ["compare", "--track", "toolcall", "--azure", str(azure), "--slm", str(slm), f"--delta={delta}"]


@pytest.mark.parametrize("hostile,reason", [(DEEP, "nested more than"), ('{"n": ' + BIG + "}", "digits")])
def test_compare_metrics_and_records_files_deep_or_with_a_huge_integer(hostile, reason, tmp_path, capsys):
    azure, slm = metrics_pair(tmp_path)
    records = tmp_path / "slm.records.jsonl"
    replace_line(records, 2, hostile)
    refused(capsys, compare_cmd(azure, slm), f"{records}:2:", reason)
    slm.write_text(hostile)
    refused(capsys, compare_cmd(azure, slm), str(slm), reason)


@pytest.mark.parametrize("n", ["1" + "0" * 400, "0", "-3", "2.5"])
def test_compare_metrics_file_with_an_n_out_of_range(n, tmp_path, capsys):
    azure, slm = metrics_pair(tmp_path)
    slm.write_text(slm.read_text().replace('"n": 4', f'"n": {n}'))
    refused(capsys, compare_cmd(azure, slm), str(slm), "'n' must be a whole number")


def test_compare_records_path_of_the_wrong_type(tmp_path, capsys):
    azure, slm = metrics_pair(tmp_path)
    slm.write_text(slm.read_text().replace('"records_path": "slm.records.jsonl"', '"records_path": [1]'))
    refused(capsys, compare_cmd(azure, slm), str(slm), "'records_path'")


@pytest.mark.parametrize("delta", ["1e999", "-1e999", "1", "1.5", "inf", "nan", "-0.01", "", "abc", "1/2",
                                   "1e-999999999", "0x10", "9" * 5000, "\udcff"])
def test_compare_delta_out_of_range_is_refused_before_any_file_is_read(delta, tmp_path, capsys):
    missing = tmp_path / "no-such.json"
    refused(capsys, compare_cmd(missing, missing, delta), "--delta")


@pytest.mark.parametrize("delta,code", [("0", 10), ("0.24", 10), ("0.25", 0), ("0.999", 0), ("1e-3", 10), (".5", 0)])
def test_compare_deltas_in_range_decide(delta, code, tmp_path, capsys):
    azure, slm = metrics_pair(tmp_path)
    records = (tmp_path / "slm.records.jsonl").read_text().splitlines()
    document = json.loads(slm.read_text())
    first = json.loads(records[0])
    first.update(valid_call=False, name_match=False, args_exact=False)
    (tmp_path / "slm.records.jsonl").write_text("\n".join([json.dumps(first), *records[1:]]) + "\n")
    document.update(valid_call_rate=0.75, name_match_rate=0.75, args_exact_rate=0.75)
    slm.write_text(json.dumps(document))
    assert main(compare_cmd(azure, slm, delta)) == code  # one example of 4 is a gap of 0.25


def trajectory(**changes) -> dict:
    record = {"index": 0, "request_id": "r0", "task": "t", "tools": [{"name": "f"}],
              "gold": {"name": "f", "arguments": {"x": 1}, "possible_answer": None},
              "steps": [{"step": 1, "model_output": "Thought: x", "error": None}],
              "messages": [{"role": "user", "content": "t"}, {"role": "assistant", "content": "x"}],
              "finished": True, "state": "success", "final_answer": "ok",
              "tool_calls": [{"name": "f", "arguments": {"x": 1}}], "teacher": "t", "max_steps": 4, "error": None}
    return {**record, **changes}


@pytest.mark.parametrize("line,expected", [
    (DEEP, "nested more than"),
    (json.dumps(trajectory())[:-1] + ', "big": ' + BIG + "}", "digits"),
    (json.dumps(trajectory(steps=[1, 2])), "'steps'"),
    (json.dumps(trajectory(tool_calls=[["f"]])), "'tool_calls'"),
    (json.dumps(trajectory(tool_calls=[{"name": "f", "arguments": [1]}])), "'tool_calls'"),
    (json.dumps(trajectory(messages=[{"role": "user", "content": 5}])), "'messages'"),
    (json.dumps(trajectory(tools=["f"])), "'tools'"),
    (json.dumps(trajectory(gold={"name": "f", "arguments": {}, "possible_answer": [1]})), "possible_answer"),
])
def test_filter_trajectory_lines_deep_huge_or_of_the_wrong_type(line, expected, tmp_path, capsys):
    path, out = tmp_path / "trajectories.jsonl", tmp_path / "filtered"
    path.write_text(json.dumps(trajectory()) + "\n" + line + "\n")
    refused(capsys, ["filter", "--trajectories", str(path), "--out-dir", str(out)], f"{path}:2:", expected)
    assert not out.exists()
    path.write_text(json.dumps(trajectory()) + "\n")
    assert main(["filter", "--trajectories", str(path), "--out-dir", str(out)]) == 0  # the same record, well typed


# -- a model's answer never crashes an eval ------------------------------------------------------

HOSTILE_ANSWERS = {
    "structured": ['{"name": "f", "arguments": {"x": ' + BIG + "}}", DEEP, '{"name": "f\ud800", "arguments": {}}',
                   "a\ud800b", '{"x": 1e999}', '{"x": NaN}'],
    "toolcall": ['<tool_call name="f">{"x": ' + BIG + "}</tool_call>", f'<tool_call name="f">{DEEP}</tool_call>',
                 '<tool_call name="f\ud800">{"x": "\ud800"}</tool_call>', "a\ud800b",
                 '<tool_call name="f">{"x": -1e999}</tool_call>'],
}
VALID_KEY = {"structured": "json_valid", "toolcall": "valid_call"}


@pytest.mark.parametrize("track,answer", [(t, a) for t, answers in HOSTILE_ANSWERS.items() for a in answers],
                         ids=lambda value: value[:30].encode("ascii", "backslashreplace").decode())
def test_a_hostile_answer_is_scored_invalid_and_the_metrics_are_written(track, answer, hosted, data_dir, tmp_path, capsys):
    hosted.answer = answer
    out = tmp_path / "out.json"
    assert main(eval_cmd(data_dir, out, track, "--limit", "2")) == 0, capsys.readouterr().err[-2000:]
    assert "Traceback" not in capsys.readouterr().err
    metrics = json.loads(out.read_text())
    assert metrics["n"] == 2 and metrics["errors"] == 0 and metrics[f"{VALID_KEY[track]}_rate"] == 0.0
    records = read_jsonl(out.with_name("out.records.jsonl"))  # the product's own reader takes them back
    assert [r[VALID_KEY[track]] for r in records] == [False, False]
    if "\ud800" in answer:  # recorded as text: the lone surrogate replaced, the rest as the model wrote it
        assert records[0]["output"] == answer.replace("\ud800", "\ufffd")
    # and what reads the records downstream takes them too: compare, and a resume of the finished run
    assert main(["compare", "--track", track, "--azure", str(out), "--slm", str(out)]) == 0
    assert main(eval_cmd(data_dir, out, track, "--limit", "2", "--resume")) == 0
    assert json.loads(out.read_text())[f"{VALID_KEY[track]}_rate"] == 0.0


def test_values_the_agents_code_makes_are_recorded_as_json_or_text():
    from slm_swap.infra.json_input import loads
    from slm_swap.trajectories.codeact import _plain

    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    for value in (10**5000, deep, float("inf"), "a\ud800b", {1, 2}, {"x": [1, "two"]}):
        plain = _plain(value)
        written = json.dumps(plain, ensure_ascii=False).encode("utf-8")  # writable as UTF-8
        assert loads(written) == plain  # and what the program's reader takes back
    assert _plain({"x": [1, "two"]}) == {"x": [1, "two"]} and _plain([{1}], default=repr) == ["{1}"]


# -- the scripted teacher: malformed requests get a 400 in OpenAI's shape ------------------------

def post(port: int, body: bytes, headers: dict[str, str] | None = None, path: str = "/v1/chat/completions"):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.putrequest("POST", path)
        sent = {"Content-Type": "application/json", "Content-Length": str(len(body)), **(headers or {})}
        for name, value in sent.items():
            connection.putheader(name, value)
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


GOOD_MESSAGES = [{"role": "user", "content": "hello"}]
BAD_BODIES = {
    "nested 100,000 deep": DEEP.encode(),
    "a huge integer": b'{"messages": [], "n": ' + BIG.encode() + b"}",
    "a list body": b"[]",
    "a string body": b'"hi"',
    "max_tokens a list": json.dumps({"messages": GOOD_MESSAGES, "max_tokens": [1]}).encode(),
    "max_tokens zero": json.dumps({"messages": GOOD_MESSAGES, "max_tokens": 0}).encode(),
    "max_completion_tokens a string": json.dumps({"messages": GOOD_MESSAGES, "max_completion_tokens": "9"}).encode(),
    "invalid UTF-8": b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}',
    "a lone surrogate": b'{"messages": [{"role": "user", "content": "a\\ud800"}]}',
    "NaN": b'{"messages": [], "temperature": NaN}',
    "not JSON": b"{messages",
    "empty": b"",
    "messages missing": b"{}",
    "messages an object": json.dumps({"messages": {"role": "user"}}).encode(),
    "messages of strings": json.dumps({"messages": ["hello"]}).encode(),
    "role a number": json.dumps({"messages": [{"role": 1, "content": "x"}]}).encode(),
    "content a number": json.dumps({"messages": [{"role": "user", "content": 5}]}).encode(),
    "content parts of numbers": json.dumps({"messages": [{"role": "user", "content": [1, 2]}]}).encode(),
    "content part text a list": json.dumps({"messages": [{"role": "user", "content": [{"type": "text", "text": []}]}]}).encode(),
    "model a list": json.dumps({"messages": GOOD_MESSAGES, "model": ["x"]}).encode(),
    "stop a number": json.dumps({"messages": GOOD_MESSAGES, "stop": 5}).encode(),
    "stop a list of numbers": json.dumps({"messages": GOOD_MESSAGES, "stop": [1]}).encode(),
}


@pytest.fixture(scope="module")
def teacher():
    from slm_swap.data.bfcl import load_bfcl
    from slm_swap.trajectories.teacher import ScriptedTeacher

    with ScriptedTeacher(load_bfcl(("simple_python",))[0][:2]) as server:
        yield server


@pytest.mark.parametrize("name", list(BAD_BODIES))
def test_teacher_answers_a_malformed_body_with_a_400(name, teacher, capfd):
    status, body = post(teacher._server.server_address[1], BAD_BODIES[name])
    assert status == 400, body
    assert isinstance(body["error"]["message"], str) and body["error"]["type"] == "invalid_request_error"
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize("length,status", [("abc", 400), ("-5", 400), ("\u00b2", 400), ("1" + "0" * 30, 413),
                                           (str(64 << 20), 413)])
def test_teacher_refuses_a_bad_content_length(length, status, teacher, capfd):
    # No body sent: the server answers without reading one, and unread bytes would reset the connection.
    assert post(teacher._server.server_address[1], b"", {"Content-Length": length})[0] == status
    assert "Traceback" not in capfd.readouterr().err


def test_teacher_still_answers_well_formed_requests(teacher):
    port = teacher._server.server_address[1]
    for extra in ({}, {"stop": "never"}, {"stop": None, "max_tokens": None, "model": "m"},
                  {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url"}]}]}):
        status, body = post(port, json.dumps({"messages": GOOD_MESSAGES, **extra}).encode())
        assert status == 200 and body["choices"][0]["message"]["content"] == "I could not complete the task."


def test_infer_prints_an_answer_with_a_lone_surrogate(hosted, capsys):
    hosted.answer = 'a\ud800b'
    assert main(["infer", "--track", "structured", "--model-kind", "azure", "--text", "hi"]) == 0
    assert capsys.readouterr().out.strip().encode("utf-8") == "a\ufffdb".encode("utf-8")
