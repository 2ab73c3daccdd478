"""Thin Prefect `@task` wrappers around the library (`slm_swap.app.pipeline`, `slm_swap.app.runs`,
`slm_swap.app.report`): they load settings, call one library function, and hold no logic.

    from tasks import eval_hosted, eval_slm, compare, train_adapter, build_report, prepare_data
    from tasks import capture_trajectories, filter_trajectories, build_dataset   # the distill flow's data steps
"""

from tasks.data import prepare_data
from tasks.evals import eval_hosted, eval_slm
from tasks.decide import compare
from tasks.report import build_report
from tasks.train import train_adapter
from tasks.trajectories import build_dataset, capture_trajectories, filter_trajectories

__all__ = ["prepare_data", "eval_hosted", "eval_slm", "compare", "train_adapter", "build_report",
           "capture_trajectories", "filter_trajectories", "build_dataset"]
