/**
 * A Mastra Agent with one real tool (`convert_length`), pointed at `slm-swap gateway` instead of the
 * hosted deployment (see README.md, "Through the gateway"). From the repository root:
 *
 *     mastra/node_modules/.bin/tsx mastra/examples/gateway-agent.ts "Convert 3.5 meters to feet"
 *
 * GATEWAY_URL (default http://127.0.0.1:8100/v1); SLM_SWAP_GATEWAY_API_KEY if the gateway has a key.
 * stderr says who answered each request the agent made; stdout, the tool calls and the answer.
 */
import { createGatewayAgent } from "../src/index.js";

const baseURL = process.env.GATEWAY_URL ?? "http://127.0.0.1:8100/v1";
const question = process.argv.slice(2).join(" ") || "Convert 3.5 meters to feet";

// The gateway says on every response which model answered and why: x-slm-swap-route / -reason.
const fetchShowingRoute: typeof globalThis.fetch = async (input, init) => {
  const response = await globalThis.fetch(input, init);
  const reason = response.headers.get("x-slm-swap-reason");
  console.error(`gateway: ${response.headers.get("x-slm-swap-route")}${reason ? ` (${reason})` : ""}`);
  return response;
};

const agent = createGatewayAgent({ baseURL, apiKey: process.env.SLM_SWAP_GATEWAY_API_KEY, fetch: fetchShowingRoute });
const result = await agent.generate(question);
if (result.error) throw result.error;
for (const { payload } of result.toolResults) {
  console.log(`${payload.toolName}(${JSON.stringify(payload.args)}) -> ${JSON.stringify(payload.result)}`);
}
console.log(result.text);
