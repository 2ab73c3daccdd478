"""`prepare-data`: (re)build the dataset folder from the configured source (`slm-swap prepare`)."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from slm_swap.app.flow_configs import PipelineConfig
from slm_swap.app.pipeline import prepare_dataset


@task(name="prepare-data", cache_policy=NO_CACHE)
def prepare_data(config: PipelineConfig) -> dict[str, Any] | None:
    """The dataset manifest, or None when the pipeline uses `data_dir` as it is."""
    return prepare_dataset(config.data, config.data_dir)
