/**
 * A Mastra Agent with one real tool, pointed at `slm-swap gateway` instead of a hosted deployment.
 * The application changes nothing but the base URL: the gateway lets the SLM answer the agent's
 * tool-calling request when its call validates against the tool's schema, and hands everything else
 * (an invalid call, the turn that carries the tool's result) to the hosted model.
 *
 *     const agent = createGatewayAgent({ baseURL: "http://127.0.0.1:8100/v1" });
 *     const { text, toolResults } = await agent.generate("Convert 3.5 meters to feet");
 */
import { createOpenAICompatible } from "@ai-sdk/openai-compatible";
import { Agent } from "@mastra/core/agent";
import { createTool } from "@mastra/core/tools";
import { z } from "zod";

/** Metres in one of each unit the tool converts. */
const METERS_PER_UNIT = { m: 1, km: 1000, cm: 0.01, mi: 1609.344, ft: 0.3048, in: 0.0254 } as const;
export type LengthUnit = keyof typeof METERS_PER_UNIT;
const LENGTH_UNITS = Object.keys(METERS_PER_UNIT) as [LengthUnit, ...LengthUnit[]];

/** The tool's arguments; the agent sends the model this schema as the tool's JSON Schema `parameters`. */
export const convertLengthInput = z.object({
  value: z.number().describe("the length to convert"),
  from_unit: z.enum(LENGTH_UNITS).describe("the unit the length is given in"),
  to_unit: z.enum(LENGTH_UNITS).describe("the unit to convert to"),
});
export type ConvertLengthInput = z.infer<typeof convertLengthInput>;

export interface ConvertLengthOutput {
  converted: number; // rounded to 4 decimals
  unit: LengthUnit;
  text: string; // e.g. "3.5 m = 11.4829 ft"
}

/** The conversion itself, through metres. */
export function convertLength({ value, from_unit, to_unit }: ConvertLengthInput): ConvertLengthOutput {
  const converted = Math.round(((value * METERS_PER_UNIT[from_unit]) / METERS_PER_UNIT[to_unit]) * 1e4) / 1e4;
  return { converted, unit: to_unit, text: `${value} ${from_unit} = ${converted} ${to_unit}` };
}

/** The agent's one tool. Mastra validates the model's arguments against `convertLengthInput` before `execute`. */
export const convertLengthTool = createTool({
  id: "convert_length",
  description: "Convert a length between units (m, km, cm, mi, ft, in).",
  inputSchema: convertLengthInput,
  execute: async (input) => convertLength(input),
});

export const GATEWAY_AGENT_INSTRUCTIONS =
  "You convert lengths. Call convert_length for every conversion, then answer with its result.";

export interface GatewayAgentOptions {
  /** The gateway's OpenAI base URL, e.g. `http://127.0.0.1:8100/v1`. */
  baseURL: string;
  /** The gateway's key (`SLM_SWAP_GATEWAY_API_KEY`), if it was started with one. */
  apiKey?: string;
  /** The model name the application asks for; the gateway answers under it (default `gpt-4o`). */
  model?: string;
  /** fetch to use for every request, e.g. one that reads the gateway's `x-slm-swap-route` header. */
  fetch?: typeof globalThis.fetch;
}

/** A Mastra Agent whose model is the gateway (OpenAI-compatible) and whose one tool is `convert_length`. */
export function createGatewayAgent({ baseURL, apiKey, model = "gpt-4o", fetch }: GatewayAgentOptions): Agent {
  const provider = createOpenAICompatible({ name: "slm-swap-gateway", baseURL: baseURL.replace(/\/+$/, ""), apiKey, fetch });
  return new Agent({
    id: "slm-swap-gateway-agent",
    name: "slm-swap-gateway-agent",
    instructions: GATEWAY_AGENT_INSTRUCTIONS,
    model: provider.chatModel(model),
    tools: { convert_length: convertLengthTool },
  });
}
