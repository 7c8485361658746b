"""The README's quick start runs as written: every python block, in order, in an empty directory
(yaml blocks whose first line is ``# NAME`` are written there as files first), then every
``resnet-multi`` command of the command-line section."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def _blocks(kind: str) -> list[str]:
    return [body for lang, body in BLOCK.findall(README.read_text()) if lang == kind]


def test_python_snippets_run_in_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for body in _blocks("yaml"):
        first = body.splitlines()[0]
        if first.startswith("# "):
            (tmp_path / first[2:].strip()).write_text(body)
    snippets = _blocks("python")
    assert len(snippets) >= 6
    namespace: dict = {"__name__": "__readme__"}
    for i, code in enumerate(snippets):
        exec(compile(code, f"README.md python block {i + 1}", "exec"), namespace)  # noqa: S102
    # the snippets' claims hold
    assert namespace["features"].shape == (1, 512, 8, 32)
    assert namespace["report"].ok

    commands = [line.split("#")[0].strip() for body in _blocks("sh") for line in body.splitlines()
                if line.startswith("resnet-multi ")]
    assert len(commands) >= 5
    for command in commands:
        argv = shlex.split(command)
        out = subprocess.run([sys.executable, "-m", "resnet_multi.cli", *argv[1:]], capture_output=True, text=True)
        assert out.returncode == 0, f"{command}: exit {out.returncode}\n{out.stderr[-2000:]}"
