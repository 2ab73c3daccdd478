"""Model clients. Every kind answers `complete(messages_list)` with `Completion`s as they finish:
`hosted` (the openai SDK, Azure or any OpenAI-compatible URL), `local` (transformers, in process) and
`engine` (the SLM on an engine at SLM_BASE_URL). `build_client` picks one for `--model-kind azure|slm`,
importing only the kind asked for."""

from __future__ import annotations

from slm_swap.infra.errors import SlmSwapError
from slm_swap.llm.completion import EVAL_BATCH_SIZE


def check_model_kind(kind: str, *, adapter=None, load_in_4bit: bool | None = None) -> None:
    """`--model-kind` and the flags that apply to the SLM only, checked before anything is built."""
    if kind not in ("azure", "slm"):
        raise SlmSwapError(f"unknown model kind {kind!r}: expected azure or slm")
    if kind == "azure" and adapter is not None:
        raise SlmSwapError("--adapter applies to --model-kind slm only")
    if kind == "azure" and load_in_4bit is not None:
        raise SlmSwapError("--load-in-4bit applies to --model-kind slm only")


def refuse_in_process_flags(given: dict[str, bool]) -> None:
    """With SLM_BASE_URL set, the flags that shape the SLM in process (`given`: flag -> whether the
    command had it) are one line: the engine there decides how it loads and runs the model."""
    for flag, was_given in given.items():
        if was_given:
            raise SlmSwapError(f"{flag} applies to the SLM in process; SLM_BASE_URL is set: the engine there decides "
                               "how it loads the model")


def build_client(kind: str, settings, *, adapter=None, concurrency: int = 8, timeout_s: float = 60.0,
                 max_retries: int = 4, batch_size: int = EVAL_BATCH_SIZE, load_in_4bit: bool | None = None,
                 slm_model: str | None = None, precision: str = "fp32"):
    """The client for `--model-kind azure|slm` (heavy imports only for the kind asked for): the SLM on
    the engine at SLM_BASE_URL when it is set (`slm_model`: a model it serves by name), else in process."""
    check_model_kind(kind, adapter=adapter, load_in_4bit=load_in_4bit)
    if kind == "azure":
        if slm_model is not None:
            raise SlmSwapError("--slm-model applies to --model-kind slm only")
        from slm_swap.llm.hosted import HostedClient

        return HostedClient(settings, concurrency=concurrency, timeout_s=timeout_s, max_retries=max_retries)
    if settings.slm_base_url:
        refuse_in_process_flags({"--load-in-4bit": load_in_4bit is not None, "--precision": precision != "fp32"})
        from slm_swap.llm.engine import EngineClient

        return EngineClient(settings, model=slm_model, adapter=adapter, concurrency=concurrency, timeout_s=timeout_s,
                            max_retries=max_retries)
    if slm_model is not None:
        raise SlmSwapError("--slm-model names a model on the engine at SLM_BASE_URL, which is not set")
    from slm_swap.llm.local import load_local_model

    return load_local_model(settings.slm_model_path, adapter, batch_size, load_in_4bit, precision)
