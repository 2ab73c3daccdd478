"""Prefect flows: the parent pipeline `slm-swap-pipeline` and the fine-tune subflow `slm-swap-finetune`.

    from flows.pipeline import slm_swap_pipeline     # slm-swap pipeline runs it
    from flows.finetune import slm_swap_finetune      # deployed as slm-swap-finetune/gpu

Import the submodules directly: this package imports nothing, so `prefect deploy` and the worker
load only the flow they need.
"""
