/**
 * Against a real `slm-swap serve` (tiny random model + a random LoRA adapter for `toolcall` only),
 * through a recording proxy: the server receives exactly the evaluation's [system, user] messages,
 * greedy, for the track's adapter when served and the base model otherwise; the text is the
 * server's, untouched.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";

import { createSlmAgent } from "../src/agent.js";
import { createSlmClient, type SlmClient } from "../src/client.js";
import { buildPrompt, type ChatMessage, type FunctionSignature } from "../src/prompts.js";
import { parseJson } from "../src/pyjson.js";
import {
  makeTinyModel,
  pythonMessages,
  startRecordingProxy,
  startServer,
  type Recorded,
  type RecordingProxy,
  type RunningServer,
} from "./support.js";

process.env.MASTRA_TELEMETRY_DISABLED = "1";

const BASE = "model"; // the tiny checkpoint's folder name: the base model's served name
const FUNCTIONS_JSON =
  '[{"name": "convert_units", "description": "Convert a value between units of length.", "parameters": {"value": {"type": "float", "default": 1.0}, "to_unit": {"type": "str", "default": "ft"}}}]';
const FUNCTIONS = parseJson(FUNCTIONS_JSON) as FunctionSignature[];
const REQUEST = "  Convert 3.5 m to feet — «vite» 😀 {request} $& \"quoted\"\n";

async function chat(baseURL: string, model: string, messages: ChatMessage[]): Promise<string> {
  const response = await fetch(`${baseURL}/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model, messages, temperature: 0 }),
  });
  assert.equal(response.status, 200, await response.clone().text());
  return ((await response.json()) as { choices: { message: { content: string } }[] }).choices[0].message.content;
}

describe("the Mastra client against slm-swap serve", { timeout: 180_000 }, () => {
  let dir: string;
  let server: RunningServer;
  let proxy: RecordingProxy;
  let client: SlmClient;
  let expected: { structured: ChatMessage[]; toolcall: ChatMessage[] };

  const chatRequests = () => proxy.requests.filter((r) => r.method === "POST" && r.url === "/v1/chat/completions");
  async function onTheWire(call: () => Promise<unknown>): Promise<Recorded> {
    const seen = chatRequests().length;
    await call();
    const sent = chatRequests().slice(seen);
    assert.equal(sent.length, 1, "one chat request per call");
    return sent[0];
  }
  /** The body is the evaluation's request, nothing added: model, the messages, temperature 0. */
  function assertEvaluationRequest(sent: Recorded, model: string, messages: ChatMessage[]) {
    assert.deepEqual(sent.body, { model, messages, temperature: 0 });
  }

  before(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), "slm-swap-mastra-"));
    const [tiny, [structured, toolcall]] = await Promise.all([
      makeTinyModel(dir),
      pythonMessages([
        { track: "structured", request: REQUEST, functions_json: FUNCTIONS_JSON },
        { track: "toolcall", request: REQUEST, functions_json: FUNCTIONS_JSON },
      ]),
    ]);
    expected = { structured, toolcall };
    // --adapters-dir holds adapter_toolcall/ only: toolcall has its adapter, structured does not.
    server = await startServer(["--model-path", tiny.model, "--adapters-dir", tiny.adapters, "--max-new-tokens", "16"]);
    proxy = await startRecordingProxy(new URL(server.baseURL).origin);
    client = createSlmClient({ baseURL: proxy.baseURL });
  });

  after(async () => {
    await proxy?.close();
    await server?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test("the server lists the base model first, then the toolcall adapter", async () => {
    assert.deepEqual(await client.models(), [BASE, "toolcall"]);
    assert.equal(await client.modelFor("toolcall"), "toolcall");
    assert.equal(await client.modelFor("structured"), BASE);
  });

  test("toolcall: the adapter gets the evaluation's messages; the text is the adapter's, raw", async () => {
    let text = "";
    const sent = await onTheWire(async () => (text = await client.toolcall(REQUEST, FUNCTIONS)));
    assertEvaluationRequest(sent, "toolcall", expected.toolcall);
    assert.equal(typeof text, "string");
    assert.ok(text.length > 0);
    // Raw: exactly what the server answers for these messages on this model.
    assert.equal(text, await chat(server.baseURL, "toolcall", expected.toolcall));
    // The adapter is in use: the base model answers the same prompt differently.
    assert.notEqual(text, await chat(server.baseURL, BASE, expected.toolcall));
  });

  test("structured: no adapter_structured, so the base model gets the evaluation's messages", async () => {
    let text = "";
    const sent = await onTheWire(async () => (text = await client.structured(REQUEST, FUNCTIONS)));
    assertEvaluationRequest(sent, BASE, expected.structured);
    assert.equal(text, await chat(server.baseURL, BASE, expected.structured));
  });

  test("completePrompt sends a built prompt the same way", async () => {
    const prompt = buildPrompt("toolcall", REQUEST, FUNCTIONS);
    const sent = await onTheWire(() => client.completePrompt("toolcall", prompt));
    assertEvaluationRequest(sent, "toolcall", expected.toolcall);
  });

  test("the Mastra Agent example sends exactly [system, user] too", async () => {
    const agent = await createSlmAgent(client, "toolcall");
    let text = "";
    const sent = await onTheWire(async () => {
      text = (await agent.generate([{ role: "user", content: buildPrompt("toolcall", REQUEST, FUNCTIONS) }])).text;
    });
    assertEvaluationRequest(sent, "toolcall", expected.toolcall);
    assert.equal(text, await client.toolcall(REQUEST, FUNCTIONS));
  });

  test("baseModel: a configured base name is used, and checked", async () => {
    const configured = createSlmClient({ baseURL: proxy.baseURL, baseModel: BASE, maxTokens: 8 });
    const sent = await onTheWire(() => configured.structured(REQUEST, FUNCTIONS));
    assert.deepEqual(sent.body, { model: BASE, messages: expected.structured, temperature: 0, max_tokens: 8 });
    assert.equal(await configured.modelFor("toolcall"), "toolcall");
    const missing = createSlmClient({ baseURL: proxy.baseURL, baseModel: "nope" });
    await assert.rejects(missing.structured(REQUEST, FUNCTIONS), /base model "nope" is not served/);
  });

  test("apiKey is sent as a bearer token on every request", async () => {
    const keyed = createSlmClient({ baseURL: proxy.baseURL, apiKey: "sk-test" });
    const seen = proxy.requests.length;
    await keyed.toolcall(REQUEST, FUNCTIONS);
    const sent = proxy.requests.slice(seen);
    assert.deepEqual(sent.map((r) => `${r.method} ${r.url}`), ["GET /v1/models", "POST /v1/chat/completions"]);
    for (const request of sent) assert.equal(request.headers.authorization, "Bearer sk-test");
  });

  test("server errors surface as errors, not text", async (t) => {
    t.mock.method(console, "error", () => {}); // Mastra's console logger reports the error too: keep the output clean
    const broken = createSlmClient({ baseURL: proxy.baseURL, maxTokens: 100_000 }); // over the server's cap: 400
    await assert.rejects(broken.toolcall(REQUEST, FUNCTIONS), /max_tokens/);
  });
});
