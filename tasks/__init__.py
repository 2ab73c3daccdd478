"""Thin Prefect `@task` wrappers around the library (`slm_swap.pipeline`, `slm_swap.runs`,
`slm_swap.report`): they load settings, call one library function, and hold no logic.

    from tasks import eval_hosted, eval_slm, compare, train_adapter, build_report, prepare_data
"""

from tasks.data import prepare_data
from tasks.evals import eval_hosted, eval_slm
from tasks.decide import compare
from tasks.report import build_report
from tasks.train import train_adapter

__all__ = ["prepare_data", "eval_hosted", "eval_slm", "compare", "train_adapter", "build_report"]
