"""Tools factories for `slm-swap capture --tools trajectory_tools:NAME` in tests (tests/ is on sys.path)."""

from smolagents import Tool


class Echo(Tool):
    """A user's own tool: answers with its arguments, so a test can see it was the one called."""

    name = "echo_tool"
    description = "Echoes its text."
    inputs = {"text": {"type": "string", "description": "what to echo"}}
    output_type = "string"

    def forward(self, text: str) -> str:
        return f"echo:{text}"


def echo_tools(functions):
    return [Echo()]


def no_tools(functions):
    return []


def broken_factory(functions):
    raise RuntimeError("the tool registry is down")
