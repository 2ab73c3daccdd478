"""The batched greedy decoder behind `LocalModel.generate`, with its preallocated KV cache.

Greedy decoding for a batch of prompts, written out instead of `model.generate` so that batching
costs no extra compute. Each row's result equals a one-at-a-time `model.generate(do_sample=False)`
(tests/test_local_serve.py and bench/eval_throughput.py check this on the embedded model):
- the prompts' common token prefix (chat header, system prompt, instructions) is encoded once;
- the rest of each prompt is encoded in small groups of similar length, so little compute goes
  to padding, straight into the rows' slots of one cache preallocated for the whole generation;
- all rows then decode together, writing in place (no per-step concatenation), and finished
  rows leave the batch instead of running until the longest row ends;
- the cache is transformers' `StaticLayer`, zeroed: eager steps read its written columns only, and a
  step compiled with `compile_step` reads all of it, masked, so that every step has the same shapes.

Attention is over the whole prompt; models whose sliding window is shorter than a prompt plus
its completion would need `model.generate` instead.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, NamedTuple

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer, StaticLayer

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
                  should_stop: Callable[[int, list[int]], bool] | None = None,
                  compiled_step: Callable[..., Any] | None = None) -> Iterator[DecodedRow]:
    """A `DecodedRow` for each prompt row, as each finishes. `should_stop(row, tokens so far)` can
    end a row early ("stop"); its tokens and logprobs are then those generated up to that step.
    `compiled_step`: the model's forward under `torch.compile` (`compile_step`), to run the decode
    steps with; they then attend over the cache's whole capacity, so every step has the same shapes."""
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
    layers: list[StaticLayer] = []
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
        cache = Cache(layers=[_Slot(layer, group, start) for layer in layers]) if layers else DynamicCache()
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
            layers = [_allocate(layer, len(rows), capacity) for layer in cache.layers]
            for layer, filled in zip(layers, cache.layers):
                _Slot(layer, group, start).update(filled.keys, filled.values)
        for layer in layers:
            _clear(layer, group, mask[first : first + len(group), :width])
        starts += [start] * len(group)
    length = width  # the column the next token's keys and values go to
    cache = _decode_cache(layers, length, compiled_step is not None)
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
            length -= padding
            layers = [_select_rows(layer, keep, padding) for layer in layers]
            cache = _decode_cache(layers, length, compiled_step is not None)
            mask, positions, tokens = mask[keep, padding:], positions[keep], tokens[keep]
        mask[:, length] = 1
        inputs = {"input_ids": tokens[:, None], "position_ids": positions, "past_key_values": cache,
                  "use_cache": True, "logits_to_keep": 1}
        if compiled_step is None:
            logits = model(attention_mask=mask[:, : length + 1], **inputs).logits
        else:
            logits = compiled_step(attention_mask=mask, **inputs).logits
        length += 1
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


def _allocate(like: DynamicLayer, batch: int, capacity: int) -> StaticLayer:
    """A layer's keys and values for the whole generation, zeroed: each decode step writes in place (where
    `DynamicLayer` concatenates, copying the whole cache every step), and a compiled step can attend
    over all `capacity` columns, the ones not written yet masked out, so that every step has the same
    shapes (transformers' `StaticLayer`, built for `torch.compile`)."""
    layer = StaticLayer(max_cache_len=capacity)
    _, heads, _, key_dim = like.keys.shape
    layer.lazy_initialization(like.keys.new_empty((batch, heads, 0, key_dim)),
                              like.values.new_empty((batch, heads, 0, like.values.shape[-1])))
    return layer


def _clear(layer: StaticLayer, rows: range, mask: torch.Tensor) -> None:
    """Zero the masked-out entries of `rows` (computed from padding): attention ignores them but
    still multiplies them by zero, so they must not be left as NaN."""
    hidden = (mask == 0)[:, None, :, None].to(layer.keys.device)  # layers may sit on other GPUs
    for buffer in (layer.keys, layer.values):
        buffer[rows.start : rows.stop, :, : mask.shape[1]].masked_fill_(hidden, 0)


def _select_rows(layer: StaticLayer, rows: torch.Tensor, drop_columns: int) -> StaticLayer:
    """Only `rows`, without the first `drop_columns` columns, as a new layer (a copy)."""
    rows = rows.to(layer.keys.device)
    keys, values = layer.keys[rows, :, drop_columns:], layer.values[rows, :, drop_columns:]
    kept = StaticLayer(max_cache_len=keys.shape[2])
    kept.lazy_initialization(keys[:, :, :0], values[:, :, :0])
    kept.keys.copy_(keys)
    kept.values.copy_(values)
    return kept


def _decode_cache(layers: list[StaticLayer], length: int, whole: bool) -> Cache:
    """The cache the decode steps read, its first `length` columns written. Whole: the layers
    themselves, attended over their whole capacity (a compiled step's fixed shapes). Otherwise views of
    them attended over the written columns only: eager steps then read no unwritten (zero) columns,
    which costs a batch of 32 about a tenth of its time with 256 new tokens at most."""
    if whole:
        for layer in layers:
            layer.cumulative_length.fill_(length)
        return Cache(layers=layers)
    return Cache(layers=[_Slot(layer, range(layer.keys.shape[0]), 0, length) for layer in layers])


class _Slot(DynamicLayer):
    """Rows `rows` of a preallocated layer from column `start` on, its first `length` columns written,
    as a cache of its own that writes into it in place: a prefill group's view, and an eager step's."""

    def __init__(self, layer: StaticLayer, rows: range, start: int, length: int = 0):
        super().__init__()
        self.buffer_keys = layer.keys[rows.start : rows.stop, :, start:]
        self.buffer_values = layer.values[rows.start : rows.stop, :, start:]
        self.length = length
        self.dtype, self.device, self.is_initialized = layer.keys.dtype, layer.keys.device, True
        self.expose()

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


def compile_step(model) -> Callable[..., Any]:
    """`model`'s forward under `torch.compile`, for `greedy_decode`'s decode steps. Sizes are dynamic
    (the cache's capacity varies per call, a batch's size too), so one compilation serves every later
    call of that batch size class: about a minute for a single stream on 2 CPU cores (inductor keeps what
    it compiled on disk for the next process). In fp32 the outputs equal the eager decoder's (tested);
    in bf16 fused kernels round differently. Measured in bench/decode_limits.py: a single stream
    decodes in about 0.85x the eager time; batches ran slower than eager, so `LocalModel` compiles
    single streams only."""
    return torch.compile(model.forward, dynamic=True)
