export {
  buildMessages,
  buildPrompt,
  checkTrack,
  messagesForPrompt,
  renderFunctions,
  SYSTEM_PROMPT,
  TEMPLATES,
  TRACKS,
} from "./prompts.js";
export type { ChatMessage, FunctionSignature, Track } from "./prompts.js";
export { floatRepr, parseJson, PyFloat, pythonJsonDumps } from "./pyjson.js";
export { createSlmClient } from "./client.js";
export type { SlmClient, SlmClientOptions } from "./client.js";
export { createSlmAgent, createSlmAgentForModel } from "./agent.js";
export type { ModelResolver, SlmAgentOptions, SlmChatModel } from "./agent.js";
export { convertLength, convertLengthInput, convertLengthTool, createGatewayAgent, GATEWAY_AGENT_INSTRUCTIONS } from "./gateway-agent.js";
export type { ConvertLengthInput, ConvertLengthOutput, GatewayAgentOptions, LengthUnit } from "./gateway-agent.js";
