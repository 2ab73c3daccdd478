"""Fine-tuning: rows -> tokenized examples with the prompt masked, a backend per machine, the
trainer, the adapter and its manifest. The `accelerate launch` entry point is `slm_swap.train`."""
