"""Fine-tuning: rows -> tokenized examples with the prompt masked, a backend per machine, the
trainer, the adapter and its manifest. `python -m slm_swap.train` is the entry point that
`accelerate launch` and `torchrun` run."""
