"""The install files must resolve on any machine: packages by name and version from a registry,
never a path or `file://` URL that exists only where the file was generated (v0's constraints pinned
two wheels as `@ file:///tmp/dl/...`: set-up passed here and failed everywhere else)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INSTALL_FILES = sorted([ROOT / "constraints.txt", ROOT / "pyproject.toml", *ROOT.glob("scripts/*.sh"), ROOT / ".ci" / "run"])
# A direct reference (`name @ URL-or-path`), a file URL, or an absolute/relative path to a wheel or sdist.
LOCAL_REFERENCE = re.compile(r"file:|\s@\s*(?:/|\.\.?/|[a-z]+://)|(?:^|[\s=\"'])(?:/|\.\.?/)\S*\.(?:whl|tar\.gz|zip)\b")


def _code_lines(path: Path):
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        code = line.split("#", 1)[0] if path.suffix in (".txt", ".toml", ".sh") or path.name == "run" else line
        if code.strip():
            yield number, code


@pytest.mark.parametrize("path", INSTALL_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_install_files_name_no_local_path(path):
    found = [f"{path.name}:{number}: {code.strip()}" for number, code in _code_lines(path) if LOCAL_REFERENCE.search(code)]
    assert not found, "install files must pin by name and version only:\n" + "\n".join(found)


def test_constraints_pin_every_package_by_name_and_version():
    lines = [code.strip() for _, code in _code_lines(ROOT / "constraints.txt")]
    assert lines, "constraints.txt is empty"
    bad = [line for line in lines if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9.+!-]+", line)]
    assert not bad, f"not a plain name==version pin: {bad}"


@pytest.mark.parametrize("line", ["bfcl_eval @ file:///tmp/dl/bfcl_eval-2026.3.23-py3-none-any.whl#sha256=3b",
                                  "x @ /tmp/dl/x-1.0-py3-none-any.whl", "pip install ./dist/pkg-1.0.tar.gz",
                                  "y @ https://example.org/y-1.0.whl"])
def test_the_guard_catches_what_broke_fresh_installs(line):
    assert LOCAL_REFERENCE.search(line)
