"""The models that play the CodeAct agent: the hosted one (capture's teacher, or under evaluation)
and the local SLM (under evaluation, with or without an adapter).

An `AgentModel` is what capture and the agent eval need of either: an identity for records, a
factory for the smolagents model each agent run uses (given the run's new-token limit per turn), a
scrubber for anything the model sends back, and `close`.

- `hosted_agent_model`: the hosted model reached exactly as `eval` reaches it (`HostedClient`: the
  same settings, `openai` client, timeout, retries), wrapped in smolagents' `OpenAIModel` or
  `AzureOpenAIModel`. Retries are the SDK's; smolagents' own retrying is off so they do not multiply.
- `local_agent_model`: the project's `LocalModel` (loaded once by `load_local_model`) behind the
  batching worker (`clients.batching`): the steps of agents running side by side are decoded
  together, and a step ends as soon as its text reaches one of the agent's stop sequences.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from smolagents import Model
from smolagents.models import ChatMessage, MessageRole, get_clean_message_list, tool_role_conversions
from smolagents.monitoring import TokenUsage

from slm_swap.infra.config import Settings
from slm_swap.infra.errors import SlmSwapError

# New tokens per model turn, unless a capture says otherwise (`--max-turn-tokens`; the eval uses the
# capture's): a CodeAct step is a thought and a block of code, longer than a single-call answer.
AGENT_MAX_NEW_TOKENS = 512


def plain_messages(messages: list[Any]) -> list[dict[str, str]]:
    """smolagents messages as plain chat messages (roles converted, consecutive same-role messages
    merged, text flattened), through smolagents' own message builder: what a chat template renders."""
    messages = get_clean_message_list(messages, role_conversions=tool_role_conversions, flatten_messages_as_text=True)
    return [{"role": str(getattr(m["role"], "value", m["role"])), "content": m["content"]} for m in messages]


@dataclass(frozen=True)
class AgentModel:
    """The model that plays the agent: its identity, a factory for the smolagents models that call
    it (`make_model(max_tokens)`: at most that many new tokens per turn), the scrubber that removes
    configured secrets from anything it sends back, and `close`."""

    identity: str
    make_model: Callable[[int], Any]
    scrub: Callable[[str], str]
    close: Callable[[], None] = field(default=lambda: None)


def hosted_agent_model(settings: Settings, *, timeout_s: float = 60.0, max_retries: int = 4) -> AgentModel:
    """The hosted model (Azure or an OpenAI-compatible URL) as `eval` configures it."""
    from slm_swap.llm.hosted import HostedClient

    return api_agent_model(HostedClient(settings, timeout_s=timeout_s, max_retries=max_retries))


def api_agent_model(hosted: Any) -> AgentModel:
    """A model behind the OpenAI API (a `HostedClient`, or the SLM's `EngineClient`), in smolagents'
    `OpenAIModel` or `AzureOpenAIModel` with that client."""
    import openai
    from smolagents import AzureOpenAIModel, OpenAIModel

    model_class = AzureOpenAIModel if isinstance(hosted.client, openai.AzureOpenAI) else OpenAIModel

    def make_model(max_tokens: int) -> Any:
        return model_class(model_id=hosted.model, client=hosted.client, retry=False,
                           temperature=0, max_tokens=max_tokens)

    return AgentModel(hosted.identity, make_model, hosted.scrub, hosted.close)


class LocalAgentModel(Model):
    """A smolagents model whose every step is one job on the local model's batching worker: greedy,
    at most `max_tokens` new tokens, ended early at the agent's stop sequences (cut off, as the
    OpenAI API does)."""

    def __init__(self, worker: Any, adapter: str | None, model_id: str, max_tokens: int = AGENT_MAX_NEW_TOKENS):
        super().__init__(model_id=model_id, flatten_messages_as_text=True)
        self.worker, self.adapter, self.max_tokens = worker, adapter, max_tokens

    def token_budget(self, messages: list[dict[str, str]]) -> int:
        """`max_tokens`, or what is left of the model's context after the conversation; a conversation
        that leaves no room fails the run (recorded as the step's error) rather than decoding past
        the model's positions."""
        local = self.worker.model
        limit = local.context_length
        if not limit:
            return self.max_tokens
        used = len(local.tokenizer(local.render(messages), add_special_tokens=False)["input_ids"])
        if used >= limit:
            raise ValueError(f"the conversation ({used} tokens) fills {local.model_path.name}'s context of {limit} tokens")
        return min(self.max_tokens, limit - used)

    def generate(self, messages: list[Any], stop_sequences: list[str] | None = None, response_format: Any = None,
                 tools_to_call_from: Any = None, **kwargs: Any) -> ChatMessage:
        from slm_swap.llm.batching import Job, cut_at_stop

        stops = [stop for stop in stop_sequences or [] if stop]
        plain = plain_messages(messages)
        result = self.worker.submit(Job(plain, self.adapter, self.token_budget(plain), stops)).result()
        text, _ = cut_at_stop(result.text, stops)
        return ChatMessage(role=MessageRole.ASSISTANT, content=text,
                           token_usage=TokenUsage(input_tokens=result.prompt_tokens, output_tokens=result.completion_tokens))


# Agents running side by side send their next steps within milliseconds of each other once a batch
# returns (their code runs, their prompts are rebuilt): a batch waits this long for them, or they
# split into lanes that each pay the whole per-step cost of decoding.
AGENT_GATHER_S = 0.25


def local_agent_model(model: Any, *, batch_size: int = 8) -> AgentModel:
    """The local SLM (`LocalModel`, with its default adapter if it has one) as the agent; steps of up
    to `batch_size` agents are decoded together. `close` stops the worker thread."""
    from slm_swap.llm.batching import ModelWorker
    from slm_swap.llm.local import DEFAULT

    worker = ModelWorker(model, batch_size, gather_s=AGENT_GATHER_S)
    identity = model.identity + (f" + adapter {model.adapter_path}" if model.adapter_path else "")
    # DEFAULT: whatever the model answers with by default, its adapter merged in or its default adapter.
    return AgentModel(identity, lambda max_tokens: LocalAgentModel(worker, DEFAULT, model.model_path.name,
                                                                   max_tokens),
                      lambda text: text, worker.stop)


def build_agent_model(kind: str, settings: Settings, *, adapter: Any = None, timeout_s: float = 60.0,
                      max_retries: int = 4, concurrency: int = 8, batch_size: int = 64,
                      load_in_4bit: bool | None = None, slm_model: str | None = None,
                      precision: str = "fp32") -> tuple[AgentModel, dict[str, Any]]:
    """(the agent model for `--model-kind azure|slm`, the metrics file's `model` record), as
    `clients.build_client` builds an eval's client: the hosted model, the SLM on the engine at
    SLM_BASE_URL (`slm_model`: a model it serves by name; else the adapter loaded there), or the SLM
    loaded once by `load_local_model` (with the adapter as its default)."""
    from slm_swap.llm.clients import check_model_kind

    check_model_kind(kind, adapter=adapter, load_in_4bit=load_in_4bit)
    if kind == "azure" and slm_model is not None:
        raise SlmSwapError("--slm-model applies to --model-kind slm only")
    if kind == "azure":
        model = hosted_agent_model(settings, timeout_s=timeout_s, max_retries=max_retries)
        return model, {"kind": "azure", "identity": model.identity, "adapter": None}
    if settings.slm_base_url or slm_model is not None:
        from slm_swap.llm.clients import build_client

        engine = build_client("slm", settings, adapter=adapter, timeout_s=timeout_s, max_retries=max_retries,
                              load_in_4bit=load_in_4bit, slm_model=slm_model, precision=precision)
        return api_agent_model(engine), {"kind": "slm", "identity": engine.identity,
                                         "adapter": str(adapter) if adapter else None}
    from slm_swap.llm.local import load_local_model

    local = load_local_model(settings.slm_model_path, adapter, batch_size, load_in_4bit, precision)
    return (local_agent_model(local, batch_size=concurrency),
            {"kind": "slm", "identity": local.identity, "adapter": str(adapter) if adapter else None})
