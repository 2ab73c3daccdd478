"""The application layer: the `slm-swap` CLI, the traced commands, the pipeline and distill steps
that the Prefect flows call, `serve`, and the report. The only layer that may import `flows/`."""
