"""Infrastructure every layer stands on: typed settings (`config`), the one error type (`errors`),
atomic files (`fileio`), progress lines (`progress`), bounded threads (`workers`) and Langfuse
tracing (`tracing`, the only place that imports langfuse)."""
