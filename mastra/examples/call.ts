/**
 * The client and the Agent example against a running `slm-swap serve` (see README.md).
 * From the repository root: mastra/node_modules/.bin/tsx mastra/examples/call.ts
 */
import { readFileSync } from "node:fs";

import { buildPrompt, createSlmAgent, createSlmClient, parseJson, type FunctionSignature } from "../src/index.js";

const client = createSlmClient({ baseURL: process.env.SLM_BASE_URL ?? "http://127.0.0.1:8000/v1", maxTokens: 64 });
// parseJson, not JSON.parse: "default": 1.0 must stay a float to render as the evaluation did.
const functions = parseJson(readFileSync(new URL("functions.json", import.meta.url), "utf8")) as FunctionSignature[];
const request = "Convert 3.5 meters to feet";

// The client: the track's adapter if the server lists it, else the base model; raw text back.
console.log(`toolcall -> model ${await client.modelFor("toolcall")}`);
const text = await client.toolcall(request, functions);
console.log(text);

// The same call through the Mastra Agent: same model, same [system, user] messages on the wire.
const agent = await createSlmAgent(client, "toolcall");
const result = await agent.generate([{ role: "user", content: buildPrompt("toolcall", request, functions) }]);
console.log(`agent text identical: ${result.text === text}`);
