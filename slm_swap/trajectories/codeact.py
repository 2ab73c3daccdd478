"""The CodeAct agent every side runs: smolagents' `CodeAgent`, one compact prompt, tools from signatures.

The teacher (capture), the student (agent eval) and the training rows all use this one agent and
prompt, so what the student is trained on is what it is later asked. smolagents' own system prompt
is about 2,331 SmolLM2 tokens, more than the seed's 2,048-token training sequence; ours is a few
hundred. Model-written code runs only in smolagents' restricted local executor (`executor_type="local"`,
no extra imports authorized): it is never `exec`'d any other way.

Tools are built from a row's function signatures. By default their bodies call no real API: they
check the arguments against the signature, record the call and return a deterministic simulated
observation. A user with real tools passes `--tools package.module:factory`, a callable taking the
row's signatures (a list of dicts) and returning smolagents `Tool`s; every tool, simulated or real,
is wrapped so the calls the agent actually made are recorded.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import keyword
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from smolagents import CodeAgent, LogLevel, Tool
from smolagents.agents import EMPTY_PROMPT_TEMPLATES, PromptTemplates
from smolagents.memory import ActionStep
from smolagents.models import MessageRole

from slm_swap.infra import json_input
from slm_swap.infra.errors import SlmSwapError
from slm_swap.infra.fileio import canonical_json
from slm_swap.llm.agent_models import plain_messages

DEFAULT_MAX_STEPS = 4
DEFAULT_TOOLS = "slm_swap.trajectories.codeact:simulated_tools"
CODE_OPEN, CODE_CLOSE = "<code>", "</code>"  # smolagents' default code tags
# What the code prints reaches the model as its next observation: smolagents' default (50,000
# characters) lets one `print` in a loop fill a small model's context; a tool result needs far less.
MAX_PRINT_OUTPUTS = 2000

SYSTEM_PROMPT = """\
You solve the user's task by writing Python code that calls the tools below.
Each turn: one line 'Thought: ...' saying what you will do next, then Python code between \
{{code_block_opening_tag}} and {{code_block_closing_tag}}.
What the code prints is shown to you as 'Observation:'. Call the one tool that fulfils the task, with \
keyword arguments taken from the task, as `result = tool_name(...)` then `print(result)`; when you have \
its result, end with `final_answer(result)`.

Tools:
{%- for tool in tools.values() %}
{{ tool.to_code_prompt() }}
{%- endfor %}"""

PROMPT_TEMPLATES = PromptTemplates(
    system_prompt=SYSTEM_PROMPT,
    planning=EMPTY_PROMPT_TEMPLATES["planning"],
    managed_agent=EMPTY_PROMPT_TEMPLATES["managed_agent"],
    # Past the step limit smolagents asks once more for an answer from the agent's memory.
    final_answer={
        "pre_messages": "An agent could not finish the task below within its step limit. Its memory follows.",
        "post_messages": "Based on the above, give your best answer to the task:\n{{task}}",
    },
)

# JSON-schema-ish types used by BFCL and xLAM signatures -> smolagents' input types.
_TOOL_TYPES = {
    "string": "string", "str": "string", "integer": "integer", "int": "integer", "float": "number",
    "number": "number", "boolean": "boolean", "bool": "boolean", "array": "array", "list": "array",
    "tuple": "array", "dict": "object", "object": "object", "any": "any",
}


def python_name(name: str) -> str:
    """A function name as a Python identifier: BFCL names like `math.hypot` become `math_hypot`;
    the recorded call keeps the source's name."""
    identifier = re.sub(r"\W", "_", name)
    if not identifier or identifier[0].isdigit() or keyword.iskeyword(identifier):
        identifier = f"fn_{identifier}"
    return identifier


def simulated_observation(name: str, arguments: dict[str, Any]) -> str:
    """The same call always gets the same answer; different calls get different ones."""
    digest = hashlib.sha256(canonical_json({"name": name, "arguments": arguments}).encode()).hexdigest()[:12]
    return json.dumps({"status": "ok", "tool": name, "result_id": digest})


class SimulatedTool(Tool):
    """A tool made from a function signature: checks the arguments, calls nothing, answers deterministically."""

    skip_forward_signature_validation = True  # its inputs come from the signature, not from `forward`'s
    output_type = "string"

    def __init__(self, signature: dict[str, Any]):
        parameters = signature.get("parameters") or {}
        properties = parameters.get("properties") or {}
        self.required = [p for p in parameters.get("required") or [] if p in properties]
        self.source_name = str(signature["name"])
        self.name = python_name(self.source_name)
        self.description = str(signature.get("description") or self.source_name)
        self.inputs = {}
        for parameter, spec in properties.items():
            spec = spec if isinstance(spec, dict) else {}
            entry = {"type": _TOOL_TYPES.get(str(spec.get("type", "any")).lower(), "any"),
                     "description": str(spec.get("description") or parameter)}
            if parameter not in self.required:
                entry["nullable"] = True
            self.inputs[parameter] = entry
        super().__init__()

    def forward(self, *args: Any, **kwargs: Any) -> str:
        arguments = bind_arguments(self.name, list(self.inputs), args, kwargs)
        missing = [p for p in self.required if p not in arguments]
        if missing:
            raise TypeError(f"{self.name}() missing required argument(s): {', '.join(missing)}")
        # As recorded (`_plain`): any value the model's code makes gets an answer, none an exception.
        return simulated_observation(self.source_name, {k: _plain(v, default=repr) for k, v in arguments.items()})


def bind_arguments(tool: str, parameters: list[str], args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Positional arguments named in the signature's order, then the keyword ones; unknown names refused."""
    if len(args) > len(parameters):
        raise TypeError(f"{tool}() takes {len(parameters)} arguments but {len(args)} were given")
    arguments = dict(zip(parameters, args))
    for name, value in kwargs.items():
        if name not in parameters:
            raise TypeError(f"{tool}() got an unexpected keyword argument {name!r}")
        if name in arguments:
            raise TypeError(f"{tool}() got multiple values for argument {name!r}")
        arguments[name] = value
    return arguments


def simulated_tools(functions: list[dict[str, Any]]) -> list[Tool]:
    """The default tools factory: one simulated tool per signature."""
    return [SimulatedTool(signature) for signature in functions]


class RecordedTool(Tool):
    """Wraps any tool so each call the agent makes is recorded (source name + arguments) before it runs."""

    skip_forward_signature_validation = True

    def __init__(self, inner: Tool, source_name: str, calls: list[dict[str, Any]]):
        self.inner, self.source_name, self.calls = inner, source_name, calls
        self.name, self.description = inner.name, inner.description
        self.inputs, self.output_type = inner.inputs, inner.output_type
        self.output_schema = getattr(inner, "output_schema", None)
        super().__init__()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        arguments = bind_arguments(self.name, list(self.inputs), args, kwargs)
        self.calls.append({"name": self.source_name, "arguments": {k: _plain(v, default=repr) for k, v in arguments.items()}})
        return self.inner(**arguments)


def load_tools_factory(spec: str) -> Callable[[list[dict[str, Any]]], list[Tool]]:
    """`package.module:factory` -> the callable, or one line saying why not."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise SlmSwapError(f"--tools {spec!r}: expected package.module:factory")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure of the user's module is bad input
        raise SlmSwapError(f"--tools {spec!r}: cannot import {module_name}: {type(exc).__name__}: {exc}") from None
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise SlmSwapError(f"--tools {spec!r}: {module_name} has no callable {attribute!r}")
    return factory


def make_tools(factory: Callable, spec: str, functions: list[dict[str, Any]], calls: list[dict[str, Any]]) -> list[Tool]:
    """The factory's tools for one row, each recording into `calls`."""
    try:
        tools = factory(functions)
    except Exception as exc:
        raise SlmSwapError(f"--tools {spec!r}: the factory failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(tools, (list, tuple)) or not tools or not all(isinstance(t, Tool) for t in tools):
        raise SlmSwapError(f"--tools {spec!r}: the factory returned no tools (expected a non-empty list of smolagents Tool)")
    by_python_name = {python_name(str(f.get("name"))): str(f.get("name")) for f in functions}
    return [RecordedTool(tool, by_python_name.get(tool.name, tool.name), calls) for tool in tools]


class CodeActAgent(CodeAgent):
    """smolagents' CodeAgent, its history without the 'Calling tools: [...]' echo of each step's code:
    the code is already in the assistant's message, and the echo would double every step's tokens."""

    def write_memory_to_messages(self, summary_mode: bool = False):
        return [m for m in super().write_memory_to_messages(summary_mode) if m.role != MessageRole.TOOL_CALL]


def build_agent(model: Any, tools: list[Tool], max_steps: int) -> CodeActAgent:
    return CodeActAgent(
        tools=tools, model=model, prompt_templates=PROMPT_TEMPLATES, max_steps=max_steps,
        executor_type="local", additional_authorized_imports=[], verbosity_level=LogLevel.OFF,
        code_block_tags=(CODE_OPEN, CODE_CLOSE), max_print_outputs_length=MAX_PRINT_OUTPUTS,
    )


def system_prompt(functions: list[dict[str, Any]], tools_factory: Callable = simulated_tools,
                  tools_spec: str = DEFAULT_TOOLS) -> str:
    """The system prompt the agent gets for a task with these signatures: the tools as the model sees them."""
    return build_agent(None, make_tools(tools_factory, tools_spec, functions, []), 1).system_prompt


def prompt_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class AgentRun:
    """What one agent run did, in plain data."""

    steps: list[dict[str, Any]]
    messages: list[dict[str, str]]  # the conversation as the model saw it, ending with its last output
    finished: bool  # final_answer() was called
    state: str  # smolagents' end state: "success" or "max_steps_error"
    final_answer: Any = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)


def solve(model: Any, task: str, functions: list[dict[str, Any]], *, max_steps: int = DEFAULT_MAX_STEPS,
          tools_factory: Callable = simulated_tools, tools_spec: str = DEFAULT_TOOLS) -> AgentRun:
    """Run a fresh agent on one task with tools made from its signatures. A request the model
    client could not complete raises smolagents' `AgentGenerationError`; everything the model did
    wrong (bad code, wrong calls, no final answer) is recorded in the steps instead."""
    calls: list[dict[str, Any]] = []
    agent = build_agent(model, make_tools(tools_factory, tools_spec, functions, calls), max_steps)
    result = agent.run(task, return_full_result=True)
    steps = [step_record(step) for step in agent.memory.steps if isinstance(step, ActionStep)]
    finished = any(step["is_final_answer"] for step in steps)
    return AgentRun(steps=steps, messages=conversation(agent), finished=finished, state=result.state,
                    final_answer=_plain(result.output) if finished else None, tool_calls=list(calls))


def conversation(agent: CodeActAgent) -> list[dict[str, str]]:
    """The agent's memory as the chat messages its model is sent."""
    return plain_messages(agent.write_memory_to_messages())


def step_record(step: ActionStep) -> dict[str, Any]:
    output = step.model_output if isinstance(step.model_output, str) else None
    usage = step.token_usage
    return {
        "step": step.step_number,
        "thought": output.split(CODE_OPEN, 1)[0].strip().removeprefix("Thought:").strip() if output else None,
        "code": step.code_action,
        "observation": step.observations,
        "error": str(step.error) if step.error else None,
        "usage": {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens} if usage else None,
        "latency_s": round(step.timing.duration, 4) if step.timing and step.timing.duration is not None else None,
        "is_final_answer": bool(step.is_final_answer),
        "model_output": output,
    }


def _plain(value: Any, default: Callable[[Any], Any] | None = None) -> Any:
    """A JSON value the records can hold: `value` (a final answer, a tool call's argument) as it is
    when JSON can hold it (objects it cannot are passed to `default`), else its repr. The model's code
    can make anything: `10**5000` (past Python's digit limit), a list nested 100,000 deep, `inf`, lone
    surrogates; what `json_input` would refuse to read back is not recorded as JSON."""
    try:
        return json_input.loads(json.dumps(value, default=default, allow_nan=False))
    except (TypeError, ValueError, RecursionError):  # JsonInputError is a ValueError
        pass
    try:
        return repr(value)
    except Exception:  # the digit limit, a deep value, or a __repr__ of the model's own that fails
        return f"<{type(value).__name__} with no text form>"
