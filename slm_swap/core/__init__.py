"""Pure functions on the data path: the tracks (prompt, completion format, parser, scorer, core
metrics), the one message builder (`prompts`), metrics and metrics files (`metrics`, `results`),
compare's exact decision rule (`compare`), BFCL's AST matcher (`bfcl_match`) and the correctness
verdict on a trajectory (`verdict`) that both `filter` and the agent eval use."""
