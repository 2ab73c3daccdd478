/**
 * The Mastra Agent for the local SLM: instructions are exactly the evaluation's SYSTEM_PROMPT and
 * nothing else (no tools, memory or processors), so `agent.generate([{ role: "user", content:
 * buildPrompt(...) }])` puts exactly the evaluation's `[system, user]` messages on the wire
 * (test/server.test.ts checks the body the server receives). Greedy: temperature 0.
 *
 *     const client = createSlmClient({ baseURL: "http://127.0.0.1:8000/v1" });
 *     const agent = await createSlmAgent(client, "toolcall"); // adapter `toolcall` if served, else the base model
 *     const { text } = await agent.generate([{ role: "user", content: buildPrompt("toolcall", request, functions) }]);
 */
import { Agent } from "@mastra/core/agent";
import type { OpenAICompatibleProvider } from "@ai-sdk/openai-compatible";

import { SYSTEM_PROMPT, type Track } from "./prompts.js";

/** A chat model of the OpenAI-compatible provider pointed at `slm-swap serve`. */
export type SlmChatModel = ReturnType<OpenAICompatibleProvider["chatModel"]>;

export interface SlmAgentOptions {
  /** The chat model to call, e.g. `createOpenAICompatible({ name, baseURL }).chatModel("toolcall")`. */
  model: SlmChatModel;
  /** Agent id and name (default: `slm-swap`). */
  id?: string;
  /** Completion length cap sent as max_tokens (default: the server's --max-new-tokens). */
  maxTokens?: number;
}

/** A Mastra Agent around one served model, with the evaluation's system prompt as instructions. */
export function createSlmAgentForModel({ model, id = "slm-swap", maxTokens }: SlmAgentOptions): Agent {
  return new Agent({
    id,
    name: id,
    instructions: SYSTEM_PROMPT,
    model,
    defaultOptions: { modelSettings: { temperature: 0, ...(maxTokens ? { maxOutputTokens: maxTokens } : {}) } },
  });
}

/** Anything that can resolve a track to a served model (an `SlmClient`). */
export interface ModelResolver {
  languageModel(track: Track): Promise<{ name: string; model: SlmChatModel }>;
  readonly maxTokens?: number;
}

/** The Agent for a track: the track's adapter when the server lists it, else the base model. */
export async function createSlmAgent(client: ModelResolver, track: Track): Promise<Agent> {
  const { name, model } = await client.languageModel(track);
  return createSlmAgentForModel({ model, id: `slm-swap-${name}`, maxTokens: client.maxTokens });
}
