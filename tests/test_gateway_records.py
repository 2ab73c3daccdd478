"""The gateway's records file survives a kill: whatever instant the gateway dies at, the file reads
back as whole records (a torn last line skipped), and the next gateway cuts the torn line off before
appending, so no record is ever glued to half of another."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from slm_swap.app.gateway_records import RecordsFile, cut_torn_tail, read_records
from slm_swap.infra.errors import SlmSwapError

# A writer as the gateway appends: large records, as fast as it can, until killed.
WRITER = """
import sys
from slm_swap.app.gateway_records import RecordsFile
records = RecordsFile(sys.argv[1])
index = 0
print("ready", flush=True)
while True:
    records.append({"id": f"req-{index}", "route": "slm", "slm": {"output": "x" * 300_000}})
    index += 1
"""


@pytest.mark.parametrize("after_s", [0.3, 0.7, 1.1])
def test_a_kill_mid_write_leaves_a_readable_file(tmp_path, after_s):
    path = tmp_path / "requests.jsonl"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "ready"
    time.sleep(after_s)
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(10)
    records = read_records(path)
    assert records and [r["id"] for r in records] == [f"req-{i}" for i in range(len(records))]
    assert all(len(r["slm"]["output"]) == 300_000 for r in records)

    RecordsFile(path).append({"id": "after-restart"})  # the next gateway: cuts any torn line, then appends
    assert [r["id"] for r in read_records(path)] == [*(r["id"] for r in records), "after-restart"]
    assert path.read_bytes().endswith(b"\n")


def test_a_torn_last_line_is_skipped_then_cut(tmp_path, capsys):
    path = tmp_path / "requests.jsonl"
    torn = b'{"id": "c", "slm": {"outp'
    path.write_bytes(b'{"id": "a"}\n{"id": "b"}\n' + torn)
    assert [r["id"] for r in read_records(path)] == ["a", "b"]
    RecordsFile(path).append({"id": "d"})
    assert f"cut a torn last record ({len(torn)} bytes)" in capsys.readouterr().err
    assert [r["id"] for r in read_records(path)] == ["a", "b", "d"]
    assert cut_torn_tail(path) == 0  # whole lines: nothing to cut


def test_a_bad_line_inside_is_one_line_naming_it(tmp_path):
    path = tmp_path / "requests.jsonl"
    path.write_bytes(b'{"id": "a"}\n{"id": \n{"id": "c"}\n')
    with pytest.raises(SlmSwapError, match=r"requests\.jsonl:2: "):
        read_records(path)
