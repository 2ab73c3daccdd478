"""Progress lines for long work where a bar cannot show (the pipeline's evals, in Prefect's logs)."""

from __future__ import annotations

import json

from slm_swap.evaluation.rows import run_eval
from slm_swap.infra.progress import ProgressLines
from slm_swap.llm.completion import Completion


def test_lines_say_done_of_total_rate_and_time_left_at_start_every_interval_and_end():
    now = [0.0]
    lines: list[str] = []
    meter = ProgressLines("eval toolcall/slm", total=64, initial=4, every_s=15, clock=lambda: now[0], write=lines.append)
    for _ in range(30):  # one example every 2 s
        now[0] += 2
        meter.update()
    meter.close()
    assert lines[0] == "eval toolcall/slm: 4/64 examples"
    # 8 examples in 16 s (the first line after 15 s): 0.50/s, 52 left -> 104 s
    assert lines[1] == "eval toolcall/slm: 12/64 examples, 0.50/s, about 1m44s left"
    assert len(lines) == 5 and lines[-1].startswith("eval toolcall/slm: 34/64 examples, 0.50/s")
    meter.close()
    assert len(lines) == 5  # nothing new to say


class EchoClient:
    kind, identity = "slm", "echo"

    def complete(self, messages_list):
        for index, _ in enumerate(messages_list):
            yield Completion(index, "not a call", None, 0.0)

    def close(self):
        pass


def test_an_eval_with_lines_prints_its_progress(xlam_data_dir, tmp_path, capsys):
    document = run_eval(track="toolcall", split="test", data_dir=xlam_data_dir, out=tmp_path / "m.json",
                        client=EchoClient(), progress="lines")
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "eval toolcall/slm: 0/12 examples"
    assert out[-1].startswith("eval toolcall/slm: 12/12 examples, ") and out[-1].endswith("about 0s left")
    assert json.loads((tmp_path / "m.json").read_text())["n"] == document["n"] == 12
