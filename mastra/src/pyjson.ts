/**
 * Python's `json` module as the evaluation uses it, so function signatures render to exactly the
 * text `slm_swap.core.prompts.render_functions` produces.
 *
 * - `pythonJsonDumps(value)` is `json.dumps(value, ensure_ascii=False)`: ", " and ": " separators,
 *   keys in insertion order, non-ASCII kept, control characters as \u00XX, floats as `repr`.
 * - `parseJson(text)` is `json.loads(text)` keeping what `JSON.parse` loses: a float literal with
 *   an integral value (`1.0`, `2e3`) becomes a `PyFloat` (so it prints `1.0`, as Python does, not
 *   `1`), an integer beyond 2^53 a `bigint` (exact digits). Parse data-set JSON with it.
 *
 * Left as JavaScript has it: integer-like keys ("1") come first in a JavaScript object, whatever
 * their order in the text.
 */

/** A number Python holds as a float: printed as Python's float repr (`1.0`, not `1`). */
export class PyFloat {
  constructor(readonly value: number) {}
  valueOf(): number {
    return this.value;
  }
  toJSON(): number {
    return this.value;
  }
  toString(): string {
    return floatRepr(this.value);
  }
}

const STRING_ESCAPES: Record<string, string> = {
  '"': '\\"',
  "\\": "\\\\",
  "\n": "\\n",
  "\r": "\\r",
  "\t": "\\t",
  "\b": "\\b",
  "\f": "\\f",
};

function pyString(text: string): string {
  const escaped = text.replace(/[\x00-\x1f\\"]/g, (ch) => STRING_ESCAPES[ch] ?? `\\u${ch.charCodeAt(0).toString(16).padStart(4, "0")}`);
  return `"${escaped}"`;
}

/** `float.__repr__`: shortest round-trip digits; positional for exponents -4..15, else d.ddde+XX. */
export function floatRepr(value: number): string {
  if (Number.isNaN(value)) return "NaN";
  if (value === Infinity) return "Infinity";
  if (value === -Infinity) return "-Infinity";
  if (value === 0) return Object.is(value, -0) ? "-0.0" : "0.0";
  const [mantissa, exp] = value.toExponential().split("e"); // shortest round-trip digits, as repr's
  const exponent = Number(exp);
  const negative = mantissa.startsWith("-");
  const digits = mantissa.replace("-", "").replace(".", "");
  let body: string;
  if (exponent >= -4 && exponent < 16) {
    if (exponent < 0) body = `0.${"0".repeat(-exponent - 1)}${digits}`;
    else if (digits.length > exponent + 1) body = `${digits.slice(0, exponent + 1)}.${digits.slice(exponent + 1)}`;
    else body = `${digits}${"0".repeat(exponent + 1 - digits.length)}.0`;
  } else {
    const fraction = digits.length > 1 ? `${digits[0]}.${digits.slice(1)}` : digits;
    body = `${fraction}e${exponent < 0 ? "-" : "+"}${String(Math.abs(exponent)).padStart(2, "0")}`;
  }
  return negative ? `-${body}` : body;
}

function pyNumber(value: number): string {
  // A plain JavaScript number with an integral value is taken for a Python int (JSON.parse gives
  // 1 for both 1 and 1.0); use parseJson or PyFloat to keep a float a float.
  if (Number.isInteger(value) && Math.abs(value) < 1e16) return Object.is(value, -0) ? "0" : String(value);
  return floatRepr(value);
}

/** `json.dumps(value, ensure_ascii=False)`; undefined and functions are skipped like JSON.stringify. */
export function pythonJsonDumps(value: unknown): string {
  const out = dump(value);
  if (out === undefined) throw new TypeError("value is not JSON serializable");
  return out;
}

function dump(value: unknown): string | undefined {
  if (value instanceof PyFloat) return floatRepr(value.value);
  if (value !== null && typeof value === "object" && typeof (value as { toJSON?: unknown }).toJSON === "function") {
    value = (value as { toJSON: () => unknown }).toJSON();
  }
  if (value === null) return "null";
  switch (typeof value) {
    case "string":
      return pyString(value);
    case "number":
      return pyNumber(value);
    case "boolean":
      return value ? "true" : "false";
    case "bigint":
      return value.toString();
    case "undefined":
    case "function":
    case "symbol":
      return undefined;
  }
  if (Array.isArray(value)) {
    return `[${value.map((item) => dump(item) ?? "null").join(", ")}]`;
  }
  const items: string[] = [];
  for (const [key, item] of Object.entries(value as Record<string, unknown>)) {
    const text = dump(item);
    if (text !== undefined) items.push(`${pyString(key)}: ${text}`);
  }
  return `{${items.join(", ")}}`;
}

// ---------------------------------------------------------------------------------------------
// parseJson: JSON text to values, like json.loads (NaN, Infinity and -Infinity accepted too).
// ---------------------------------------------------------------------------------------------

const NUMBER = /-?(?:0|[1-9]\d*)(\.\d+)?([eE][-+]?\d+)?/y;
const STRING_BODY = /[^"\\\x00-\x1f]*/y;
const WHITESPACE = /[ \t\n\r]*/y;
const UNESCAPE: Record<string, string> = { '"': '"', "\\": "\\", "/": "/", b: "\b", f: "\f", n: "\n", r: "\r", t: "\t" };

export function parseJson(text: string): unknown {
  let at = 0;

  const fail = (what: string): never => {
    throw new SyntaxError(`parseJson: ${what} at position ${at}`);
  };
  const skip = () => {
    WHITESPACE.lastIndex = at;
    WHITESPACE.exec(text);
    at = WHITESPACE.lastIndex;
  };
  const literal = (word: string, value: unknown) => {
    if (!text.startsWith(word, at)) fail("unexpected token");
    at += word.length;
    return value;
  };

  function string(): string {
    at += 1; // opening quote
    let out = "";
    for (;;) {
      STRING_BODY.lastIndex = at;
      out += STRING_BODY.exec(text)![0];
      at = STRING_BODY.lastIndex;
      const ch = text[at];
      if (ch === '"') {
        at += 1;
        return out;
      }
      if (ch !== "\\") fail(ch === undefined ? "unterminated string" : "control character in string");
      const escape = text[at + 1];
      if (escape === "u") {
        const hex = text.slice(at + 2, at + 6);
        if (!/^[0-9a-fA-F]{4}$/.test(hex)) fail("bad \\u escape");
        out += String.fromCharCode(parseInt(hex, 16)); // surrogate pairs join as in Python
        at += 6;
      } else if (escape in UNESCAPE) {
        out += UNESCAPE[escape];
        at += 2;
      } else {
        fail("bad escape");
      }
    }
  }

  function number(): number | bigint | PyFloat {
    NUMBER.lastIndex = at;
    const match = NUMBER.exec(text);
    if (!match) return fail("unexpected token");
    at = NUMBER.lastIndex;
    const source = match[0];
    if (match[1] === undefined && match[2] === undefined) {
      const value = Number(source); // a Python int
      return Number.isSafeInteger(value) ? (Object.is(value, -0) ? 0 : value) : BigInt(source);
    }
    const value = Number(source); // a Python float
    return Number.isInteger(value) ? new PyFloat(value) : value;
  }

  function value(): unknown {
    skip();
    const ch = text[at];
    if (ch === "{") {
      at += 1;
      const object: Record<string, unknown> = {};
      skip();
      if (text[at] === "}") {
        at += 1;
        return object;
      }
      for (;;) {
        skip();
        if (text[at] !== '"') fail("expected a property name");
        const key = string();
        skip();
        if (text[at] !== ":") fail("expected ':'");
        at += 1;
        Object.defineProperty(object, key, { value: value(), enumerable: true, writable: true, configurable: true });
        skip();
        if (text[at] === ",") at += 1;
        else if (text[at] === "}") {
          at += 1;
          return object;
        } else fail("expected ',' or '}'");
      }
    }
    if (ch === "[") {
      at += 1;
      const array: unknown[] = [];
      skip();
      if (text[at] === "]") {
        at += 1;
        return array;
      }
      for (;;) {
        array.push(value());
        skip();
        if (text[at] === ",") at += 1;
        else if (text[at] === "]") {
          at += 1;
          return array;
        } else fail("expected ',' or ']'");
      }
    }
    if (ch === '"') return string();
    if (ch === "t") return literal("true", true);
    if (ch === "f") return literal("false", false);
    if (ch === "n") return literal("null", null);
    if (ch === "N") return literal("NaN", NaN);
    if (ch === "I") return literal("Infinity", Infinity);
    if (ch === "-" && text.startsWith("-Infinity", at)) return literal("-Infinity", -Infinity);
    return number();
  }

  const result = value();
  skip();
  if (at !== text.length) fail("extra data");
  return result;
}
