/**
 * Test support: the Python side (the evaluation's messages, the tiny model), `slm-swap serve`, and
 * a recording proxy that shows what goes over the wire. Python is $SLM_SWAP_PYTHON, else the
 * repository's ../.venv/bin/python.
 */
import { spawn, type ChildProcess } from "node:child_process";
import http from "node:http";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";

import type { ChatMessage } from "../src/prompts.js";

export const MASTRA_DIR = fileURLToPath(new URL("..", import.meta.url));
export const REPO_ROOT = path.resolve(MASTRA_DIR, "..");
const configured = process.env.SLM_SWAP_PYTHON;
export const PYTHON = configured
  ? configured.includes("/") ? path.resolve(configured) : configured
  : path.join(REPO_ROOT, ".venv", "bin", "python");

/** Python runs offline, on CPU, on one thread: the suite is light and deterministic. */
const PYTHON_ENV = {
  ...process.env,
  HF_HUB_OFFLINE: "1",
  TRANSFORMERS_OFFLINE: "1",
  LANGFUSE_DISABLED: "1",
  CUDA_VISIBLE_DEVICES: "",
  OMP_NUM_THREADS: "1",
  MKL_NUM_THREADS: "1",
  TOKENIZERS_PARALLELISM: "false",
  PYTHONUNBUFFERED: "1",
};

/** Run Python from the repository root; resolves with stdout, rejects with the output on failure. */
export function runPython(args: string[], input?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(PYTHON, args, { cwd: REPO_ROOT, env: PYTHON_ENV, stdio: ["pipe", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (chunk) => (stdout += chunk));
    child.stderr.setEncoding("utf8").on("data", (chunk) => (stderr += chunk));
    child.on("error", (err) => reject(new Error(`${PYTHON}: ${err.message} (set SLM_SWAP_PYTHON)`)));
    child.on("close", (code) => {
      if (code === 0) resolve(stdout);
      else reject(new Error(`${PYTHON} ${args.join(" ")} exited with ${code}:\n${stderr.slice(-4000)}`));
    });
    child.stdin.end(input ?? "");
  });
}

const HELPER = path.join(MASTRA_DIR, "test", "helper.py");

export interface PyRow {
  track: string;
  request: string;
  functions?: unknown[];
  /** JSON text of the function list, parsed by Python with json.loads (as the data sets are). */
  functions_json?: string;
}

/** The Python package's messages for each row: build_messages(build_prompt(track, request, functions)). */
export async function pythonMessages(rows: PyRow[]): Promise<ChatMessage[][]> {
  return JSON.parse(await runPython([HELPER, "messages"], JSON.stringify(rows)));
}

/** A tiny random Llama at DIR/model and a random LoRA adapter at DIR/adapters/adapter_toolcall. */
export async function makeTinyModel(dir: string): Promise<{ model: string; adapters: string }> {
  const stdout = await runPython([HELPER, "tiny", dir]);
  return JSON.parse(stdout.trim().split("\n").at(-1)!);
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

export interface RunningServer {
  baseURL: string; // http://127.0.0.1:PORT/v1
  stop(): Promise<void>;
}

const started = new Set<ChildProcess>();
const groups = new Set<() => void>(); // kills a helper's process group
process.on("exit", () => {
  for (const child of started) child.kill("SIGKILL"); // never leave a server behind
  for (const kill of groups) kill();
});

/** `slm-swap serve` on 127.0.0.1 at a free port; resolves once GET /v1/models answers. */
export async function startServer(args: string[], timeoutMs = 90_000): Promise<RunningServer> {
  const port = await freePort();
  const child = spawn(PYTHON, ["-m", "slm_swap.app.cli", "serve", "--host", "127.0.0.1", "--port", String(port), ...args], {
    cwd: REPO_ROOT,
    env: PYTHON_ENV,
    stdio: ["ignore", "pipe", "pipe"],
  });
  started.add(child);
  let output = "";
  child.stdout!.setEncoding("utf8").on("data", (chunk) => (output += chunk));
  child.stderr!.setEncoding("utf8").on("data", (chunk) => (output += chunk));
  const exited = new Promise<void>((resolve) => child.on("exit", () => resolve()));

  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
      await exited;
      clearTimeout(timer);
    }
    started.delete(child);
  };

  const baseURL = `http://127.0.0.1:${port}/v1`;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`slm-swap serve exited (${child.exitCode ?? child.signalCode}):\n${output.slice(-4000)}`);
    }
    try {
      const response = await fetch(`${baseURL}/models`);
      if (response.ok) return { baseURL, stop };
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`slm-swap serve did not answer within ${timeoutMs} ms:\n${output.slice(-4000)}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

export interface Recorded {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  body: any; // the parsed JSON body (null when empty)
}

export interface RecordingProxy {
  baseURL: string; // http://127.0.0.1:PORT/v1, forwarding to the target
  requests: Recorded[];
  close(): Promise<void>;
}

/** A proxy on 127.0.0.1 that forwards everything to `target` (an origin) and records each request. */
export async function startRecordingProxy(target: string): Promise<RecordingProxy> {
  const requests: Recorded[] = [];
  const upstream = new URL(target);
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (chunk: Buffer) => chunks.push(chunk));
    req.on("end", () => {
      const raw = Buffer.concat(chunks);
      const text = raw.toString("utf8");
      requests.push({ method: req.method!, url: req.url!, headers: req.headers, body: text ? JSON.parse(text) : null });
      const forward = http.request(
        { host: upstream.hostname, port: upstream.port, method: req.method, path: req.url, headers: { ...req.headers, host: upstream.host } },
        (answer) => {
          res.writeHead(answer.statusCode ?? 502, answer.headers);
          answer.pipe(res);
        },
      );
      forward.on("error", (err) => {
        res.writeHead(502, { "content-type": "application/json" });
        res.end(JSON.stringify({ error: { message: `proxy: ${err.message}` } }));
      });
      forward.end(raw);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as net.AddressInfo;
  return {
    baseURL: `http://127.0.0.1:${port}/v1`,
    requests,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

export interface PythonService<Info> {
  info: Info; // the JSON line the service printed once ready
  /** Close its stdin (the service stops) and wait; rejects with its output if it failed. */
  stop(): Promise<void>;
}

/** A long-running Python helper: ready when it prints one JSON line; it stops when its stdin closes. */
export async function startPythonService<Info>(args: string[], timeoutMs = 60_000): Promise<PythonService<Info>> {
  // Its own process group, so that one kill also stops what it started (the gateway); it stops them
  // itself when its stdin closes, which also happens when this process dies.
  const child = spawn(PYTHON, args, { cwd: REPO_ROOT, env: PYTHON_ENV, stdio: ["pipe", "pipe", "pipe"], detached: true });
  const killGroup = () => {
    try {
      process.kill(-child.pid!, "SIGKILL");
    } catch {
      // already gone
    }
  };
  groups.add(killGroup);
  let stdout = "";
  let stderr = "";
  child.stderr!.setEncoding("utf8").on("data", (chunk) => (stderr += chunk));
  const exited = new Promise<number | string>((resolve) => child.on("exit", (code, signal) => resolve(code ?? signal ?? "?")));
  const stop = async () => {
    child.stdin!.end();
    const timer = setTimeout(killGroup, 15_000);
    const status = await exited;
    clearTimeout(timer);
    groups.delete(killGroup);
    if (status !== 0) throw new Error(`${args.join(" ")} exited with ${status}:\n${stderr.slice(-4000)}`);
  };
  const info = await new Promise<Info>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${args.join(" ")}: not ready within ${timeoutMs} ms:\n${stderr.slice(-4000)}`)), timeoutMs);
    child.stdout!.setEncoding("utf8").on("data", (chunk) => {
      stdout += chunk;
      const newline = stdout.indexOf("\n");
      if (newline >= 0) {
        clearTimeout(timer);
        resolve(JSON.parse(stdout.slice(0, newline)));
      }
    });
    void exited.then((status) => {
      clearTimeout(timer);
      reject(new Error(`${args.join(" ")} exited with ${status} before it was ready:\n${stderr.slice(-4000)}`));
    });
  }).catch(async (err) => {
    killGroup();
    groups.delete(killGroup);
    throw err;
  });
  return { info, stop };
}
