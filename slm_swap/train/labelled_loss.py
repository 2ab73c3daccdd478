"""The training loss on CPU, projected through the LM head at the labelled positions only.

TRL's SFTTrainer scores tokens with its fused, chunked LM head. On CUDA that head projects only
the positions whose next token carries loss; on other devices it projects every position (so that
compiled devices see the same shapes on every batch). On a CPU that is a third of a training step
for the embedded model: each row's ~250 prompt positions go through the 49k-token vocabulary, for a
loss that needs its ~40 completion positions.

`LabelledPositionsSFTTrainer` asks the model for the logits of the positions whose next token
carries loss in some row of the batch (transformers' public `logits_to_keep`) and takes the same
mean next-token cross-entropy over the labelled tokens, normalised as TRL normalises it. A toolcall
step on 2 CPU cores: about a third faster, the same loss to 5 digits (bench/train_throughput.py
compares the two side by side). TRL's per-step entropy and token-accuracy log lines are not
computed on this path; the loss, and everything the manifest records, are.
"""

from __future__ import annotations

import torch
from trl import SFTTrainer


class LabelledPositionsSFTTrainer(SFTTrainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        targets = inputs["labels"][:, 1:]  # position p predicts token p + 1
        labelled = targets != -100
        keep = labelled.any(dim=0).nonzero().squeeze(1)
        model_inputs = {name: value for name, value in inputs.items() if name != "labels"}
        outputs = model(**model_inputs, use_cache=False, logits_to_keep=keep)
        logits = outputs.logits.float()  # the loss in fp32, as TRL's head computes it
        loss = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), targets[:, keep].flatten(), ignore_index=-100, reduction="sum"
        )
        count = labelled.sum() if num_items_in_batch is None else num_items_in_batch
        loss = loss / torch.as_tensor(count).clamp(min=1)
        # As TRL: `num_items_in_batch` counts every process's tokens, and DDP averages the gradients.
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        return (loss, outputs) if return_outputs else loss
