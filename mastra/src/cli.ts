/**
 * Call the local SLM once through the Mastra client and print the raw text.
 *
 *     tsx src/cli.ts [--base-url URL] [--api-key KEY] [--base-model NAME] [--max-tokens N]
 *                    [--functions FILE] TRACK REQUEST
 *
 * FILE is a JSON list of function signatures (as in the data sets). The served model used
 * (the track's adapter, or the base model) is printed on stderr, the text on stdout.
 */
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";

import { createSlmClient } from "./client.js";
import { checkTrack, type FunctionSignature } from "./prompts.js";
import { parseJson } from "./pyjson.js";

const USAGE =
  "usage: tsx src/cli.ts [--base-url URL] [--api-key KEY] [--base-model NAME] [--max-tokens N] [--functions FILE] TRACK REQUEST";

async function main(): Promise<number> {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      "base-url": { type: "string", default: process.env.SLM_BASE_URL ?? "http://127.0.0.1:8000/v1" },
      "api-key": { type: "string", default: process.env.SLM_API_KEY },
      "base-model": { type: "string" },
      "max-tokens": { type: "string" },
      functions: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help || positionals.length !== 2) {
    console.error(USAGE);
    return values.help ? 0 : 2;
  }
  const [track, request] = positionals;
  const functions = values.functions ? parseJson(readFileSync(values.functions, "utf8")) : [];
  if (!Array.isArray(functions)) throw new Error(`${values.functions}: expected a JSON list of function signatures`);
  const client = createSlmClient({
    baseURL: values["base-url"]!,
    apiKey: values["api-key"],
    baseModel: values["base-model"],
    maxTokens: values["max-tokens"] ? Number(values["max-tokens"]) : undefined,
  });
  console.error(`model: ${await client.modelFor(checkTrack(track))}`);
  console.log(await client.complete(checkTrack(track), request, functions as FunctionSignature[]));
  return 0;
}

main().then(
  (code) => (process.exitCode = code),
  (err) => {
    console.error(`error: ${err instanceof Error ? err.message : err}`);
    process.exitCode = 1;
  },
);
