"""An eval split as a Langfuse dataset: one item per row, uploaded once per process (in the
background while the eval runs), never mixed with another version's items."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from typing import Any

from langfuse import Langfuse
from langfuse.api import NotFoundError

from slm_swap.infra.errors import SlmSwapError
from slm_swap.infra.tracing.clients import in_background
from slm_swap.infra.tracing.masking import MASK

DATASET_WRITERS = 4  # parallel dataset-item uploads

_LOCK = threading.Lock()
_DATASETS: dict[tuple[int, str, str | None], Future] = {}  # uploads by client, name and sha256


def dataset_upload(client: Langfuse, name: str, items: Sequence[Mapping[str, Any]], metadata: dict[str, Any]) -> Future:
    """The upload of this split (see `sync_dataset`), started on first use: evals of one split in one
    process (a pipeline) share one upload; a failed one is retried by the next eval."""
    key = (id(client), name, metadata.get("sha256"))
    with _LOCK:
        known = _DATASETS.get(key)
        if known is None or (known.done() and known.exception() is not None):
            known = _DATASETS[key] = in_background(lambda: sync_dataset(client, name, list(items), MASK(data=metadata)))
    return known


def sync_dataset(client: Langfuse, name: str, items: Sequence[Mapping[str, Any]],
                 metadata: dict[str, Any]) -> tuple[str, dict[int, Any]]:
    """(dataset name, item by index), creating what is missing. A dataset of this name holding other
    data (another sha256) is left alone for the version name `name@<sha256[:12]>`: items never mix."""
    sha256 = metadata["sha256"]
    for candidate in (name, f"{name}@{sha256[:12]}"):
        try:
            dataset = client.get_dataset(candidate, fetch_items_page_size=100)
        except NotFoundError:
            client.create_dataset(name=candidate, description="SLM Swap eval split, one item per row", metadata=metadata)
            existing: dict[str, Any] = {}
            break
        if isinstance(dataset.metadata, dict) and dataset.metadata.get("sha256") == sha256:
            existing = {item.id: item for item in dataset.items}
            break
    else:
        raise SlmSwapError(f"Langfuse datasets {name!r} and {candidate!r} hold other data than sha256 {sha256[:12]}")
    ids = [hashlib.sha256(f"{candidate}\n{sha256}\n{index}".encode()).hexdigest()[:32] for index in range(len(items))]
    missing = [index for index, item_id in enumerate(ids) if item_id not in existing]

    def create(indexes: list[int]) -> None:
        for index in indexes:  # scrubbed, not capped: the items are the data
            item = client.create_dataset_item(dataset_name=candidate, id=ids[index], metadata={"index": index},
                                              input=MASK.scrub(items[index]["input"]),
                                              expected_output=MASK.scrub(items[index]["expected_output"]))
            existing[item.id] = item

    for writer in [in_background(lambda part=missing[n::DATASET_WRITERS]: create(part)) for n in range(DATASET_WRITERS)]:
        writer.result()
    return candidate, {index: existing[item_id] for index, item_id in enumerate(ids)}
