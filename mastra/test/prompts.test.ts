/**
 * The client's messages are the evaluation's, byte for byte: prompts.json is the Python export,
 * and buildMessages gives what build_messages(build_prompt(...)) gives for the same rows.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import { before, describe, test } from "node:test";

import { buildMessages, buildPrompt, messagesForPrompt, SYSTEM_PROMPT, TRACKS, type FunctionSignature } from "../src/prompts.js";
import { floatRepr, parseJson, PyFloat, pythonJsonDumps } from "../src/pyjson.js";
import { MASTRA_DIR, pythonMessages, REPO_ROOT, runPython, type PyRow } from "./support.js";

interface XlamRow {
  id: number;
  query: string;
  tools: string; // JSON text of the tool list
}
const xlam: XlamRow[] = JSON.parse(readFileSync(path.join(REPO_ROOT, "tests", "fixtures", "xlam_sample.json"), "utf8"));

// Function lists as JSON text (as data sets hold them): floats (integral too), exponents,
// escapes, control characters, non-ASCII, surrogate pairs, nesting, empty containers, null.
const TRICKY_FUNCTIONS = String.raw`[
  {"name": "measure", "description": "Quotes \" and backslashes \\ and\ttabs\nnewlines \u0001\u001f \u007f \u2028 caf\u00e9 \ud83d\ude00 東京",
   "parameters": {"type": "dict", "properties": {"x": {"type": "float", "default": 1.0, "minimum": -0.0, "maximum": 1e3},
     "y": {"type": "float", "default": 0.1, "enum": [0.5, 1e-5, 0.0001, 1.5e20, 1e16, 123456789.125, -2.5e-7, 1E+2, 3]},
     "z": {"type": "integer", "default": -0, "big": 12345678901234567890, "list": [], "obj": {}, "none": null, "flags": [true, false]}},
   "required": ["x"]}},
  {"name": "template_braces", "description": "literal {request} and {functions} and $& $1 $$ in a signature"}
]`;

const TRICKY_REQUESTS = [
  "Plain request.",
  "  leading and trailing whitespace, a newline\nand a tab\t  \n",
  "Unicode: café ☕ 東京 😀, a quote \" and a backslash \\",
  "Placeholders in the request: {functions} {request} and replacement patterns $& $' $` $1 $$",
  "",
];

describe("prompts.json", () => {
  test("is the Python package's export (npm run prompts)", async () => {
    const exported = JSON.parse(await runPython(["-m", "slm_swap.app.cli", "prompts", "export", "--out", "-"]));
    const committed = JSON.parse(readFileSync(path.join(MASTRA_DIR, "prompts.json"), "utf8"));
    assert.deepEqual(committed, exported, "mastra/prompts.json is stale: run `npm run prompts` in mastra/");
    assert.equal(SYSTEM_PROMPT, exported.system_prompt);
  });
});

describe("buildMessages equals the evaluation's messages", () => {
  const rows: { row: PyRow; js: () => ReturnType<typeof buildMessages> }[] = [];
  for (const track of TRACKS) {
    for (const item of xlam) {
      rows.push({
        row: { track, request: item.query, functions_json: item.tools },
        js: () => buildMessages(track, item.query, parseJson(item.tools) as FunctionSignature[]),
      });
    }
    for (const request of TRICKY_REQUESTS) {
      rows.push({
        row: { track, request, functions_json: TRICKY_FUNCTIONS },
        js: () => buildMessages(track, request, parseJson(TRICKY_FUNCTIONS) as FunctionSignature[]),
      });
    }
    // Signatures built in JavaScript (plain numbers: integral ones are Python ints).
    const built = [{ name: "área", parameters: { n: { type: "int", default: 3 }, r: { default: 0.1 + 0.2 } } }];
    rows.push({ row: { track, request: "built in JS", functions: built }, js: () => buildMessages(track, "built in JS", built) });
    rows.push({ row: { track, request: "no functions", functions: [] }, js: () => buildMessages(track, "no functions", []) });
  }

  let expected: Awaited<ReturnType<typeof pythonMessages>>;
  before(async () => {
    expected = await pythonMessages(rows.map(({ row }) => row));
  });

  test(`for ${xlam.length} fixture rows and the tricky ones, both tracks`, () => {
    assert.equal(expected.length, rows.length);
    rows.forEach(({ row, js }, i) => {
      assert.deepEqual(js(), expected[i], `row ${i} (${row.track}: ${JSON.stringify(row.request).slice(0, 60)})`);
    });
  });

  test("are [system, user] with the request verbatim at the end", () => {
    const messages = buildMessages("toolcall", "  keep me  \n", []);
    assert.deepEqual(messages.map((m) => m.role), ["system", "user"]);
    assert.equal(messages[0].content, SYSTEM_PROMPT);
    assert.ok(messages[1].content.endsWith("\n  keep me  \n"));
    assert.deepEqual(messagesForPrompt(buildPrompt("toolcall", "  keep me  \n", [])), messages);
  });

  test("JSON.parse would lose the evaluation's 1.0 (why parseJson exists)", () => {
    const text = '[{"name": "f", "default": 1.0}]';
    assert.equal(pythonJsonDumps((JSON.parse(text) as unknown[])[0]), '{"name": "f", "default": 1}');
    assert.equal(pythonJsonDumps((parseJson(text) as unknown[])[0]), '{"name": "f", "default": 1.0}');
  });

  test("unknown tracks are refused", () => {
    assert.throws(() => buildMessages("chat" as never, "x", []), /unknown track/);
  });
});

describe("pyjson", () => {
  test("floatRepr matches Python's repr", async () => {
    const values = [0.1, 0.5, 1e-5, 0.0001, 1.5e20, 1e16, 9999999999999998, 123456789.125, -2.5e-7, 5e-324, 1.7976931348623157e308, 2, -0, 1 / 3];
    const python = JSON.parse(
      await runPython(["-c", "import json,sys; print(json.dumps([repr(float(v)) for v in json.load(sys.stdin)]))"], JSON.stringify(values.map((v) => (Object.is(v, -0) ? "-0.0" : String(v))))),
    );
    assert.deepEqual(values.map(floatRepr), python);
  });

  test("parseJson keeps floats and big integers, rejects bad JSON", () => {
    const parsed = parseJson('{"a": 1.0, "b": 2, "c": 12345678901234567890, "d": [1.5, "x"], "__proto__": 1}') as Record<string, unknown>;
    assert.ok(parsed.a instanceof PyFloat);
    assert.equal(Number(parsed.a), 1);
    assert.equal(parsed.b, 2);
    assert.equal(parsed.c, 12345678901234567890n);
    assert.deepEqual(parsed.d, [1.5, "x"]);
    assert.deepEqual(Object.keys(parsed), ["a", "b", "c", "d", "__proto__"]);
    for (const bad of ["", "{", "[1,]", '{"a" 1}', "01", '"\\x"', "[1] 2", '"a\nb"']) {
      assert.throws(() => parseJson(bad), SyntaxError, bad);
    }
  });
});
