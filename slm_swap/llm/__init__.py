"""The model side: where completions come from.

    completion    `Completion` and the budgets both sides share
    clients       `build_client` for `--model-kind azure|slm`
    hosted        the hosted model through the openai SDK (Azure or any OpenAI-compatible URL)
    local         the local SLM (transformers, 4-bit or not) and its adapters
    batching      the worker that decodes concurrent requests together (serve, the agent eval)
    quantization  NF4 4-bit settings
    agent_models  either model as smolagents' CodeAgent sees it
    embedded      the embedded model: fetched from its package, converted from GGUF
"""
