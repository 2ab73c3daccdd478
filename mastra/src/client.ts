/**
 * A thin client for `slm-swap serve`: the evaluation's messages in, the model's raw text out.
 * No routing, fallbacks or judges. Each track goes to the adapter served under the track's name
 * (`slm-swap serve --adapters-dir DIR` serves DIR/adapter_<track>/ as model `<track>`) when the
 * server lists it, otherwise to the base model (`baseModel`, or the first model the server lists).
 */
import { createOpenAICompatible } from "@ai-sdk/openai-compatible";

import { createSlmAgentForModel, type SlmChatModel } from "./agent.js";
import { buildPrompt, checkTrack, messagesForPrompt, type FunctionSignature, type Track } from "./prompts.js";

export interface SlmClientOptions {
  /** The server's OpenAI base URL, e.g. `http://127.0.0.1:8000/v1`. */
  baseURL: string;
  /** The server's --api-key, if it was started with one. */
  apiKey?: string;
  /** The base model's name (default: the first model the server lists, which is the base model). */
  baseModel?: string;
  /** Completion length cap sent as max_tokens (default: the server's --max-new-tokens). */
  maxTokens?: number;
  /** fetch to use for every request (default: the global fetch). */
  fetch?: typeof globalThis.fetch;
}

export interface SlmClient {
  readonly baseURL: string;
  readonly maxTokens?: number;
  /** Raw text for the structured track (JSON expected, not parsed). */
  structured(request: string, functions: readonly FunctionSignature[]): Promise<string>;
  /** Raw text for the toolcall track (`<tool_call name="...">{...}</tool_call>` expected, not parsed). */
  toolcall(request: string, functions: readonly FunctionSignature[]): Promise<string>;
  /** Raw text for a track's request: the evaluation's messages, the track's model. */
  complete(track: Track, request: string, functions: readonly FunctionSignature[]): Promise<string>;
  /** Raw text for an already built prompt (a data-set row's `prompt`), sent to the track's model. */
  completePrompt(track: Track, prompt: string): Promise<string>;
  /** The model names the server serves (`GET /v1/models`, fetched once). */
  models(): Promise<string[]>;
  /** The served model a track goes to: the track's adapter if listed, else the base model. */
  modelFor(track: Track): Promise<string>;
  /** The AI SDK chat model a track goes to, with its name. */
  languageModel(track: Track): Promise<{ name: string; model: SlmChatModel }>;
}

export function createSlmClient(options: SlmClientOptions): SlmClient {
  const baseURL = options.baseURL.replace(/\/+$/, "");
  const fetchImpl = options.fetch ?? globalThis.fetch;
  const provider = createOpenAICompatible({ name: "slm-swap", baseURL, apiKey: options.apiKey, fetch: fetchImpl });
  const agents = new Map<string, ReturnType<typeof createSlmAgentForModel>>();
  let listing: Promise<string[]> | undefined;

  async function fetchModels(): Promise<string[]> {
    const headers: Record<string, string> = options.apiKey ? { authorization: `Bearer ${options.apiKey}` } : {};
    const response = await fetchImpl(`${baseURL}/models`, { headers });
    if (!response.ok) {
      throw new Error(`GET ${baseURL}/models: HTTP ${response.status}: ${(await response.text()).slice(0, 500)}`);
    }
    const body = (await response.json()) as { data?: { id?: unknown }[] };
    const names = (body.data ?? []).map((entry) => entry.id).filter((id): id is string => typeof id === "string");
    if (names.length === 0) throw new Error(`GET ${baseURL}/models: the server lists no models`);
    return names;
  }

  function models(): Promise<string[]> {
    listing ??= fetchModels().catch((err) => {
      listing = undefined; // try again next time
      throw err;
    });
    return listing;
  }

  async function modelFor(track: Track): Promise<string> {
    checkTrack(track);
    const served = await models();
    const base = options.baseModel ?? served[0];
    if (served.includes(track) && track !== base) return track;
    if (!served.includes(base)) {
      throw new Error(`base model ${JSON.stringify(base)} is not served at ${baseURL} (served: ${served.join(", ")})`);
    }
    return base;
  }

  async function languageModel(track: Track) {
    const name = await modelFor(track);
    return { name, model: provider.chatModel(name) };
  }

  async function completePrompt(track: Track, prompt: string): Promise<string> {
    const [, user] = messagesForPrompt(prompt); // [system, user]: the system message is the agent's instructions
    const { name, model } = await languageModel(track);
    let agent = agents.get(name);
    if (!agent) {
      agent = createSlmAgentForModel({ model, id: `slm-swap-${name}`, maxTokens: options.maxTokens });
      agents.set(name, agent);
    }
    // Instructions (SYSTEM_PROMPT) + the user message: the server receives exactly [system, user]
    // (test/server.test.ts checks the body on the wire).
    const result = await agent.generate([{ role: "user", content: user.content }]);
    if (result.error) throw result.error instanceof Error ? result.error : new Error(String(result.error));
    return result.text;
  }

  const complete = (track: Track, request: string, functions: readonly FunctionSignature[]) =>
    completePrompt(track, buildPrompt(track, request, functions));

  return {
    baseURL,
    maxTokens: options.maxTokens,
    structured: (request, functions) => complete("structured", request, functions),
    toolcall: (request, functions) => complete("toolcall", request, functions),
    complete,
    completePrompt,
    models,
    modelFor,
    languageModel,
  };
}
