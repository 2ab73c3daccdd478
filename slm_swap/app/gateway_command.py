"""`slm-swap gateway` as a command: check the settings, bind the port, choose the SLM engine (in
process, following the registry of promoted adapters, or by URL), load the confidence gates, open
tracing, then serve the app of `gateway.create_gateway_app` until interrupted."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import openai

from slm_swap.app.gateway import SlmEngine, Upstream, create_gateway_app
from slm_swap.app.http_server import is_loopback, listening_socket
from slm_swap.evaluation.calibrate import Policy, load_policy
from slm_swap.evaluation.registry import PromotedAdapter, load_promoted, verify_adapter
from slm_swap.infra.config import Settings
from slm_swap.infra.errors import SlmSwapError
from slm_swap.infra.tracing import open_tracer
from slm_swap.llm.clients import refuse_in_process_flags
from slm_swap.llm.hosted import HostedClient, check_url


def run_gateway(settings: Settings, host: str, port: int, records_path: Path, slm_models: Mapping[str, str],
                api_key: str | None = None, slm_timeout_s: float = 30.0, log_content: bool = True,
                modes: Mapping[str, str] | None = None, model_path: Path | None = None,
                adapters_dir: Path | None = None, policy_paths: Iterable[Path] = (),
                registry_path: Path | None = None, precision: str = "fp32", compile: bool = False) -> None:
    """Check the settings and bind the port (one line and no server when either fails), then serve
    until interrupted. The hosted client is `eval`'s (`HostedClient`: retries, timeouts). The SLM: the
    engine at SLM_BASE_URL (models per track: `slm_models`), else loaded in this process
    (`gateway_engine`: `model_path`, and the tracks' adapters found in `adapters_dir`), following the
    registry of promoted adapters (`registry_path`) without a restart (`gateway_reload`); `precision` and
    `compile` as `LocalModel` takes them."""
    import uvicorn

    from slm_swap.app.gateway_engine import start_in_process_engine, track_adapters
    from slm_swap.app.gateway_reload import AdapterReloader

    slm_url = check_url(settings.slm_base_url, "SLM_BASE_URL") if settings.slm_base_url else None
    if slm_url:
        refuse_in_process_flags({"--precision": precision != "fp32", "--compile": compile})
    hosted_client = HostedClient(settings)  # refuses at once without hosted settings
    policies = load_policies(policy_paths, slm_models)
    tracer = open_tracer(settings)  # refuses at once without Langfuse settings (LANGFUSE_DISABLED=1: none)
    adapters = {} if slm_url else track_adapters(adapters_dir, slm_models)
    sock = listening_socket(host, port)
    engine = reloader = None
    try:
        if not is_loopback(host) and not api_key:
            print(f"warning: gateway on {host} without SLM_SWAP_GATEWAY_API_KEY: anyone who can reach this port can "
                  "use the hosted model through it")
        if slm_url:
            slm_key = settings.slm_api_key.get_secret_value() if settings.slm_api_key else "unused"
            models, described = dict(slm_models), slm_url
            if registry_path is not None and load_promoted(registry_path):
                print(f"warning: {registry_path} names promoted adapters; the engine at SLM_BASE_URL must serve them "
                      "itself (the gateway loads adapters only into its in-process SLM)")
        else:
            print(f"loading the SLM {model_path or settings.slm_model_path} in process ...", flush=True)
            engine = start_in_process_engine(model_path or settings.slm_model_path, adapters, slm_models,
                                             precision=precision, compile=compile)
            slm_url, slm_key, models, described = engine.url, engine.api_key, engine.models, engine.identity
            for policy in policies.values():
                if policy.model_identity != engine.model_identity:  # e.g. calibrated in fp32, served in bf16
                    print(f"warning: {policy.path} was calibrated on {policy.model_identity}; the gateway's SLM is "
                          f"{engine.model_identity}: its threshold may not hold (run `gateway calibrate` with the same "
                          "model and --precision)")
        # The gates given apply to what each track serves now; a promotion brings its own (`gateway_reload`).
        gates = {models[track]: policy for track, policy in policies.items()}
        if engine is not None and registry_path is not None:  # promoted adapters first, then later promotions
            reloader = AdapterReloader(registry_path, verified_promotions, engine.add_adapter, models, gates)
            reloader.check_once()
            reloader.start()
        # One retry at most: a slow or down engine should hand over to the hosted model quickly.
        slm_client = openai.OpenAI(base_url=slm_url, api_key=slm_key, timeout=slm_timeout_s, max_retries=1)
        slm = SlmEngine(slm_client, models, gates)
        app = create_gateway_app(Upstream(hosted_client.client, hosted_client.model), slm, records_path, settings.scrub,
                                 api_key=api_key, log_content=log_content, modes=modes, tracer=tracer)
        bound_port = sock.getsockname()[1]
        url_host = f"[{host}]" if ":" in host else host
        serving = {track: slm.serving(track)[1] for track in models}
        print(f"gateway on http://{url_host}:{bound_port}/v1: hosted {hosted_client.identity}; SLM {described} "
              f"({', '.join(f'{track}={name}' for track, name in models.items())}); modes "
              f"{', '.join(f'{track}={mode}' for track, mode in (modes or {}).items()) or 'route'}; "
              f"confidence gate: {', '.join(f'{t}>={p.threshold} ({p.path})' for t, p in serving.items() if p) or 'none'}; "
              f"records {records_path}", flush=True)
        server = uvicorn.Server(uvicorn.Config(app, host=host, port=bound_port, log_level="warning"))
        server.run(sockets=[sock])
    finally:
        sock.close()
        if reloader is not None:
            reloader.stop()
        if engine is not None:
            engine.stop()
        tracer.flush()
    if not server.started:
        raise SlmSwapError(f"the gateway on {host}:{bound_port} did not start")


def verified_promotions(registry_path: Path) -> dict[str, PromotedAdapter]:
    """The registry's promoted adapters, each checked to be the files that were promoted (a folder
    retrained in place since is refused rather than served)."""
    promoted = load_promoted(registry_path)
    for entry in promoted.values():
        verify_adapter(entry)
    return promoted


def load_policies(paths: Iterable[Path], tracks: Iterable[str]) -> dict[str, Policy]:
    """The confidence gate per track from `gateway calibrate`'s policy files (one line naming a bad one)."""
    policies: dict[str, Policy] = {}
    for path in paths:
        policy = load_policy(Path(path))
        if policy.track not in set(tracks):
            raise SlmSwapError(f"--policy {path}: its track {policy.track!r} is not one the gateway serves")
        if policy.track in policies:
            raise SlmSwapError(f"--policy {path}: a second policy for track {policy.track!r} "
                               f"(the first: {policies[policy.track].path})")
        policies[policy.track] = policy
    return policies


def parse_slm_models(specs: list[str], tracks: Iterable[str]) -> dict[str, str]:
    """--slm-model TRACK=NAME over the default: each track served by the engine's model of its own name."""
    models = {track: track for track in tracks}
    for spec in specs:
        track, sep, name = spec.partition("=")
        if not sep or not name or track not in models:
            raise SlmSwapError(f"--slm-model {spec!r}: expected TRACK=NAME with TRACK one of {', '.join(models)}")
        models[track] = name
    return models
