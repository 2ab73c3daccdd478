"""The batched greedy decoder behind `LocalModel.generate`, with its preallocated KV cache.

Greedy decoding for a batch of prompts, written out instead of `model.generate` so that batching
costs no extra compute. Each row's result equals a one-at-a-time `model.generate(do_sample=False)`
(tests/test_local_serve.py and bench/eval_throughput.py check this on the embedded model):
- the prompts' common token prefix (chat header, system prompt, instructions) is encoded once;
- the rest of each prompt is encoded in small groups of similar length, so little compute goes
  to padding, straight into the rows' slots of one cache preallocated for the whole generation;
- all rows then decode together, writing in place (no per-step concatenation), and finished
  rows leave the batch instead of running until the longest row ends.

Attention is over the whole prompt; models whose sliding window is shorter than a prompt plus
its completion would need `model.generate` instead.
"""

from __future__ import annotations

from typing import Callable, Iterator, NamedTuple

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

PREFILL_GROUP = 8  # prompts encoded together: enough to batch the matmuls, few enough to pad little


class DecodedRow(NamedTuple):
    """One prompt row's completion: its token ids without the stop token, each one's log-probability
    under the model (log-softmax of the logits it was chosen from), and "stop" | "length"."""

    row: int
    tokens: list[int]
    logprobs: list[float]
    reason: str


def _choose(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(greedy tokens, their log-probabilities) from the last position's logits. The argmax is taken
    on the logits as they are (parity with `generate`); the log-probability in float32, as
    logit - logsumexp: one reduction over logits already computed, no softmax tensor kept."""
    last = logits[:, -1]
    tokens = last.argmax(-1)
    scores = last.float()
    return tokens, scores.gather(-1, tokens[:, None])[:, 0] - scores.logsumexp(-1)


@torch.inference_mode()
def greedy_decode(model, rows: list[list[int]], limit: int, stop_ids: set[int],
                  should_stop: Callable[[int, list[int]], bool] | None = None) -> Iterator[DecodedRow]:
    """A `DecodedRow` for each prompt row, as each finishes. `should_stop(row, tokens so far)` can
    end a row early ("stop"); its tokens and logprobs are then those generated up to that step."""
    device = model.device
    shared = _shared_prefix_length(rows)
    prefix = DynamicCache()
    if shared:
        model(input_ids=torch.tensor([rows[0][:shared]], device=device), past_key_values=prefix, use_cache=True, logits_to_keep=1)
    in_batch = sorted(range(len(rows)), key=lambda row: len(rows[row]))  # the row at each batch position
    # Every row's prompt ends at column `width`. A group's rows hold [prefix][padding][own tokens]
    # from column `start` on; the mask hides the padding and everything left of `start`.
    width = max(map(len, rows))
    capacity = width + limit
    mask = torch.zeros((len(rows), capacity), dtype=torch.long, device=device)
    starts = []  # first used column of each batch position
    layers: list[_PreallocatedLayer] = []
    first_tokens: list[int] = []
    first_logprobs: list[float] = []
    for first in range(0, len(rows), PREFILL_GROUP):
        group = range(first, min(first + PREFILL_GROUP, len(rows)))
        suffixes = [rows[in_batch[position]][shared:] for position in group]
        group_width = max(map(len, suffixes))
        start = width - shared - group_width
        input_ids = torch.zeros((len(group), group_width), dtype=torch.long, device=device)
        for i, suffix in enumerate(suffixes):
            input_ids[i, group_width - len(suffix) :] = torch.tensor(suffix, device=device)
            mask[first + i, start : start + shared] = 1
            mask[first + i, width - len(suffix) : width] = 1
        group_mask = mask[first : first + len(group), start:width]
        cache = Cache(layers=[layer.slot(group, start) for layer in layers]) if layers else DynamicCache()
        for index, layer in enumerate(prefix.layers):
            cache.update(layer.keys.expand(len(group), -1, -1, -1), layer.values.expand(len(group), -1, -1, -1), index)
        logits = model(
            input_ids=input_ids, attention_mask=group_mask,
            position_ids=(group_mask.cumsum(-1) - 1).clamp(min=0)[:, shared:],
            past_key_values=cache, use_cache=True, logits_to_keep=1,
        ).logits
        chosen, chosen_logprobs = _choose(logits)
        first_tokens += chosen.tolist()
        first_logprobs += chosen_logprobs.tolist()
        if not layers:  # the first group shows the cache's shapes and dtype
            layers = [_PreallocatedLayer.allocate(layer, len(rows), capacity) for layer in cache.layers]
            for layer, filled in zip(layers, cache.layers):
                layer.slot(group, start).update(filled.keys, filled.values)
        for layer in layers:
            layer.clear(group, mask[first : first + len(group), :width])
        starts += [start] * len(group)
    for layer in layers:
        layer.length = width
        layer.expose()
    cache = Cache(layers=layers)
    positions = torch.tensor([[len(rows[row])] for row in in_batch], device=device)
    tokens = torch.tensor(first_tokens, device=device)
    step_logprobs = first_logprobs
    outputs: list[list[int]] = [[] for _ in rows]
    logprobs: list[list[float]] = [[] for _ in rows]
    reasons: list[str | None] = [None] * len(rows)
    for _ in range(limit):
        for position, (token, logprob) in enumerate(zip(tokens.tolist(), step_logprobs)):
            row = in_batch[position]
            if reasons[row] is not None:
                continue
            if token in stop_ids:
                reasons[row] = "stop"
            else:
                outputs[row].append(token)
                logprobs[row].append(logprob)
                if should_stop is not None and should_stop(row, outputs[row]):
                    reasons[row] = "stop"
                elif len(outputs[row]) == limit:
                    reasons[row] = "length"
            if reasons[row] is not None:
                yield DecodedRow(row, outputs[row], logprobs[row], reasons[row])
        live = [position for position, row in enumerate(in_batch) if reasons[row] is None]
        if not live:
            break
        # Dropping rows copies the cache, so it waits until a quarter of the batch has finished;
        # until then finished rows are computed and ignored.
        if len(live) <= len(in_batch) * 3 // 4:
            keep = torch.tensor(live, device=device)
            in_batch = [in_batch[position] for position in live]
            # Columns left of every remaining row need not be read any more.
            padding = min(starts[position] for position in live)
            starts = [starts[position] - padding for position in live]
            for layer in layers:
                layer.select_rows(keep, padding)
            mask, positions, tokens = mask[keep, padding:], positions[keep], tokens[keep]
        length = layers[0].length
        mask[:, length] = 1
        logits = model(
            input_ids=tokens[:, None], attention_mask=mask[:, : length + 1], position_ids=positions,
            past_key_values=cache, use_cache=True, logits_to_keep=1,
        ).logits
        tokens, chosen_logprobs = _choose(logits)
        step_logprobs = chosen_logprobs.tolist()
        positions = positions + 1


def _shared_prefix_length(rows: list[list[int]]) -> int:
    """Tokens every row starts with, leaving each row at least one token of its own."""
    if len(rows) < 2:
        return 0
    limit = min(map(len, rows)) - 1
    length = 0
    while length < limit and all(row[length] == rows[0][length] for row in rows):
        length += 1
    return length


class _PreallocatedLayer(DynamicLayer):
    """One layer's keys and values in a buffer sized for the whole generation: each decode step
    writes in place, where `DynamicLayer` concatenates and so copies the whole cache every step."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int):
        super().__init__()
        self.buffer_keys, self.buffer_values, self.length = keys, values, length
        self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True
        self.expose()

    @classmethod
    def allocate(cls, like: DynamicLayer, batch: int, capacity: int) -> "_PreallocatedLayer":
        _, heads, _, dim = like.keys.shape
        return cls(like.keys.new_empty((batch, heads, capacity, dim)), like.values.new_empty((batch, heads, capacity, dim)), 0)

    def slot(self, rows: range, start: int) -> "_PreallocatedLayer":
        """Rows `rows` from column `start` on, as a cache of their own writing into this buffer."""
        return _PreallocatedLayer(
            self.buffer_keys[rows.start : rows.stop, :, start:], self.buffer_values[rows.start : rows.stop, :, start:], 0
        )

    def clear(self, rows: range, mask: torch.Tensor) -> None:
        """Zero the masked-out entries of `rows`: attention ignores them but still multiplies them
        by zero, so they must not be left as NaN (uninitialised, or computed from padding)."""
        hidden = (mask == 0)[:, None, :, None].to(self.buffer_keys.device)  # layers may sit on other GPUs
        for buffer in (self.buffer_keys, self.buffer_values):
            region = buffer[rows.start : rows.stop, :, : mask.shape[1]]
            region.masked_fill_(hidden, 0)

    def expose(self) -> None:
        self.keys = self.buffer_keys[:, :, : self.length]
        self.values = self.buffer_values[:, :, : self.length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        new = key_states.shape[2]
        self.buffer_keys[:, :, self.length : self.length + new] = key_states
        self.buffer_values[:, :, self.length : self.length + new] = value_states
        self.length += new
        self.expose()
        return self.keys, self.values

    def select_rows(self, rows: torch.Tensor, drop_columns: int) -> None:
        """Keep only `rows`, without the first `drop_columns` columns (a copy, unlike slicing)."""
        rows = rows.to(self.buffer_keys.device)
        self.buffer_keys = self.buffer_keys[rows, :, drop_columns:]
        self.buffer_values = self.buffer_values[rows, :, drop_columns:]
        self.length -= drop_columns
        self.expose()
