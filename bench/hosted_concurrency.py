"""Hosted client: concurrent vs sequential requests against a local OpenAI-compatible server that
adds 200 ms of latency per request (the real openai SDK, real HTTP on 127.0.0.1).

    .venv/bin/python bench/hosted_concurrency.py [--requests 64] [--latency 0.2] [--concurrency 16]

Target: >= 10x, no request lost.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from openai_stub import OpenAIStub  # noqa: E402
from slm_swap.infra.config import Settings  # noqa: E402
from slm_swap.llm.hosted import HostedClient  # noqa: E402


def run(stub: OpenAIStub, requests: int, concurrency: int) -> tuple[float, int]:
    settings = Settings(_env_file=None, hosted_base_url=f"{stub.url}/v1", hosted_model="stub", azure_endpoint=None)
    client = HostedClient(settings, concurrency=concurrency, max_retries=0)
    messages = [[{"role": "user", "content": f"request {i}"}] for i in range(requests)]
    started = time.perf_counter()
    answered = {c.index for c in client.complete(messages) if c.text == f"echo request {c.index}"}
    elapsed = time.perf_counter() - started
    client.close()
    return elapsed, len(answered)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    echo = lambda messages: "echo " + messages[-1]["content"]
    with OpenAIStub(echo, latency_s=args.latency) as stub:
        sequential, seq_ok = run(stub, args.requests, 1)
        concurrent, con_ok = run(stub, args.requests, args.concurrency)
        received = len(stub.requests)
    print(f"requests={args.requests} latency={args.latency * 1000:.0f}ms concurrency={args.concurrency}")
    print(f"sequential: {sequential:.2f}s ({seq_ok}/{args.requests} answered)")
    print(f"concurrent: {concurrent:.2f}s ({con_ok}/{args.requests} answered)")
    print(f"server received {received} requests (expected {2 * args.requests})")
    print(f"speedup: {sequential / concurrent:.1f}x (target >= 10x)")


if __name__ == "__main__":
    main()
