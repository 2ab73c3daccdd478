/**
 * The evaluation's prompts, read from `prompts.json` — the file `npm run prompts` exports from the
 * Python package (`slm_swap/core/prompts.py`, the single source of truth). Nothing here is retyped:
 * this module only fills the exported templates the way `build_prompt` does and wraps the result
 * the way `build_messages` does. `tests/test_mastra_prompts.py` fails if the committed file drifts.
 */
import { readFileSync } from "node:fs";

import { pythonJsonDumps } from "./pyjson.js";

export const TRACKS = ["structured", "toolcall"] as const;
export type Track = (typeof TRACKS)[number];

/** A function signature as the data sets hold it (any JSON object). */
export type FunctionSignature = Record<string, unknown>;

export interface ChatMessage {
  role: "system" | "user";
  content: string;
}

interface ExportedPrompts {
  system_prompt: string;
  templates: Record<Track, string>;
}

export const PROMPTS_FILE = new URL("../prompts.json", import.meta.url);

function loadPrompts(): ExportedPrompts {
  let data: unknown;
  try {
    data = JSON.parse(readFileSync(PROMPTS_FILE, "utf8"));
  } catch (err) {
    throw new Error(`cannot read ${PROMPTS_FILE.pathname} (run \`npm run prompts\`): ${(err as Error).message}`);
  }
  const prompts = data as Partial<ExportedPrompts>;
  const ok =
    typeof prompts?.system_prompt === "string" &&
    TRACKS.every((track) => typeof prompts.templates?.[track] === "string");
  if (!ok) {
    throw new Error(`${PROMPTS_FILE.pathname}: expected system_prompt and templates.{${TRACKS.join(",")}} (run \`npm run prompts\`)`);
  }
  return prompts as ExportedPrompts;
}

const PROMPTS = loadPrompts();
export const SYSTEM_PROMPT: string = PROMPTS.system_prompt;
export const TEMPLATES: Readonly<Record<Track, string>> = Object.freeze({ ...PROMPTS.templates });

export function checkTrack(track: string): Track {
  if (!(TRACKS as readonly string[]).includes(track)) {
    throw new Error(`unknown track ${JSON.stringify(track)}: expected one of ${TRACKS.join(", ")}`);
  }
  return track as Track;
}

/**
 * One JSON signature per line, in the order given (`render_functions`), as Python's json.dumps
 * writes it. Parse signatures from JSON text with `parseJson` (not JSON.parse) so floats such as
 * `1.0` stay floats and print as the evaluation printed them.
 */
export function renderFunctions(functions: readonly FunctionSignature[]): string {
  return functions.map((fn) => pythonJsonDumps(fn)).join("\n");
}

/** `build_prompt`: the track's template with `{functions}`, then `{request}`, replaced (str.replace). */
export function buildPrompt(track: Track, request: string, functions: readonly FunctionSignature[]): string {
  const template = TEMPLATES[checkTrack(track)];
  // split/join rather than String.replace: replacement strings must not interpret `$&` and friends.
  return template.split("{functions}").join(renderFunctions(functions)).split("{request}").join(request);
}

/** `build_messages`: the `[system, user]` messages for an already built prompt (a data-set row's). */
export function messagesForPrompt(prompt: string): ChatMessage[] {
  return [
    { role: "system", content: SYSTEM_PROMPT },
    { role: "user", content: prompt },
  ];
}

/** The `[system, user]` messages the evaluation sends for a row (`build_messages(build_prompt(...))`). */
export function buildMessages(track: Track, request: string, functions: readonly FunctionSignature[]): ChatMessage[] {
  return messagesForPrompt(buildPrompt(track, request, functions));
}
