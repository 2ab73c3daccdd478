"""Each kind of example as one object: how its prompt is written, what its completion looks like,
how an output is parsed and scored, and which metrics decide.

    from slm_swap.core.tracks import get_track
    track = get_track("toolcall")
    track.completion("get_weather", {"city": "Oslo"})   # '<tool_call name="get_weather">{"city":"Oslo"}</tool_call>'
    track.score({"output": output, "completion": gold})  # {"parsed", "valid_call", "name_match", "args_exact"}
    track.core_metrics                                  # what `compare` decides on

Prompts (`prompts`), rows (`data.examples`), training rows (`train.data`), the evals (`evaluation`),
scoring (`metrics`), the decision (`compare`) and the report look a track up here instead of
branching on its name, so a new kind of example is one new object in `TRACKS`.

Every track scores one example the same way, `track.score(record) -> dict`: the record is what
its eval holds for the example (a v0 row with the model's output; an agent run's trajectory), and
the result is the pass/fail keys its metrics are rates of. Where evals or training differ by track,
the track answers the question (`runs_as_agent`, `trains_on_conversations`), so callers never test
which track it is.

Outputs are stripped of surrounding whitespace and nothing else: no code-fence removal, no JSON
repair. An output of `None` is a request that failed; it fails every metric.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from slm_swap.core.bfcl_match import args_ast_match
from slm_swap.core.verdict import verdict
from slm_swap.infra import json_input
from slm_swap.infra.errors import SlmSwapError
from slm_swap.infra.fileio import canonical_json

# Scored beside the core metrics where BFCL possible answers exist; never used by the decision.
AST_METRIC = "args_ast_match_rate"

NOT_PARSED = object()  # what a parser returns for text that is not its format
# The whole (stripped) output must be one wrapper; the name attribute uses double quotes.
_TOOL_CALL = re.compile(r'<tool_call name="([^"<>]*)">(.*)</tool_call>', re.DOTALL)

Call = tuple[Any, Any]  # (name, arguments) as the output gave them


def _loads(text: str) -> Any:
    """A model's answer as JSON; what `json_input` refuses (too deep, a number too long) is not parsed."""
    try:
        return json_input.loads(text)
    except json_input.JsonInputError:
        return NOT_PARSED


def parse_structured(output: str | None) -> Any:
    """The parsed JSON value, or `NOT_PARSED`."""
    return NOT_PARSED if output is None else _loads(output.strip())


def parse_toolcall(output: str | None) -> tuple[str, dict[str, Any]] | None:
    """(name, arguments) when the output is exactly one wrapper around a JSON object, else None."""
    if output is None:
        return None
    match = _TOOL_CALL.fullmatch(output.strip())
    if not match:
        return None
    arguments = _loads(match.group(2))
    if not isinstance(arguments, dict):
        return None
    return match.group(1), arguments


def ast_match(call: Call | None, possible_answer: dict[str, Any], functions: list[dict[str, Any]] | None) -> bool:
    """BFCL's AST check of a call against the row's possible answers."""
    return bool(call is not None and isinstance(call[0], str)
                and args_ast_match(call[0], call[1], possible_answer, functions or []))


class Track:
    """What every track has: a name, the metrics that decide (`core_metrics`) and those shown beside
    them when scored (`info_metrics`), each a `<key>_rate` over per-example pass/fail keys."""

    name: str
    core_metrics: tuple[str, ...]
    info_metrics: tuple[str, ...] = (AST_METRIC,)
    # Whether its eval runs the model as the CodeAct agent over a split's tasks (`evaluation.agent`)
    # rather than asking each row's prompt once (`evaluation.rows`).
    runs_as_agent = False
    # Whether its training rows are whole conversations (`{"messages": [...]}`, loss on the trained
    # turns) rather than `{"prompt", "completion"}` (loss on the completion).
    trains_on_conversations = False
    # Rows per device per optimizer step when training on this track (not one of the seed's fixed
    # settings). With the seed's learning rate and one epoch, the number of steps is what moves the
    # adapter: short v0 rows are batched 4 at a time.
    train_batch_size = 4

    def split_file(self, data_dir: Path, split: str) -> Path:
        """The file an eval of this track reads for `split`: `<data_dir>/<track>/<split>.jsonl`."""
        return Path(data_dir) / self.name / f"{split}.jsonl"

    def score(self, record: dict[str, Any]) -> dict[str, Any]:
        """One example's scores: pass/fail per metric (keys without `_rate`) and what the eval
        records beside them. `record` is the example as this track's eval holds it (see each track)."""
        raise NotImplementedError

    def metric_keys(self, records: list[dict[str, Any]]) -> list[str]:
        """Per-example keys present in every record: the core ones, then each info one scored."""
        keys = [name.removesuffix("_rate") for name in self.core_metrics]
        info = [name.removesuffix("_rate") for name in self.info_metrics]
        return keys + [key for key in info if records and all(key in record for record in records)]

    def metric_names(self, *documents: dict[str, Any]) -> list[str]:
        """The rates to show for metrics files: the core ones, then each info metric every file has."""
        return [*self.core_metrics, *(name for name in self.info_metrics if all(name in d for d in documents))]

    def __repr__(self) -> str:
        return f"<track {self.name}>"


class RowTrack(Track):
    """A v0 track: rows `{"prompt", "completion"}`; one model answer, scored against the gold completion.

    Subclasses set `name`, `template` (with `{functions}` and `{request}`), `core_metrics` and the
    format methods; the AST metric around them is shared."""

    template: str

    def completion(self, name: str, arguments: dict[str, Any]) -> str:
        """The gold completion for a call."""
        raise NotImplementedError

    def gold_problem(self, completion: str) -> str | None:
        """Why a row's gold completion cannot be scored on this track, or None when it can."""
        raise NotImplementedError

    def is_own_completion(self, completion: str) -> bool:
        """Whether a completion is in this track's format (a training file of the other track is not)."""
        raise NotImplementedError

    def _score(self, output: str | None, gold_completion: str) -> tuple[dict[str, Any], Call | None]:
        """(what was parsed and the core pass/fail keys, the call the output expressed or None)."""
        raise NotImplementedError

    def score(self, record: dict[str, Any]) -> dict[str, Any]:
        """What was parsed and pass/fail per metric. `record`: a row with the model's answer:
        `output` (its text, None when the request failed), `completion` (the gold one) and, where the
        split has BFCL answers, `possible_answer` and `functions` (the row's line of `answers.jsonl`)."""
        scored, call = self._score(record["output"], record["completion"])
        if record.get("possible_answer") is not None:
            scored["args_ast_match"] = ast_match(call, record["possible_answer"], record.get("functions"))
        return scored


class StructuredTrack(RowTrack):
    """Track A: one JSON object `{"name": ..., "arguments": {...}}` and nothing else."""

    name = "structured"
    template = (
        "Pick the one function below that fulfils the request and fill in its arguments.\n"
        'Reply with a single JSON object and nothing else: {"name": "<function name>", '
        '"arguments": {"<parameter>": <value>, ...}}\n\n'
        "Functions:\n{functions}\n\n"
        "Request:\n{request}"
    )
    core_metrics = ("json_valid_rate", "exact_match_rate")

    def completion(self, name: str, arguments: dict[str, Any]) -> str:
        return canonical_json({"name": name, "arguments": arguments})

    def gold_problem(self, completion: str) -> str | None:
        return None if parse_structured(completion) is not NOT_PARSED else "the structured completion is not JSON"

    def is_own_completion(self, completion: str) -> bool:
        value = parse_structured(completion)
        return isinstance(value, dict) and {"name", "arguments"} <= set(value)

    def _score(self, output: str | None, gold_completion: str) -> tuple[dict[str, Any], Call | None]:
        value = parse_structured(output)
        gold = parse_structured(gold_completion)  # the rows were checked (`gold_problem`) before any scoring
        valid = value is not NOT_PARSED
        record = {
            "parsed": value if valid else None,
            "json_valid": valid,
            "exact_match": valid and canonical_json(value) == canonical_json(gold),
        }
        call = (value.get("name"), value.get("arguments")) if valid and isinstance(value, dict) else None
        return record, call


class ToolCallTrack(RowTrack):
    """Track B: exactly one `<tool_call name="NAME">{json args}</tool_call>` and nothing else."""

    name = "toolcall"
    template = (
        "Call the one function below that fulfils the request.\n"
        'Reply with exactly one tool call and nothing else: <tool_call name="<function name>">'
        '{"<parameter>": <value>, ...}</tool_call>\n\n'
        "Functions:\n{functions}\n\n"
        "Request:\n{request}"
    )
    core_metrics = ("valid_call_rate", "name_match_rate", "args_exact_rate")

    def completion(self, name: str, arguments: dict[str, Any]) -> str:
        return f'<tool_call name="{name}">{canonical_json(arguments)}</tool_call>'

    def gold_problem(self, completion: str) -> str | None:
        if parse_toolcall(completion) is None:
            return 'the tool-call completion is not exactly one <tool_call name="...">{json object}</tool_call>'
        return None

    def is_own_completion(self, completion: str) -> bool:
        return parse_toolcall(completion) is not None

    def _score(self, output: str | None, gold_completion: str) -> tuple[dict[str, Any], Call | None]:
        call = parse_toolcall(output)
        gold_call = parse_toolcall(gold_completion)
        assert gold_call is not None, f"gold completion is not a tool call: {gold_completion!r}"
        record = {
            "parsed": {"name": call[0], "arguments": call[1]} if call else None,
            "valid_call": call is not None,
            "name_match": call is not None and call[0] == gold_call[0],
            "args_exact": call is not None and canonical_json(call[1]) == canonical_json(gold_call[1]),
        }
        return record, call


class AgentTrack(Track):
    """Phase II: the model as the CodeAct agent (`trajectories.codeact`) on a task, its trajectory
    scored against the task's gold call.

    task_success   the filter's verdict: finished with final_answer(), within the step limit, no
                   unresolved code error, exactly one distinct tool call, equal to the gold one
    valid_code     every model turn's code parsed and ran without error
    and, of the call it made (its last tool call), the v0 metrics: valid_call (it made one),
    name_match, args_exact, args_ast_match (BFCL rows). `steps` (model turns) is recorded too.
    """

    name = "agent"
    core_metrics = ("task_success_rate", "valid_code_rate")
    info_metrics = ("valid_call_rate", "name_match_rate", "args_exact_rate", AST_METRIC)
    runs_as_agent = True
    trains_on_conversations = True
    # An agent conversation is a few hundred tokens of its own, and a capture yields tens to hundreds
    # of them: one per step gives the adapter 4x the updates of batches of 4 for the same tokens
    # (bench/distill_gain.py, the demo's 102 rows: the student's task success went 0 -> 9/16 with 1
    # per step, and stayed 0/16 with 4).
    train_batch_size = 1

    def split_file(self, data_dir: Path, split: str) -> Path:
        """The tasks an agent eval asks (`slm-swap build` writes them beside the conversation rows)."""
        return Path(data_dir) / self.name / f"{split}.tasks.jsonl"

    def score(self, record: dict[str, Any]) -> dict[str, Any]:
        """Pass/fail per metric, the filter's reason and the model turns. `record`: one trajectory
        record as capture writes it (`trajectories.records`), the task's gold call in `gold`."""
        judged = verdict(record)
        turns = [step for step in record["steps"] if step.get("model_output") is not None]
        call = record["tool_calls"][-1] if record["tool_calls"] else None
        gold = record["gold"]
        scored = {
            "task_success": judged["accepted"],
            "reason": judged["reason"],
            "valid_code": bool(turns) and not any(step.get("error") for step in turns),
            "turns": len(turns),
            "valid_call": call is not None,
            "name_match": call is not None and call["name"] == gold["name"],
            "args_exact": call is not None and canonical_json(call["arguments"]) == canonical_json(gold["arguments"]),
        }
        if gold.get("possible_answer") is not None:
            scored["args_ast_match"] = ast_match((call["name"], call["arguments"]) if call else None,
                                                 gold["possible_answer"], record["tools"])
        return scored


# The v0 tracks, in the order datasets, reports and help texts list them.
ROW_TRACKS: dict[str, RowTrack] = {track.name: track for track in (StructuredTrack(), ToolCallTrack())}
TRACKS: dict[str, Track] = {**ROW_TRACKS, "agent": AgentTrack()}


def get_track(name: str) -> Track:
    """The track object named `name`, or one line saying which exist."""
    track = TRACKS.get(name)
    if track is None:
        raise SlmSwapError(f"unknown track {name!r}: expected one of {', '.join(TRACKS)}")
    return track


def get_row_track(name: str) -> RowTrack:
    """A v0 track (rows of prompt and completion), or one line saying which exist."""
    track = get_track(name)
    if track.name not in ROW_TRACKS:
        raise SlmSwapError(f"track {name!r} has no prompt/completion rows: expected one of {', '.join(ROW_TRACKS)}")
    return track
