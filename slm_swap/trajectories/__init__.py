"""Phase II: the hosted model's work as CodeAct agent trajectories, kept when correct, turned into data.

    codeact   the agent every side runs: smolagents' CodeAgent, one compact prompt, tools from signatures
    capture   the teacher (hosted model) as that agent over a source's rows -> trajectories JSONL
    filter    automatic correctness checks -> accepted / rejected JSONL + a summary of reasons
    build     accepted trajectories -> train/val/test: v0 rows of both tracks + agent message rows
    teacher   a scripted OpenAI-compatible teacher that answers from gold calls (tests, benchmark, demo)
"""
