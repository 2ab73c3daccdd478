"""Gateway under load: N concurrent clients through `slm-swap gateway`, against the same requests sent
straight to the engine the gateway would call, side by side in one run.

    .venv/bin/python bench/gateway_load.py [--clients 64] [--requests 20] [--hosted-every 4] [--latency 0]

Three processes, as in a deployment: the clients, the gateway, and the stubs it calls (so none shares
another's GIL). Both sides are fast stubs on 127.0.0.1: the SLM engine is the scripted teacher (`slm_swap.trajectories.teacher`), which
answers the evaluation prompt of every xLAM fixture row with its gold call, so swappable requests take
the `slm` route; the hosted side is `tests/openai_stub.py`, echoing the request's id. The mix: every
`--hosted-every`-th request is not swappable (alternately no tools, and a tool result in the
conversation); the rest are tool-calling requests built from the rows (OpenAI tools from each row's
functions). Side (a), direct: what the gateway itself would send upstream (`gateway_requests.classify`
and `slm_messages`: the track prompt to the engine, or the request as is to the hosted stub).
Side (b): the original requests through the gateway.

Clients: one `httpx.AsyncClient`, its pool holding one keep-alive connection per client, all clients
as coroutines of one event loop: the bench measures the gateway, not the client; the `openai` SDK
would add the same pydantic parsing per answer to both sides, and 64 threads of it would take the
2 cores' time from the servers. Each request carries a unique id (a system message, and the model
name, which the gateway records and serves `slm` answers under); every answer must map back to
exactly one request, and the records file must hold exactly one line per request.
Target: nothing lost or answered twice, p95 overhead <= 10 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import httpx  # noqa: E402
import openai  # noqa: E402
import uvicorn  # noqa: E402

from slm_swap.app.gateway import SlmEngine, Upstream, create_gateway_app  # noqa: E402
from slm_swap.app.gateway_requests import Swappable, classify, slm_messages  # noqa: E402
from slm_swap.app.http_server import listening_socket  # noqa: E402
from slm_swap.core.tracks import parse_toolcall  # noqa: E402
from slm_swap.data.examples import Example  # noqa: E402
from slm_swap.data.xlam import load_xlam  # noqa: E402
from slm_swap.infra import json_input  # noqa: E402
from slm_swap.llm.chat_api import ChatRequest  # noqa: E402
from slm_swap.trajectories.teacher import ScriptedTeacher  # noqa: E402

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "xlam_sample.json"
ID_PREFIX = "request-id: "
HOSTED_MODEL = "hosted-deployment"
TARGET_P95_OVERHEAD_MS = 10.0


@dataclass(frozen=True)
class LoadRequest:
    id: str
    body: dict[str, Any]  # what the application sends the gateway
    example: Example | None  # the row a swappable request was built from (its gold call is the answer)


def echo_id(messages: list[dict[str, Any]]) -> str:
    """The hosted stub's answer: it names the request's id, so the answer maps back to its request."""
    return "hosted answer to " + next(m["content"][len(ID_PREFIX):] for m in messages
                                      if m["role"] == "system" and m["content"].startswith(ID_PREFIX))


def build_requests(examples: list[Example], count: int, hosted_every: int, prefix: str) -> list[LoadRequest]:
    requests = []
    for index in range(count):
        example = examples[index % len(examples)]
        request_id = f"{prefix}-{index:05d}"
        messages = [{"role": "system", "content": ID_PREFIX + request_id},
                    {"role": "user", "content": example.request}]
        tools = [{"type": "function", "function": function} for function in example.functions]
        body: dict[str, Any] = {"model": f"gpt-4o-{request_id}", "messages": messages}
        if hosted_every and index % hosted_every == hosted_every - 1:
            if (index // hosted_every) % 2:  # a later turn of a tool loop
                call = {"id": "call_1", "type": "function", "function": {"name": example.name, "arguments": "{}"}}
                body["messages"] = [*messages, {"role": "assistant", "content": None, "tool_calls": [call]},
                                    {"role": "tool", "tool_call_id": "call_1", "content": "42"}]
                body["tools"] = tools
            requests.append(LoadRequest(request_id, body, None))  # else: plain chat, no tools
        else:
            body["tools"] = tools
            requests.append(LoadRequest(request_id, body, example))
    return requests


def direct_call(request: LoadRequest, engine_url: str, hosted_url: str) -> tuple[str, dict[str, Any]]:
    """(URL, body) the gateway would send upstream for `request`: the engine the gateway would call."""
    decision = classify(ChatRequest.model_validate(request.body), {"structured", "toolcall"})
    if isinstance(decision, Swappable):
        return f"{engine_url}/chat/completions", {"model": decision.track, "messages": slm_messages(decision),
                                                  "temperature": 0, "max_tokens": 256}
    return f"{hosted_url}/v1/chat/completions", {**request.body, "model": HOSTED_MODEL}


def serve_stubs(conn, latency_s: float) -> None:
    """Child process: the hosted stub and the scripted teacher; their URLs go back over `conn`, and
    they serve until the parent sends anything."""
    from openai_stub import OpenAIStub

    examples = load_xlam(FIXTURE)[0]
    with OpenAIStub(echo_id, latency_s=latency_s) as hosted, ScriptedTeacher(examples, step_delay_s=latency_s) as teacher:
        conn.send((teacher.url, hosted.url))
        conn.recv()


def serve_gateway(conn, records_path: str, engine_url: str, hosted_url: str) -> None:
    """Child process: the gateway over those stubs (as `slm-swap gateway` builds it: one retry), until
    the parent sends anything."""
    hosted_client = openai.OpenAI(base_url=f"{hosted_url}/v1", api_key="hosted-key", max_retries=1)
    slm_client = openai.OpenAI(base_url=engine_url, api_key="engine-key", max_retries=1)
    app = create_gateway_app(Upstream(hosted_client, HOSTED_MODEL),
                             SlmEngine(slm_client, {"structured": "structured", "toolcall": "toolcall"}),
                             Path(records_path), lambda text: text)
    sock = listening_socket("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    conn.send(f"http://127.0.0.1:{sock.getsockname()[1]}/v1")
    conn.recv()
    server.should_exit = True
    thread.join(10)


def start_process(target, *args: Any) -> tuple[Any, Any, Any]:
    """(process, pipe end, what the process sent first): a server process, ready."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=target, args=(child, *args), daemon=True)
    process.start()
    return process, parent, parent.recv()


@dataclass
class Outcome:
    request: LoadRequest
    latency_s: float
    status: int | None  # None: no answer (connection error, timeout)
    answer: Any
    route: str | None


async def run_side(requests: list[LoadRequest], clients: int, send) -> tuple[list[Outcome], float]:
    """Each client sends its share one after another; all clients at once. (outcomes, wall seconds)."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    outcomes: list[Outcome] = []
    async with httpx.AsyncClient(limits=limits, timeout=60.0) as http:
        async def client(share: list[LoadRequest]) -> None:
            for request in share:
                url, body = send(request)
                began = time.perf_counter()
                try:
                    response = await http.post(url, json=body, headers={"authorization": "Bearer client-key"})
                    answer = json_input.loads(response.content)
                    status, route = response.status_code, response.headers.get("x-slm-swap-route")
                except (httpx.HTTPError, json_input.JsonInputError) as exc:  # kept to say why it was lost
                    answer, status, route = f"{type(exc).__name__}: {exc}"[:120], None, None
                outcomes.append(Outcome(request, time.perf_counter() - began, status, answer, route))

        started = time.perf_counter()
        await asyncio.gather(*(client(requests[i::clients]) for i in range(clients)))
    return outcomes, time.perf_counter() - started


def answered_id(outcome: Outcome, through_gateway: bool) -> str | None:
    """The id of the request this answer answers (None: no usable answer). An SLM answer must be the
    row's gold call; a hosted answer names its request's id."""
    if outcome.status != 200 or not isinstance(outcome.answer, dict):
        return None
    message = outcome.answer["choices"][0]["message"]
    content = message.get("content") or ""
    if content.startswith("hosted answer to "):
        return content[len("hosted answer to "):]
    example = outcome.request.example
    if example is None:
        return None
    if through_gateway:  # OpenAI tool_calls, under the model name the request asked for
        call = message["tool_calls"][0]["function"]
        gold = call["name"] == example.name and json_input.loads(call["arguments"]) == example.arguments
        model = outcome.answer.get("model", "")
        return model.removeprefix("gpt-4o-") if gold and model.startswith("gpt-4o-") else None
    # The engine's own answer carries no id: it is this request's when it is this row's gold call.
    return outcome.request.id if parse_toolcall(content) == (example.name, example.arguments) else None


def percentile_ms(latencies: list[float], q: int) -> float:
    return statistics.quantiles(latencies, n=100, method="inclusive")[q - 1] * 1000


def tally(outcomes: list[Outcome], through_gateway: bool) -> tuple[int, int, int]:
    """(answered, lost, duplicated): answered = distinct requests with a right answer; duplicated =
    answers for a request already answered, or for another request than the one sent."""
    ids = [answered_id(outcome, through_gateway) for outcome in outcomes]
    mismatched = sum(1 for outcome, got in zip(outcomes, ids) if got is not None and got != outcome.request.id)
    counts = Counter(got for got in ids if got is not None)
    answered = len(counts)
    return answered, len({o.request.id for o in outcomes}) - answered, mismatched + sum(n - 1 for n in counts.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients (default: %(default)s)")
    parser.add_argument("--requests", type=int, default=20, help="requests per client (default: %(default)s)")
    parser.add_argument("--hosted-every", type=int, default=4,
                        help="every Nth request is not swappable; 0: none (default: %(default)s)")
    parser.add_argument("--latency", type=float, default=0.0, help="stub seconds per answer (default: %(default)s)")
    args = parser.parse_args()
    examples = load_xlam(FIXTURE)[0]
    total = args.clients * args.requests
    requests = build_requests(examples, total, args.hosted_every, "load")
    warmup = build_requests(examples, 8, args.hosted_every, "warmup")
    with tempfile.TemporaryDirectory() as tmp:
        records = Path(tmp) / "06_gateway" / "requests.jsonl"
        stubs, stubs_pipe, (engine_url, hosted_url) = start_process(serve_stubs, args.latency)
        gateway_process, gateway_pipe, gateway_url = start_process(serve_gateway, str(records), engine_url, hosted_url)
        direct = lambda request: direct_call(request, engine_url, hosted_url)  # noqa: E731
        gateway = lambda request: (f"{gateway_url}/chat/completions", request.body)  # noqa: E731
        asyncio.run(run_side(warmup, 8, direct))
        asyncio.run(run_side(warmup, 8, gateway))
        lines_before = len(records.read_text(encoding="utf-8").splitlines())
        direct_out, direct_wall = asyncio.run(run_side(requests, args.clients, direct))
        gateway_out, gateway_wall = asyncio.run(run_side(requests, args.clients, gateway))
        for process, pipe in ((gateway_process, gateway_pipe), (stubs, stubs_pipe)):
            pipe.send("stop")
            process.join(15)
        lines = records.read_text(encoding="utf-8").splitlines()[lines_before:]
    recorded = Counter(json_input.loads(line)["requested_model"].removeprefix("gpt-4o-") for line in lines)
    sent_ids = {request.id for request in requests}
    records_ok = len(lines) == total and set(recorded) == sent_ids and set(recorded.values()) == {1}

    print(f"{args.clients} clients x {args.requests} requests = {total} per side; every {args.hosted_every}th "
          f"not swappable; stubs {args.latency * 1000:.0f} ms; client: httpx.AsyncClient, one pooled connection per client")
    print(f"{'side':<8} {'sent':>5} {'answered':>8} {'lost':>5} {'dup':>4} {'p50 ms':>7} {'p95 ms':>7} "
          f"{'p99 ms':>7} {'req/s':>7}")
    p95 = {}
    verdicts = {}
    for name, outcomes, wall, through in (("direct", direct_out, direct_wall, False),
                                          ("gateway", gateway_out, gateway_wall, True)):
        answered, lost, duplicated = tally(outcomes, through)
        latencies = [outcome.latency_s for outcome in outcomes]
        p95[name] = percentile_ms(latencies, 95)
        verdicts[name] = lost == 0 and duplicated == 0
        print(f"{name:<8} {len(outcomes):>5} {answered:>8} {lost:>5} {duplicated:>4} {percentile_ms(latencies, 50):>7.1f} "
              f"{p95[name]:>7.1f} {percentile_ms(latencies, 99):>7.1f} {len(outcomes) / wall:>7.0f}")
    failures = Counter(f"{name} {o.status or o.answer}" for name, outcomes in (("direct", direct_out), ("gateway", gateway_out))
                       for o in outcomes if o.status != 200)
    for failure, count in failures.most_common(5):
        print(f"not answered: {count} x {failure}")
    routes = Counter(outcome.route for outcome in gateway_out)
    print("gateway routes (x-slm-swap-route): " + ", ".join(f"{route}={n}" for route, n in sorted(routes.items(), key=str)))
    print(f"records file: {len(lines)} lines for {total} requests, each request once: {'yes' if records_ok else 'NO'}")
    overhead = p95["gateway"] - p95["direct"]
    met = overhead <= TARGET_P95_OVERHEAD_MS and all(verdicts.values()) and records_ok
    print(f"p95 overhead: {overhead:.1f} ms (gateway / direct p95: {p95['gateway'] / p95['direct']:.2f}x; "
          f"target <= {TARGET_P95_OVERHEAD_MS:.0f} ms, nothing lost or doubled): {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
