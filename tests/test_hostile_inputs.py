"""Hostile input, generated: every command's input files, the models' answers and the teacher
server's request bodies get garbage, deep nesting, huge numbers, odd Unicode and wrong types.

What a user relies on, whatever the input:
- a command ends with exit 0 (it was usable) or exit 2 and exactly one error line, never a traceback;
- a refused command sent no request, wrote no output and left no temporary file;
- a model's answer never stops an eval: the metrics file is written and counts every row;
- a server answers a bad body with a 4xx error in OpenAI's shape, and logs no traceback.

Hypothesis draws the inputs deterministically (`derandomize`, tests/conftest.py), so every machine
tries the same cases; `max_examples` keeps the whole file near half a minute.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import error_lines
from openai_stub import OpenAIStub
from slm_swap.app.cli import main

# (conftest.py's profile makes the draws the same on every machine.)
HOSTILE = settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
TRIED: dict[str, int] = {}  # cases run per test: conftest.py prints them at the end of the run

# -- what hostile input looks like ---------------------------------------------------------------

# The cases that crashed before (issue 29): each test that takes a file tries them all (`with_extremes`).
EXTREMES = [
    "[" * 100_000,                      # RecursionError in json
    '{"a":' * 100_000 + "1" + "}" * 100_000,
    "[" * 200 + "]" * 200,              # parses, but deeper than anything should nest
    "1" * 5_000,                        # past Python's integer digit limit
    '{"n": -' + "9" * 4_301 + "}",
    "1e999", '[-1e999]', "NaN", '{"x": Infinity}',   # not JSON, or not finite
    '"a\\ud800b"', '{"k\\udfff": 1}',  # lone surrogates: not text
    "", " ", "\ufeff{}", "{", "null", "[]", "{}", "0", '"text"', "\x00",
]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
documents = st.one_of(st.sampled_from(EXTREMES), json_values.map(json.dumps), st.text(max_size=200))
# As bytes: the same, plus bytes that are not UTF-8 at all.
file_bytes = st.one_of(documents.map(lambda text: text.encode("utf-8", "surrogatepass")),
                       st.binary(max_size=200))


def mutated_row(row: dict[str, Any]):
    """`row` with one field replaced by a value of any type, or removed, or with one more field."""
    keys = sorted(row)
    replaced = st.tuples(st.sampled_from(keys), json_values).map(lambda kv: {**row, kv[0]: kv[1]})
    dropped = st.sampled_from(keys).map(lambda key: {k: v for k, v in row.items() if k != key})
    return st.one_of(replaced, dropped, json_values)


def jsonl_with_a_bad_line(lines: list[str]):
    """The file with one line replaced by a hostile document or a mutated row."""
    rows = [json.loads(line) for line in lines]

    def place(index: int):
        bad = st.one_of(documents, mutated_row(rows[index]).map(json.dumps))
        return bad.map(lambda text: "\n".join(lines[:index] + [text] + lines[index + 1:]) + "\n")

    return st.integers(0, len(lines) - 1).flatmap(place)


def with_extremes(argument: str = "content", **fixed: Any):
    """Every case of EXTREMES, as bytes in `argument`, tried as an explicit example before the drawn
    ones (a draw may miss some); `fixed` gives the test's other arguments for them."""
    def decorate(test):
        for text in EXTREMES:
            test = example(**{argument: text.encode("utf-8", "surrogatepass")}, **fixed)(test)
        return test
    return decorate


# -- running a command ---------------------------------------------------------------------------

def run(argv: list[str]) -> tuple[int, str]:
    """The command in this process: its exit code and stderr. An exception escaping `main` (a
    traceback for the user) fails the test where it happens."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, stderr.getvalue()


def check_ending(name: str, code: int, stderr: str, outputs: list[Path], ok_codes=(0,)) -> None:
    """Exit 0 (or another documented success code), or exit 2 with one line and nothing written."""
    TRIED[name] = TRIED.get(name, 0) + 1
    assert "Traceback" not in stderr
    assert code in (*ok_codes, 2), (code, stderr)
    if code == 2:
        lines = error_lines(stderr)
        assert len(lines) == 1 and lines[0].startswith("slm-swap: error: "), lines
        assert not [path for path in outputs if path.exists()], "a refused command wrote its output"
    for path in outputs:
        folder = path if path.is_dir() else path.parent
        if folder.exists():
            assert not list(folder.rglob("*.tmp")), "a temporary file was left behind"


@pytest.fixture
def scratch():
    """A fresh folder per generated case (pytest's tmp_path is one per test, not per example)."""
    roots = []

    def make() -> Path:
        roots.append(Path(tempfile.mkdtemp(prefix="hostile-")))
        return roots[-1]

    yield make
    for root in roots:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def hosted():
    """The hosted model: answers whatever the test sets in `hosted.answer`; records requests."""
    server = OpenAIStub(lambda messages: server.answer)
    server.answer = "ok"
    with server:
        yield server


@pytest.fixture
def hosted_env(hosted, monkeypatch):
    """The environment pointing at `hosted`. Tests clear `hosted.requests` per generated case
    (a fixture runs once per test, not once per case)."""
    for key in ("HOSTED_BASE_URL", "HOSTED_MODEL", "HOSTED_API_KEY", "AZURE_DEPLOYMENT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AZURE_ENDPOINT", f"{hosted.url}/openai/deployments/d")
    monkeypatch.setenv("AZURE_API_KEY", "sk-hostile-suite-key")
    return hosted


def eval_argv(data_dir: Path, out: Path, track: str, *extra: str) -> list[str]:
    return ["eval", "--track", track, "--model-kind", "azure", "--split", "test", "--data-dir", str(data_dir),
            "--out", str(out), "--max-retries", "0", *extra]


def eval_outputs(out: Path) -> list[Path]:
    return [out, out.with_suffix(".records.jsonl"), out.with_suffix(".run.json")]


# -- input files ---------------------------------------------------------------------------------

@HOSTILE
@with_extremes(suffix=".json")
@given(content=file_bytes, suffix=st.sampled_from([".json", ".jsonl"]))
def test_prepare_xlam_file(content, suffix, scratch):
    root = scratch()
    source = root / f"xlam{suffix}"
    source.write_bytes(content)
    out = root / "data"
    code, stderr = run(["prepare", "--source", "xlam", "--dataset-path", str(source), "--train", "1", "--val", "0",
                        "--test", "0", "--out-dir", str(out)])
    check_ending("prepare: the xLAM file", code, stderr, [out])


XLAM_ROWS = json.loads((Path(__file__).parent / "fixtures" / "xlam_sample.json").read_text())


def xlam_row_fields(row: dict[str, Any]):
    """A row whose `tools` or `answers` (JSON held in a string) is hostile inside, or whose tool's
    parts have the wrong types (a `parameters` list)."""
    inner = st.tuples(st.sampled_from(["tools", "answers"]), documents).map(lambda kv: {**row, kv[0]: kv[1]})
    tool = json.loads(row["tools"])[0]
    wrong_part = st.tuples(st.sampled_from(sorted(tool)), json_values).map(
        lambda kv: {**row, "tools": json.dumps([{**tool, kv[0]: kv[1]}])})
    return st.one_of(inner, wrong_part, mutated_row(row))


@HOSTILE
@given(row=xlam_row_fields(XLAM_ROWS[0]))
def test_prepare_xlam_row(row, scratch):
    root = scratch()
    source = root / "xlam.json"
    source.write_text(json.dumps([row] + XLAM_ROWS[1:6]))
    out = root / "data"
    code, stderr = run(["prepare", "--source", "xlam", "--dataset-path", str(source), "--train", "1", "--val", "0",
                        "--test", "1", "--out-dir", str(out)])
    check_ending("prepare: an xLAM row", code, stderr, [out])


@pytest.mark.parametrize("track", ["structured", "toolcall"])
@HOSTILE
@given(data=st.data())
def test_eval_rows_file(track, data, xlam_data_dir, hosted_env, scratch):
    hosted_env.requests.clear()
    root = scratch()
    data_dir = root / "data"
    shutil.copytree(xlam_data_dir, data_dir)
    rows = data_dir / track / "test.jsonl"
    rows.write_text(data.draw(jsonl_with_a_bad_line(rows.read_text().splitlines())))
    out = root / "eval" / "metrics.json"
    code, stderr = run(eval_argv(data_dir, out, track))
    check_ending(f"eval {track}: a rows file", code, stderr, eval_outputs(out))
    if code == 2:
        assert not hosted_env.requests, "a refused eval sent requests"


@HOSTILE
@with_extremes()
@given(content=file_bytes)
def test_eval_answers_file(content, xlam_data_dir, hosted_env, scratch):
    hosted_env.requests.clear()
    root = scratch()
    data_dir = root / "data"
    shutil.copytree(xlam_data_dir, data_dir)
    (data_dir / "toolcall" / "test.answers.jsonl").write_bytes(content)
    out = root / "eval" / "metrics.json"
    code, stderr = run(eval_argv(data_dir, out, "toolcall"))
    check_ending("eval: an answers file", code, stderr, eval_outputs(out))
    if code == 2:
        assert not hosted_env.requests, "a refused eval sent requests"


@HOSTILE
@with_extremes()
@given(content=file_bytes)
def test_infer_functions_file(content, hosted_env, scratch):
    hosted_env.requests.clear()
    functions = scratch() / "functions.json"
    functions.write_bytes(content)
    code, stderr = run(["infer", "--track", "toolcall", "--model-kind", "azure", "--text", "hi",
                        "--functions", str(functions)])
    check_ending("infer: a functions file", code, stderr, [])


@pytest.fixture(scope="module")
def metrics_file(xlam_data_dir, hosted, tmp_path_factory):
    """A real metrics file (and its records) from a toolcall eval, to compare against."""
    out = tmp_path_factory.mktemp("metrics") / "toolcall_azure_test.json"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AZURE_ENDPOINT", f"{hosted.url}/openai/deployments/d")
        patch.setenv("AZURE_API_KEY", "sk-hostile-suite-key")
        patch.delenv("HOSTED_BASE_URL", raising=False)
        assert run(eval_argv(xlam_data_dir, out, "toolcall"))[0] == 0
    return out


@HOSTILE
@with_extremes(side="--slm", records=False)
@given(content=file_bytes, side=st.sampled_from(["--azure", "--slm"]), records=st.booleans())
def test_compare_files(content, side, records, metrics_file, scratch):
    root = scratch()
    good = root / "good.json"
    shutil.copy(metrics_file, good)
    shutil.copy(metrics_file.with_suffix(".records.jsonl"), good.with_suffix(".records.jsonl"))
    bad = root / "bad.json"
    shutil.copy(metrics_file, bad)
    shutil.copy(metrics_file.with_suffix(".records.jsonl"), bad.with_suffix(".records.jsonl"))
    (bad.with_suffix(".records.jsonl") if records else bad).write_bytes(content)
    files = {"--azure": good, "--slm": good, side: bad}
    code, stderr = run(["compare", "--track", "toolcall", "--azure", str(files["--azure"]), "--slm", str(files["--slm"])])
    check_ending("compare: a metrics or records file", code, stderr, [], ok_codes=(0, 10))


@HOSTILE
@given(delta=st.one_of(st.sampled_from(["1e999", "-1e999", "nan", "inf", "-0.5", "1", "1.5", "", "0x10", "1e-999999",
                                        "9" * 5000, "0." + "1" * 5000]), st.text(max_size=12)))
def test_compare_delta(delta, metrics_file):
    code, stderr = run(["compare", "--track", "toolcall", "--azure", str(metrics_file), "--slm", str(metrics_file),
                        f"--delta={delta}"])  # one token: argparse takes "-1e999" for a flag
    check_ending("compare: --delta", code, stderr, [])


@HOSTILE
@with_extremes()
@given(content=file_bytes)
def test_filter_trajectories_file(content, scratch):
    root = scratch()
    trajectories = root / "trajectories.jsonl"
    trajectories.write_bytes(content)
    out = root / "filtered"
    code, stderr = run(["filter", "--trajectories", str(trajectories), "--out-dir", str(out)])
    check_ending("filter: a trajectories file", code, stderr, [out])


@HOSTILE
@with_extremes()
@given(content=file_bytes)
def test_build_accepted_file(content, scratch):
    root = scratch()
    accepted = root / "accepted.jsonl"
    accepted.write_bytes(content)
    out = root / "built"
    code, stderr = run(["build", "--accepted", str(accepted), "--out-dir", str(out), "--val", "0", "--test", "0"])
    check_ending("build: an accepted file", code, stderr, [out])


@HOSTILE
@given(data=st.data(), split=st.sampled_from(["train", "val"]))
def test_train_rows_file(data, split, xlam_data_dir, scratch, monkeypatch):
    """Refused before accelerate starts; a file that happens to be usable is not trained on here."""
    launched = []
    monkeypatch.setattr("slm_swap.app.finetune_step.launch_training", lambda plan, *a, **k: launched.append(plan))
    root = scratch()
    rows = root / f"{split}.jsonl"
    rows.write_text(data.draw(jsonl_with_a_bad_line((xlam_data_dir / "toolcall" / f"{split}.jsonl").read_text().splitlines())))
    other = xlam_data_dir / "toolcall" / ("val.jsonl" if split == "train" else "train.jsonl")
    paths = {split: rows, "val" if split == "train" else "train": other}
    out = root / "adapter"
    code, stderr = run(["train", "--track", "toolcall", "--train", str(paths["train"]), "--val", str(paths["val"]),
                        "--out", str(out)])
    check_ending("train: a rows file", code, stderr, [out])
    assert code != 2 or not launched


@HOSTILE
@with_extremes()
@given(content=file_bytes)
def test_capture_xlam_file(content, hosted_env, scratch):
    hosted_env.requests.clear()
    root = scratch()
    source = root / "xlam.json"
    source.write_bytes(content)
    out = root / "trajectories.jsonl"
    code, stderr = run(["capture", "--source", "xlam", "--dataset-path", str(source), "--limit", "1",
                        "--max-steps", "1", "--max-retries", "0", "--out", str(out)])
    check_ending("capture: the xLAM file", code, stderr, [out])
    if code == 2:
        assert not hosted_env.requests, "a refused capture sent requests"


@HOSTILE
@given(data=st.data())
def test_eval_resume_records_file(data, metrics_file, xlam_data_dir, hosted_env, scratch):
    """An edited records file on --resume: the eval finishes with every row counted, or refuses."""
    hosted_env.requests.clear()
    out = scratch() / "toolcall_azure_test.json"
    for suffix in (".json", ".records.jsonl", ".run.json"):
        shutil.copy(metrics_file.with_suffix(suffix), out.with_suffix(suffix))
    records = out.with_suffix(".records.jsonl")
    records.write_text(data.draw(jsonl_with_a_bad_line(records.read_text().splitlines())))
    code, stderr = run(eval_argv(xlam_data_dir, out, "toolcall", "--resume"))
    check_ending("eval --resume: a records file", code, stderr, [])
    if code == 0:
        metrics = json.loads(out.read_text())
        assert metrics["n"] == len((xlam_data_dir / "toolcall" / "test.jsonl").read_text().splitlines())


# -- flags and settings --------------------------------------------------------------------------

NUMBER_TEXTS = st.one_of(st.sampled_from(["nan", "inf", "-inf", "1e308", "-1e-300", "-0", "0", "-1", "1",
                                          "99999999999999999999", "1e999"]),
                         st.integers(-10**6, 10**6).map(str), st.floats().map(repr))


@HOSTILE
@given(flag=st.sampled_from(["--limit", "--concurrency", "--timeout", "--max-retries", "--max-errors", "--batch-size"]),
       value=NUMBER_TEXTS)
def test_eval_numeric_flags(flag, value, xlam_data_dir, hosted_env, scratch):
    """Every number argparse takes is either in range (the eval runs) or one line naming the flag."""
    hosted_env.requests.clear()
    out = scratch() / "metrics.json"
    argv = eval_argv(xlam_data_dir, out, "toolcall", "--limit", "1")
    if flag == "--max-retries":
        argv = argv[:argv.index("--max-retries")] + argv[argv.index("--max-retries") + 2:]
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main([*argv, flag, value])
        except SystemExit as exit:  # argparse refuses what its type cannot read: its usage line and one error
            code = exit.code
    TRIED["eval: a numeric flag"] = TRIED.get("eval: a numeric flag", 0) + 1
    assert "Traceback" not in stderr.getvalue() and code in (0, 2), (code, stderr.getvalue())
    if code == 2:
        assert flag in stderr.getvalue().splitlines()[-1] and not out.exists(), stderr.getvalue()
        assert not hosted_env.requests


@HOSTILE
@given(value=st.one_of(st.sampled_from(["", " ", "maybe", "2", "-1", "yes", "no", "TRUE", "off", "1.0", "\u00a0"]),
                       st.text(max_size=8).filter(lambda text: "\x00" not in text)))
def test_langfuse_disabled_setting(value, metrics_file, monkeypatch):
    """LANGFUSE_DISABLED as anything: the command runs (tracing off, or required and missing: one line)."""
    for key in ("LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY", "LANGFUSE_HOST"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("LANGFUSE_DISABLED", value)
    code, stderr = run(["compare", "--track", "toolcall", "--azure", str(metrics_file), "--slm", str(metrics_file)])
    check_ending("settings: LANGFUSE_DISABLED", code, stderr, [], ok_codes=(0, 10))
    if code == 2:
        assert "LANGFUSE" in stderr


# -- the models' answers -------------------------------------------------------------------------

@pytest.mark.parametrize("track", ["structured", "toolcall"])
@settings(HOSTILE, max_examples=15)
@given(answer=st.one_of(documents, documents.map(lambda text: f'<tool_call name="f">{text}</tool_call>')))
def test_eval_scores_any_answer(track, answer, xlam_data_dir, hosted_env, scratch):
    """Whatever the model says, the eval finishes and counts every row; a hostile answer is invalid."""
    hosted_env.requests.clear()
    hosted_env.answer = answer
    out = scratch() / "metrics.json"
    code, stderr = run(eval_argv(xlam_data_dir, out, track, "--limit", "2"))
    hosted_env.answer = "ok"
    check_ending(f"eval {track}: a model's answer", code, stderr, [])
    assert code == 0, stderr
    metrics = json.loads(out.read_text())
    assert metrics["n"] == 2 and metrics["errors"] == 0


# -- the scripted teacher's request bodies -------------------------------------------------------

@pytest.fixture(scope="module")
def teacher():
    """The scripted teacher, with every error its request handlers raise recorded (socketserver
    would print each as a traceback in the teacher's log)."""
    from slm_swap.trajectories.teacher import LoopbackHTTPServer, ScriptedTeacher

    errors: list[BaseException | None] = []
    print_traceback = LoopbackHTTPServer.handle_error

    def record(server, request, client_address):
        errors.append(sys.exc_info()[1])
        print_traceback(server, request, client_address)

    with pytest.MonkeyPatch.context() as patch, ScriptedTeacher([]) as server:
        patch.setattr(LoopbackHTTPServer, "handle_error", record)
        yield server, errors


def post(url: str, body: bytes) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


chat_bodies = st.fixed_dictionaries({}, optional={
    "model": json_values, "messages": st.one_of(json_values, st.lists(st.fixed_dictionaries(
        {}, optional={"role": json_values, "content": json_values}), max_size=3)),
    "max_tokens": json_values, "stop": json_values, "temperature": json_values,
}).map(lambda body: json.dumps(body).encode())


@HOSTILE
@with_extremes("body")
@given(body=st.one_of(file_bytes, chat_bodies))
def test_teacher_answers_any_body(body, teacher):
    server, errors = teacher
    status, answer = post(f"{server.url}/chat/completions", body)
    TRIED["teacher: a request body"] = TRIED.get("teacher: a request body", 0) + 1
    assert status == 200 or (400 <= status < 500 and isinstance(answer.get("error"), dict)
                             and answer["error"].get("message")), (status, answer)
    assert not errors, errors
