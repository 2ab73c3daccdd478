"""The gateway's traffic as training rows: the flywheel's collect and rows steps, as pure functions.

    batch = read_new_records(records_path, track)             # the records appended since the last commit
    harvest = rows_from_records(batch.records, scrub=settings.scrub)
    heldout = update_heldout(heldout, harvest.for_track("toolcall"), trained_prompts=..., max_new=8)
    train = merge_train(train, harvest.for_track("toolcall"), heldout)
    write_rows(data_dir / "toolcall" / "test.jsonl", heldout); write_rows(.../"train.jsonl", train)
    commit(batch)                                        # only once the round's outputs are written

Reading (`traffic_reader`) never moves the watermark; `commit` does, so a round killed before its
end reads the same traffic again. A row is made only from a hosted answer that passes the validators
the gateway applies to the SLM's answer (the request's own tools: one call, a known name, the
`tool_choice` name, arguments valid against the schema); its prompt is the track's evaluation prompt
and its completion the track's canonical one, so `train` and `eval` take the rows as they take
`prepare`'s. A row's identity is its request hash: sha256 of the canonical JSON of
(track, user text, functions), after scrubbing.

The held-out traffic test set is drawn from traffic by request hash (a fixed share of all hashes
qualifies, at most `max_new` join per round), is never changed once drawn, and never reaches train:
`merge_train` drops every row whose hash or prompt is held out, old train rows included.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from slm_swap.core.prompts import build_prompt
from slm_swap.core.tool_schema import check_call
from slm_swap.core.tracks import ROW_TRACKS, parse_structured, parse_toolcall
from slm_swap.data.traffic_reader import TrafficBatch, commit, read_new_records, watermark_path
from slm_swap.infra import json_input
from slm_swap.infra.errors import SlmSwapError
from slm_swap.infra.fileio import atomic_write_text, canonical_json, jsonl_text, read_jsonl
from slm_swap.infra.recordable import recordable

__all__ = ["TrafficBatch", "TrafficHarvest", "TrafficRow", "commit", "is_drawn", "merge_train", "read_heldout",
           "read_new_records", "record_source", "request_hash", "rows_from_records", "traffic_path",
           "update_heldout", "watermark_path", "write_rows"]

SOURCES = ("fallback", "shadow", "hosted")  # where the hosted model answered a swappable request
DEFAULT_SHARE = Fraction(1, 5)


@dataclass(frozen=True)
class TrafficRow:
    """One v0 row made from traffic, with where it came from."""

    request_hash: str
    track: str
    source: str  # one of SOURCES
    record_id: str
    time: str
    prompt: str
    completion: str

    def row(self) -> dict[str, str]:
        """The row as `train` and `eval` read it: exactly prompt and completion."""
        return {"prompt": self.prompt, "completion": self.completion}


@dataclass
class TrafficHarvest:
    """The rows made from a batch of records (deduped, the latest answer kept) and, per track and
    source, how many records were seen, how many gave a row, and why the others gave none."""

    rows: list[TrafficRow]
    counts: Counter = field(default_factory=Counter)  # (track, source, "row" | reason code) -> records
    scrubbed: int = 0  # rows that held a secret, removed before the row was made

    def for_track(self, track: str) -> list[TrafficRow]:
        return [row for row in self.rows if row.track == track]

    def summary(self) -> dict[str, dict[str, dict[str, Any]]]:
        """{track: {source: {"seen", "rows", "rejected": {reason: n}}}} for the round's report."""
        table: dict[str, dict[str, dict[str, Any]]] = {}
        for (track, source, outcome), n in sorted(self.counts.items()):
            cell = table.setdefault(track, {}).setdefault(source, {"seen": 0, "rows": 0, "rejected": {}})
            cell["seen"] += n
            if outcome == "row":
                cell["rows"] += n
            else:
                cell["rejected"][outcome] = n
        return table


class _Rejected(Exception):
    """A record that gives no row; the message is the reason code."""


def record_source(record: dict[str, Any]) -> str:
    """fallback (route mode, the hosted model answered instead of the SLM), shadow, hosted (mode
    hosted), slm (the SLM's answer was served) or none (not swappable: no mode)."""
    mode = record.get("mode")
    if mode in ("shadow", "hosted"):
        return mode
    if mode == "route":
        return "slm" if record.get("route") == "slm" else "fallback"
    return "none"


def request_hash(track: str, user_text: str, functions: Sequence[dict[str, Any]]) -> str:
    return hashlib.sha256(canonical_json([track, user_text, list(functions)]).encode("utf-8")).hexdigest()


def rows_from_records(records: Iterable[dict[str, Any]], scrub: Callable[[str], str] = lambda text: text) -> TrafficHarvest:
    """The rows the records' validated hosted answers make, one per request (the latest answer wins;
    the earlier ones count as `duplicate`). `scrub` (a `Settings.scrub`) cleans the user's text, the
    functions and the call before anything is hashed or written."""
    harvest = TrafficHarvest(rows=[])
    latest: dict[str, TrafficRow] = {}
    for record in records:
        track, source = record.get("track") or "none", record_source(record)
        try:
            row, was_scrubbed = _row_from_record(record, source, scrub)
        except _Rejected as rejected:
            harvest.counts[(track, source, str(rejected))] += 1
            continue
        if (earlier := latest.pop(row.request_hash, None)) is not None:
            harvest.counts[(earlier.track, earlier.source, "row")] -= 1
            harvest.counts[(earlier.track, earlier.source, "duplicate")] += 1
        latest[row.request_hash] = row  # re-inserted: the order is that of each request's latest answer
        harvest.counts[(row.track, row.source, "row")] += 1
        harvest.scrubbed += was_scrubbed
    harvest.rows = list(latest.values())
    harvest.counts = +harvest.counts  # drop the zero counts a superseded row left
    return harvest


def _row_from_record(record: dict[str, Any], source: str, scrub: Callable[[str], str]) -> tuple[TrafficRow, bool]:
    request = record.get("request")
    if not isinstance(request, dict):
        raise _Rejected("no_request")  # not swappable, or written under --no-log-content
    if source == "slm":
        raise _Rejected("slm_answered")  # no hosted answer to learn from
    track, user_text, functions = record.get("track"), request.get("user_text"), request.get("functions")
    forced_name = request.get("forced_name")
    if (track not in ROW_TRACKS or source not in SOURCES or not isinstance(user_text, str)
            or not isinstance(functions, list) or not all(isinstance(f, dict) for f in functions)
            or request.get("answer_as") not in ("tool_calls", "text") or not isinstance(forced_name, (str, type(None)))):
        raise _Rejected("invalid_request")
    hosted = record.get("hosted")
    if not isinstance(hosted, dict) or "error" in hosted or hosted.get("output") is None:
        raise _Rejected("hosted_failed")
    name, arguments = _hosted_call(track, request["answer_as"], hosted["output"])
    clean_text, clean_functions = recordable(user_text, scrub), recordable(functions, scrub)
    clean_name, clean_arguments = recordable(name, scrub), recordable(arguments, scrub)
    _check_call(clean_name, clean_arguments, clean_functions, forced_name and recordable(forced_name, scrub))
    row_track = ROW_TRACKS[track]
    completion = row_track.completion(clean_name, clean_arguments)
    if row_track.gold_problem(completion) is not None:  # a name the track's format cannot carry
        raise _Rejected("invalid_hosted_answer")
    row = TrafficRow(request_hash=request_hash(track, clean_text, clean_functions), track=track, source=source,
                     record_id=str(record.get("id")), time=str(record.get("time")),
                     prompt=build_prompt(track, clean_text, clean_functions), completion=completion)
    changed = (clean_text, clean_functions, clean_name, clean_arguments) != (user_text, functions, name, arguments)
    return row, changed


def _hosted_call(track: str, answer_as: str, choices: Any) -> tuple[Any, Any]:
    """(name, arguments) of the hosted answer's first choice, read as the gateway reads the SLM's."""
    message = choices[0].get("message") if isinstance(choices, list) and choices and isinstance(choices[0], dict) else None
    if not isinstance(message, dict):
        raise _Rejected("invalid_hosted_answer")
    if answer_as == "tool_calls":
        calls = message.get("tool_calls")
        if not (isinstance(calls, list) and len(calls) == 1 and isinstance(calls[0], dict)
                and calls[0].get("type") == "function" and isinstance(calls[0].get("function"), dict)):
            raise _Rejected("invalid_hosted_answer")
        function = calls[0]["function"]
        try:
            arguments = json_input.loads(function.get("arguments") or "")
        except (json_input.JsonInputError, TypeError):
            raise _Rejected("invalid_hosted_answer") from None
        return function.get("name"), arguments
    content = message.get("content")
    if not isinstance(content, str):
        raise _Rejected("invalid_hosted_answer")
    if track == "structured":
        value = parse_structured(content)
        if not isinstance(value, dict) or set(value) != {"name", "arguments"}:
            raise _Rejected("invalid_hosted_answer")
        return value["name"], value["arguments"]
    call = parse_toolcall(content)
    if call is None:
        raise _Rejected("invalid_hosted_answer")
    return call


def _check_call(name: Any, arguments: Any, functions: list[dict[str, Any]], forced_name: str | None) -> None:
    if forced_name is not None and name != forced_name:
        raise _Rejected("invalid_hosted_answer")
    try:
        problem = check_call(name, arguments, functions)
    except ValueError:  # the request's own schema cannot be checked: nothing can be trusted
        raise _Rejected("unusable_schema") from None
    if problem is not None:
        raise _Rejected("invalid_hosted_answer")


def is_drawn(request_hash_hex: str, share: Fraction = DEFAULT_SHARE) -> bool:
    """Whether a request belongs to the held-out share: a fixed property of its hash."""
    return int(request_hash_hex, 16) % share.denominator < share.numerator


def update_heldout(heldout: Sequence[TrafficRow], new_rows: Iterable[TrafficRow], *,
                   trained_prompts: Collection[str] = frozenset(), share: Fraction = DEFAULT_SHARE,
                   max_new: int | None = None) -> list[TrafficRow]:
    """The held-out rows, unchanged, then up to `max_new` new rows drawn (`is_drawn`), lowest hash
    first: none already held out or ever trained on (`trained_prompts`: the train rows so far)."""
    if not 0 < share <= 1:
        raise SlmSwapError(f"held-out share must be in (0, 1], got {share}")
    if max_new is not None and max_new < 0:
        raise SlmSwapError(f"held-out rows to add per round must be >= 0, got {max_new}")
    new_rows = list(new_rows)
    _one_track([*heldout, *new_rows])
    hashes, prompts = {row.request_hash for row in heldout}, {row.prompt for row in heldout}
    candidates = {row.request_hash: row for row in new_rows
                  if is_drawn(row.request_hash, share) and row.request_hash not in hashes
                  and row.prompt not in prompts and row.prompt not in trained_prompts}
    drawn = [candidates[key] for key in sorted(candidates)][:max_new]
    return [*heldout, *drawn]


def merge_train(train_rows: Iterable[dict[str, str]], new_rows: Iterable[TrafficRow],
                heldout: Sequence[TrafficRow]) -> list[dict[str, str]]:
    """Train rows then the new ones, one per prompt (a new answer replaces the old in place), with
    every held-out request (by hash or identical prompt) left out, old train rows included."""
    new_rows = list(new_rows)
    _one_track([*heldout, *new_rows])
    held_hashes, held_prompts = {row.request_hash for row in heldout}, {row.prompt for row in heldout}
    merged: dict[str, str] = {}
    for row in train_rows:
        if row["prompt"] not in held_prompts:
            merged[row["prompt"]] = row["completion"]
    for row in new_rows:
        if row.request_hash not in held_hashes and row.prompt not in held_prompts:
            merged[row.prompt] = row.completion
    return [{"prompt": prompt, "completion": completion} for prompt, completion in merged.items()]


def _one_track(rows: Sequence[TrafficRow]) -> None:
    """A split file holds one track's rows: mixing them would make a file `train` refuses."""
    tracks = sorted({row.track for row in rows})
    if len(tracks) > 1:
        raise SlmSwapError(f"rows of several tracks ({', '.join(tracks)}) given for one split: use for_track(...)")


def traffic_path(rows_path: Path) -> Path:
    """Beside a split file, the same rows with their hashes and provenance (`<split>.traffic.jsonl`)."""
    rows_path = Path(rows_path)
    return rows_path.with_name(f"{rows_path.stem}.traffic.jsonl")


def write_rows(path: Path, rows: Sequence[TrafficRow | dict[str, str]]) -> None:
    """The split file `train` and `eval` read, atomically; for traffic rows also `traffic_path` (written
    last, so a kill between the two leaves the old set whole: `read_heldout` reads that one)."""
    kinds = {isinstance(row, TrafficRow) for row in rows}
    if len(kinds) > 1:
        raise SlmSwapError(f"{path}: traffic rows and plain rows mixed: write one kind (merge_train gives plain rows)")
    plain = [row.row() if isinstance(row, TrafficRow) else {"prompt": row["prompt"], "completion": row["completion"]}
             for row in rows]
    atomic_write_text(Path(path), jsonl_text(plain))
    if kinds == {True}:
        atomic_write_text(traffic_path(path), jsonl_text(asdict(row) for row in rows))


def read_heldout(rows_path: Path) -> list[TrafficRow]:
    """The traffic rows `write_rows` kept beside `rows_path`; none before the first round."""
    path = traffic_path(rows_path)
    if not path.exists():
        return []
    names = set(TrafficRow.__dataclass_fields__)
    rows = []
    for number, line in enumerate(read_jsonl(path, "traffic rows file"), start=1):
        if not (isinstance(line, dict) and set(line) == names and all(isinstance(v, str) for v in line.values())):
            raise SlmSwapError(f"{path}: row {number}: expected exactly {', '.join(sorted(names))} (strings)")
        rows.append(TrafficRow(**line))
    return rows
