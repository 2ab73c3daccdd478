"""The deployments end to end, as on the GPU box: a real `prefect server start` (free port, SQLite in
a temp PREFECT_HOME), `deployments/setup_work_pools.sh` (work pools `default` and `gpu`, the
`slm-gpu` limit, `prefect deploy --all` from prefect.yaml), process workers started outside the
checkout (the pull step must move flow runs into it), then:

1. `prefect deployment run 'slm-swap-finetune/gpu' --param ... --watch` trains an adapter;
2. `prefect deployment run 'slm-swap-pipeline/nightly' --params ... --watch` runs the parent on the
   `default` pool, which starts the fine-tune as the `gpu` deployment (a subflow under the parent);
3. `prefect deployment run 'slm-swap-flywheel/nightly' --params ... --watch`: a flywheel round on the
   `default` pool over an empty records file, which ends "nothing to do" (its fine-tune would go to the
   `gpu` deployment as the pipeline's does; tests/test_flywheel.py runs that subflow in-process);
4. `prefect deployment run 'slm-swap-distill/weekly' --params ... --watch`: Phase II on the `default`
   pool against the scripted teacher, its fine-tune (`track=agent`) on the `gpu` deployment.

Tiny model, xLAM fixture data, an OpenAI-compatible stub as the hosted side; seconds of training.
Server and workers are always stopped at the end.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from uuid import UUID

import httpx
import pytest

from openai_stub import OpenAIStub
from slm_swap.data.bfcl import load_bfcl
from slm_swap.train.launch import CPU_CONFIG
from slm_swap.train.run import MANIFEST
from slm_swap.trajectories.teacher import ScriptedTeacher

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop(process: subprocess.Popen, first: int = signal.SIGINT, grace_s: float = 20.0) -> None:
    """Stop a process we started and everything it started (its own session / process group)."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, first)
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    except ProcessLookupError:
        pass


@contextmanager
def started(command: list[str], env: dict[str, str], cwd: Path, log: Path, first_signal: int = signal.SIGINT):
    with open(log, "wb") as out:
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield process
        finally:
            stop(process, first_signal)


def prefect(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([PREFECT, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def api(env: dict[str, str], method: str, path: str, body: dict | None = None):
    response = httpx.request(method, env["PREFECT_API_URL"] + path, json=body, timeout=30)
    response.raise_for_status()
    return response.json()


@pytest.fixture
def prefect_env(tmp_path, tiny_model_dir):
    """Environment for the server, the CLI and the workers: nothing of the developer's Prefect profile."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_CLI_PROMPT": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PWD": str(REPO),  # what prefect.yaml's {{ $PWD }} becomes: this checkout
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",  # this venv's prefect
        "SLM_MODEL_PATH": str(tiny_model_dir),
        "LANGFUSE_DISABLED": "1",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    })
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy",
                 "AZURE_ENDPOINT", "AZURE_API_KEY", "AZURE_DEPLOYMENT", "PREFECT__FLOW_RUN_ID"):
        env.pop(name, None)
    with started([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env, tmp_path,
                 tmp_path / "server.log", first_signal=signal.SIGTERM):
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(env["PREFECT_API_URL"] + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()[-3000:]
            time.sleep(0.5)
        yield env


def flow_run_id_from(output: str) -> UUID:
    return UUID(re.search(r"UUID: ([0-9a-f-]{36})", output).group(1))


@contextmanager
def workers(env: dict[str, str], cwd: Path, logs: Path, name: str):
    """A `gpu` worker (one run at a time) and a `default` worker; logs worker-<pool>-<name>.log."""
    with started([PREFECT, "worker", "start", "--pool", "gpu", "--type", "process", "--limit", "1"], env, cwd,
                 logs / f"worker-gpu-{name}.log"), \
         started([PREFECT, "worker", "start", "--pool", "default", "--type", "process"], env, cwd,
                 logs / f"worker-default-{name}.log"):
        yield


def run_parent(env: dict[str, str], deployment: str, config: dict, log: Path, parameter: str = "config") -> UUID:
    """`prefect deployment run DEPLOYMENT --params {PARAMETER: config} --watch`; the flow-run id."""
    run = prefect(env, "deployment", "run", deployment, "--params", json.dumps({parameter: config}),
                  "--watch", "--watch-timeout", "300", timeout=400)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:] + log.read_text()[-6000:]
    return flow_run_id_from(run.stdout)


def only_child(env: dict[str, str], parent_id: UUID) -> dict:
    (child,) = api(env, "POST", "/flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": [str(parent_id)]}}})
    return child


def test_deployments_run_on_their_work_pools(prefect_env, xlam_data_dir, tmp_path):
    env = prefect_env
    setup = subprocess.run(["bash", "deployments/setup_work_pools.sh"], env=env, cwd=REPO, capture_output=True, text=True,
                           timeout=300)
    assert setup.returncode == 0, setup.stdout[-3000:] + setup.stderr[-3000:]
    assert all(name in setup.stdout for name in ("slm-swap-pipeline/nightly", "slm-swap-finetune/gpu",
                                                 "slm-swap-distill/weekly", "slm-swap-flywheel/nightly"))
    pools = {pool["name"]: pool["type"] for pool in api(env, "POST", "/work_pools/filter", {})}
    assert pools["gpu"] == "process" and pools["default"] == "process"
    assert api(env, "GET", "/v2/concurrency_limits/tag:slm-gpu")["limit"] == 1

    nightly = json.loads(prefect(env, "deployment", "inspect", "slm-swap-pipeline/nightly", "--output", "json").stdout)
    (schedule,) = nightly["schedules"]
    assert schedule["schedule"]["cron"] == "0 2 * * *" and schedule["schedule"]["timezone"] == "Europe/Berlin"
    assert nightly["work_pool_name"] == "default"
    gpu = json.loads(prefect(env, "deployment", "inspect", "slm-swap-finetune/gpu", "--output", "json").stdout)
    assert gpu["work_pool_name"] == "gpu" and gpu["tags"] == ["gpu"]
    assert gpu["pull_steps"] == [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}]
    flywheel = json.loads(prefect(env, "deployment", "inspect", "slm-swap-flywheel/nightly", "--output", "json").stdout)
    # A round per track each night: each schedule runs the deployment with its own track.
    nights = {s["schedule"]["cron"]: s for s in flywheel["schedules"]}
    assert set(nights) == {"0 4 * * *", "30 4 * * *"} and all(s["active"] for s in nights.values())
    assert {s["schedule"]["timezone"] for s in nights.values()} == {"Europe/Berlin"}
    assert nights["0 4 * * *"]["parameters"] == {"request": {"track": "toolcall"}}
    assert nights["30 4 * * *"]["parameters"] == {"request": {"track": "structured"}}
    assert flywheel["work_pool_name"] == "default" and flywheel["parameters"] == {"request": {"track": "toolcall"}}
    # The UI's form for `request`: FlywheelRequest's fields, each with its help text.
    schema = flywheel["parameter_openapi_schema"]
    form = schema["definitions"][schema["properties"]["request"]["$ref"].rsplit("/", 1)[-1]]
    assert {"track", "records", "registry", "max_steps", "delta"} <= set(form["properties"])
    assert form["required"] == ["track"]
    assert form["properties"]["records"]["description"]

    ft_dir, eval_dir = tmp_path / "04_ft", tmp_path / "05_eval"
    cwd = tmp_path / "workers"  # the workers' folder, outside the checkout: the pull step must move flow runs into it
    cwd.mkdir()
    responses = {}
    for line in (xlam_data_dir / "toolcall" / "test.jsonl").read_text().splitlines():
        row = json.loads(line)
        responses[row["prompt"]] = row["completion"]
    with OpenAIStub(lambda messages: responses.get(messages[-1]["content"], "no idea")) as stub:
        worker_env = {**env, "HOSTED_BASE_URL": f"{stub.url}/v1", "HOSTED_MODEL": "hosted-stub"}
        with workers(worker_env, cwd, tmp_path, "pipeline"):
            # 1. The fine-tune deployment on the gpu pool, as CI or a person would start it.
            run = prefect(env, "deployment", "run", "slm-swap-finetune/gpu", "--param", "track=toolcall",
                          "--param", f"data_dir={xlam_data_dir}", "--param", f"ft_dir={ft_dir}",
                          "--param", f"accelerate_config={CPU_CONFIG}", "--param", "max_steps=2",
                          "--watch", "--watch-timeout", "300", timeout=400)
            logs = (tmp_path / "worker-gpu-pipeline.log").read_text()
            assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:] + logs[-4000:]
            assert "Flow run finished successfully in 'Completed'" in run.stdout
            finetune_run = api(env, "GET", f"/flow_runs/{flow_run_id_from(run.stdout)}")
            assert finetune_run["state"]["type"] == "COMPLETED" and finetune_run["name"] == "finetune-toolcall"
            manifest = json.loads((ft_dir / "adapter_toolcall" / MANIFEST).read_text())
            assert manifest["steps"] == 2 and manifest["backend"] == "cpu"
            assert (ft_dir / "adapter_toolcall" / "adapter_config.json").is_file()

            # 2. The pipeline deployment on the default pool: it starts the fine-tune as the gpu deployment.
            config = {"tracks": ["toolcall"], "finetune": "always", "limit": 3, "max_steps": 2,
                      "accelerate_config": str(CPU_CONFIG), "data_dir": str(xlam_data_dir),
                      "eval_dir": str(eval_dir), "ft_dir": str(ft_dir)}
            parent_id = run_parent(env, "slm-swap-pipeline/nightly", config, tmp_path / "worker-default-pipeline.log")

            # 3. A flywheel round over a gateway that has recorded nothing yet: "nothing to do", completed.
            rounds = tmp_path / "rounds"
            request = {"track": "toolcall", "records": str(tmp_path / "gateway" / "requests.jsonl"),
                       "registry": str(tmp_path / "gateway" / "registry.json"), "data_dir": str(xlam_data_dir),
                       "flywheel_dir": str(rounds)}
            round_id = run_parent(env, "slm-swap-flywheel/nightly", request, tmp_path / "worker-default-pipeline.log",
                                  parameter="request")
    flywheel_run = api(env, "GET", f"/flow_runs/{round_id}")
    assert flywheel_run["state"]["type"] == "COMPLETED" and flywheel_run["deployment_id"] == flywheel["id"]
    logs = [entry["message"] for entry in
            api(env, "POST", "/logs/filter", {"logs": {"flow_run_id": {"any_": [str(round_id)]}}})]
    assert "flywheel toolcall round 1: nothing to do: 0 new toolcall rows (at least 1 needed)" in logs
    assert not (rounds / "toolcall" / "round-1").exists() and not api(
        env, "POST", "/flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": [str(round_id)]}}})

    parent = api(env, "GET", f"/flow_runs/{parent_id}")
    assert parent["state"]["type"] == "COMPLETED" and parent["deployment_id"] == nightly["id"]
    child = only_child(env, parent_id)
    assert child["deployment_id"] == gpu["id"] and child["state"]["type"] == "COMPLETED" and "gpu" in child["tags"]
    tracker = api(env, "GET", f"/task_runs/{child['parent_task_run_id']}")
    assert tracker["flow_run_id"] == str(parent_id)  # the subflow sits under the parent
    assert json.loads((eval_dir / "toolcall_slm_ft_test.json").read_text())["n"] == 3
    assert (eval_dir / "report.png").read_bytes()[:4] == b"\x89PNG"
    # The subflow reused the adapter trained a minute ago (same data, base model and step cap).
    assert json.loads((ft_dir / "adapter_toolcall" / MANIFEST).read_text()) == manifest

    # 4. The distill deployment (its weekly schedule off) on the default pool, the scripted teacher as
    #    the hosted model; its agent fine-tune goes to the gpu deployment too.
    weekly = json.loads(prefect(env, "deployment", "inspect", "slm-swap-distill/weekly", "--output", "json").stdout)
    (schedule,) = weekly["schedules"]
    assert schedule["schedule"]["cron"] == "0 3 * * 0" and not schedule["active"] and weekly["work_pool_name"] == "default"
    distill = tmp_path / "distill"
    config = {"limit": 12, "max_steps": 2, "val": 2, "test": 2, "finetune": "always", "max_train_steps": 2,
              "accelerate_config": str(CPU_CONFIG), "trajectories_dir": str(distill / "03"), "data_dir": str(distill / "02"),
              "eval_dir": str(distill / "05"), "ft_dir": str(distill / "04")}
    with ScriptedTeacher(load_bfcl(("simple_python",))[0][:12]) as teacher:
        worker_env = {**env, "HOSTED_BASE_URL": teacher.url, "HOSTED_MODEL": "scripted"}
        with workers(worker_env, cwd, tmp_path, "distill"):
            parent_id = run_parent(env, "slm-swap-distill/weekly", config, tmp_path / "worker-default-distill.log")
    parent = api(env, "GET", f"/flow_runs/{parent_id}")
    assert parent["state"]["type"] == "COMPLETED" and parent["deployment_id"] == weekly["id"]
    child = only_child(env, parent_id)
    assert child["deployment_id"] == gpu["id"] and child["name"] == "finetune-agent" and child["state"]["type"] == "COMPLETED"
    assert json.loads((distill / "04" / "adapter_agent" / MANIFEST).read_text())["track"] == "agent"
    assert json.loads((distill / "05" / "agent_slm_ft_test.json").read_text())["n"] == 2
    assert "12 of 12 accepted" in (distill / "05" / "report.md").read_text()
