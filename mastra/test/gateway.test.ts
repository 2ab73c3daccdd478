/**
 * The Mastra agent with its one tool, through the real `slm-swap gateway` (test/gateway_helper.py):
 * the SLM engine is the project's scripted teacher, the hosted side a local stand-in that answers
 * tool calling as an OpenAI model does. Whichever side answers the agent's tool-calling request, the
 * tool runs once, with arguments its zod schema accepts; the turn carrying the tool's result goes to
 * the hosted model; the gateway's records show each route.
 */
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, test, type TestContext } from "node:test";

import { z } from "zod";

import { convertLength, convertLengthInput, convertLengthTool, createGatewayAgent, type ConvertLengthInput } from "../src/gateway-agent.js";
import { MASTRA_DIR, startPythonService, type PythonService } from "./support.js";

process.env.MASTRA_TELEMETRY_DISABLED = "1";

const API_KEY = "gateway-key-for-the-mastra-test";
// The tool as the agent puts it on the wire (checked below): the zod schema's draft-07 JSON Schema.
const WIRE_FUNCTION = {
  name: "convert_length",
  description: convertLengthTool.description,
  parameters: z.toJSONSchema(convertLengthInput, { target: "draft-7" }),
};
// The gold calls, in the order the scripted teacher reads them (its `wrong` fault replaces the first).
const SLM_ANSWERS = { id: "slm-answers", request: "Convert 3.5 meters to feet", slm: "correct",
  arguments: { from_unit: "m", to_unit: "ft", value: 3.5 } } as const;
// A later turn of a tool loop is not swappable; the gateway names the first sign of one it meets.
const TOOL_LOOP = /^(assistant_tool_calls|tool_result)_in_conversation$/;
const SLM_INVALID = { id: "slm-invalid", request: "How many miles is a marathon of 42.195 km?", slm: "wrong",
  arguments: { from_unit: "km", to_unit: "mi", value: 42.195 } } as const;

interface Exchange {
  body: any; // what the agent sent
  route: string | null; // x-slm-swap-route
  reason: string | null; // x-slm-swap-reason
}

/** fetch for the agent that keeps each request body and the gateway's route headers. */
function recordingFetch(exchanges: Exchange[]): typeof globalThis.fetch {
  return async (input, init) => {
    const response = await globalThis.fetch(input, init);
    exchanges.push({ body: JSON.parse(String(init?.body)), route: response.headers.get("x-slm-swap-route"),
      reason: response.headers.get("x-slm-swap-reason") });
    return response;
  };
}

describe("the Mastra agent through slm-swap gateway", { timeout: 90_000 }, () => {
  let dir: string;
  let records: string;
  let stack: PythonService<{ gateway: string; hosted: string; slm: string }>;

  const readRecords = (): any[] =>
    (existsSync(records) ? readFileSync(records, "utf8") : "") // the gateway writes it at the first request
      .split("\n")
      .filter(Boolean)
      .map((line) => JSON.parse(line));

  async function runAgent(t: TestContext, question: string) {
    const execute = t.mock.method(convertLengthTool as Required<typeof convertLengthTool>, "execute");
    const seen = readRecords().length;
    const exchanges: Exchange[] = [];
    const agent = createGatewayAgent({ baseURL: stack.info.gateway, apiKey: API_KEY, fetch: recordingFetch(exchanges) });
    const result = await agent.generate(question);
    assert.equal(result.error, undefined);
    const calls = execute.mock.calls.map((call) => call.arguments[0] as ConvertLengthInput);
    return { result, calls, exchanges, records: readRecords().slice(seen) };
  }

  before(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), "slm-swap-mastra-gateway-"));
    records = path.join(dir, "requests.jsonl");
    const rows = [SLM_ANSWERS, SLM_INVALID].map(({ id, request, slm, arguments: args }) =>
      ({ id, request, slm, arguments: args, name: WIRE_FUNCTION.name, functions: [WIRE_FUNCTION] }));
    const spec = path.join(dir, "spec.json");
    writeFileSync(spec, JSON.stringify({ records, api_key: API_KEY, rows }));
    stack = await startPythonService([path.join(MASTRA_DIR, "test", "gateway_helper.py"), spec]);
  });

  after(async () => {
    await stack?.stop(); // fails if the gateway printed a traceback or the hosted key
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test("the SLM's call is served; the tool gets it; the tool's result goes to the hosted model", async (t) => {
    const { result, calls, exchanges, records } = await runAgent(t, SLM_ANSWERS.request);
    // One tool call, with arguments the tool's own schema accepts: the SLM's, unchanged.
    assert.equal(calls.length, 1);
    assert.ok(convertLengthInput.safeParse(calls[0]).success);
    assert.deepEqual(calls[0], SLM_ANSWERS.arguments);
    // The final answer carries what the tool computed (the hosted stand-in only quotes it).
    assert.ok(result.text.includes(convertLength(calls[0]).text), result.text);
    assert.ok(result.text.includes("11.4829 ft"), result.text); // 3.5 m in feet: the tool's arithmetic is right

    // What the agent sent: the user's text and its one tool, then the same with the tool's result.
    const [first, second] = exchanges;
    assert.equal(exchanges.length, 2);
    assert.deepEqual(first.body.tools, [{ type: "function", function: WIRE_FUNCTION }]);
    assert.deepEqual(first.body.messages.at(-1), { role: "user", content: SLM_ANSWERS.request });
    assert.equal(second.body.messages.at(-1).role, "tool");
    assert.deepEqual(exchanges.map((e) => e.route), ["slm", "hosted"]);
    assert.equal(first.reason, null);
    assert.match(second.reason ?? "", TOOL_LOOP);

    // The records: the first request swappable and answered by the SLM, the second not swappable.
    const [answered, passed] = records;
    assert.equal(records.length, 2);
    assert.deepEqual([answered.track, answered.route, answered.verdict, answered.not_swappable, answered.hosted],
      ["toolcall", "slm", "valid", null, null]);
    assert.match(answered.slm.output, /^<tool_call name="convert_length">/);
    assert.deepEqual([passed.track, passed.route, passed.slm, passed.hosted.model], [null, "hosted", null, "hosted-stand-in"]);
    assert.match(passed.not_swappable.reason, TOOL_LOOP);
  });

  test("an SLM call outside the tool's schema falls back: the tool gets the hosted model's valid call", async (t) => {
    const { result, calls, exchanges, records } = await runAgent(t, SLM_INVALID.request);
    assert.equal(calls.length, 1);
    assert.ok(convertLengthInput.safeParse(calls[0]).success);
    assert.deepEqual(calls[0], SLM_INVALID.arguments); // the hosted stand-in's call, not the SLM's
    assert.ok(result.text.includes(convertLength(calls[0]).text), result.text);

    assert.deepEqual(exchanges.map((e) => e.route), ["hosted-fallback", "hosted"]);
    assert.match(exchanges[0].reason ?? "", /^invalid_answer: /);

    const [fallback, passed] = records;
    assert.equal(records.length, 2);
    assert.deepEqual([fallback.track, fallback.route, fallback.verdict], ["toolcall", "hosted-fallback", "invalid"]);
    assert.match(fallback.slm.output, /"from_unit":\s*"WRONG"/); // the scripted fault: outside the enum
    assert.equal(fallback.hosted.model, "hosted-stand-in");
    assert.equal(passed.route, "hosted");
    assert.match(passed.not_swappable.reason, TOOL_LOOP);
  });
});
