"""`slm-swap build`: accepted trajectories -> train/val/test, for the v0 tracks and for the agent.

Splits are drawn as `prepare` draws them (`split_examples`: the test split first, a request text
never in two splits, same seed -> same bytes); train gets every accepted task the test and
validation splits do not take. Under `out_dir`:

    structured/, toolcall/{train,val,test}.jsonl   v0 rows through `prepare`'s own row builder; train
                                                   and val complete with the teacher's call, test with
                                                   the gold call (+ BFCL answers files, as `prepare`)
    agent/{train,val,test}.jsonl                   {"messages": [{role, content, trained}]}: the
                                                   teacher's conversation; its turns (thought, code,
                                                   final answer) trained, system, task and every
                                                   observation not
    agent/{split}.tasks.jsonl                      id, task, functions, gold call, BFCL answers, the
                                                   capture's step and turn limits and prompt digest: what
                                                   an agent eval asks and checks
    dataset.json                                   source trajectory file + hash, filter counts, sizes, ids
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from slm_swap.data.examples import Example
from slm_swap.data.prepare import SplitSizes, split_examples, write_dataset
from slm_swap.infra.errors import SlmSwapError
from slm_swap.infra.fileio import jsonl_text, read_json, sha256_file
from slm_swap.llm.agent_models import AGENT_MAX_NEW_TOKENS
from slm_swap.trajectories.codeact import prompt_digest
from slm_swap.trajectories.records import read_trajectories

DEFAULT_VAL, DEFAULT_TEST = 8, 8


def agent_row(record: dict[str, Any]) -> dict[str, Any]:
    """The trajectory's conversation, each message flagged `trained` (the model's own turns only).
    What follows the last model turn (the observation of final_answer) teaches nothing: dropped."""
    messages = list(record["messages"])
    while messages and messages[-1]["role"] != "assistant":
        messages.pop()
    if not messages:
        raise SlmSwapError(f"trajectory {record['request_id']}: no model turn to train on")
    return {"messages": [{"role": m["role"], "content": m["content"], "trained": m["role"] == "assistant"} for m in messages]}


def agent_task(record: dict[str, Any]) -> dict[str, Any]:
    """What an agent eval asks and checks: the task, its signatures, the gold call, the step and turn limits, and
    a digest of the system prompt the teacher was given (its tools as the model saw them), so an eval
    whose tools would show the student something else is refused."""
    gold = record["gold"]
    system = record["messages"][0] if record["messages"] and record["messages"][0]["role"] == "system" else None
    return {"id": record["request_id"], "task": record["task"], "functions": record["tools"],
            "gold": {"name": gold["name"], "arguments": gold["arguments"]}, "possible_answer": gold.get("possible_answer"),
            "max_steps": record["max_steps"],
            "max_turn_tokens": record.get("max_turn_tokens", AGENT_MAX_NEW_TOKENS),
            "system_prompt_sha256": prompt_digest(system["content"]) if system else None}


def build(accepted: Path, out_dir: Path, *, val: int = DEFAULT_VAL, test: int = DEFAULT_TEST, seed: int = 0) -> dict[str, Any]:
    """Write the splits (see the module doc); returns the `dataset.json` manifest."""
    accepted = Path(accepted)
    records = read_trajectories(accepted)
    for number, record in enumerate(records, start=1):
        if not (record.get("verdict") or {}).get("accepted"):
            raise SlmSwapError(f"{accepted}: record {number} ({record['request_id']}) is not an accepted "
                               "trajectory: build from the accepted file `slm-swap filter` writes")
    if not records:
        raise SlmSwapError(f"{accepted}: no accepted trajectories to build from")
    if min(val, test) < 0:
        raise SlmSwapError("--val and --test must not be negative")
    by_id = {record["request_id"]: record for record in records}
    gold_examples = [Example(id=r["request_id"], request=r["task"], functions=r["tools"], name=r["gold"]["name"],
                             arguments=r["gold"]["arguments"], possible_answer=r["gold"].get("possible_answer"))
                     for r in records]
    distinct = len({example.request for example in gold_examples})
    if distinct <= val + test:
        raise SlmSwapError(f"{accepted}: {distinct} accepted tasks, but --val {val} --test {test} would leave none to train on")
    splits, duplicates = split_examples(gold_examples, SplitSizes(train=distinct - val - test, val=val, test=test), seed)
    # Train and validation learn from the teacher's call; the test split keeps the gold call to score against.
    for split in ("train", "val"):
        splits[split] = [replace(e, name=by_id[e.id]["tool_calls"][0]["name"], arguments=by_id[e.id]["tool_calls"][0]["arguments"])
                         for e in splits[split]]
    extra_files = {}
    for split, examples in splits.items():
        extra_files[f"agent/{split}.jsonl"] = jsonl_text(agent_row(by_id[e.id]) for e in examples)
        extra_files[f"agent/{split}.tasks.jsonl"] = jsonl_text(agent_task(by_id[e.id]) for e in examples)
    summary_path = accepted.with_name("filter.json")
    filter_counts = read_json(summary_path, "filter summary") if summary_path.exists() else None
    teachers = sorted({record["teacher"] for record in records})
    source = {"name": "trajectories", "path": str(accepted), "sha256": sha256_file(accepted), "teachers": teachers}
    return write_dataset(splits, Path(out_dir), source, Counter({"duplicate_request": duplicates} if duplicates else {}),
                         seed, extra_files=extra_files, extra_manifest={"filter": filter_counts})
