"""The README's quick start runs as written: every python block, in order, in an empty directory
(yaml blocks whose first line is ``# NAME`` are written there as files first), then every
``resnet-multi`` command of the command-line section. A python block right after a
``<!-- ci:script NAME -->`` line is a whole program (multi-process recipes): it is not part of
that sequence but written to NAME and run as ``python NAME`` in a fresh process, time-bounded."""

from __future__ import annotations

import ast
import gc
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)
SCRIPT = re.compile(r"^<!-- ci:script (\S+) -->\n```python\n(.*?)^```", re.S | re.M)
SCRIPTS = dict(SCRIPT.findall(README.read_text()))
SCRIPT_TIMEOUT = 300  # seconds per script; each takes ~5-20 s alone on 2 cores


def _blocks(kind: str) -> list[str]:
    scripts = set(SCRIPTS.values())
    return [body for lang, body in BLOCK.findall(README.read_text()) if lang == kind and body not in scripts]


def _names(code: str) -> set[str]:
    """Every identifier a python block reads or binds."""
    return {node.id for node in ast.walk(ast.parse(code)) if isinstance(node, ast.Name)}


def test_python_snippets_run_in_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for body in _blocks("yaml"):
        first = body.splitlines()[0]
        if first.startswith("# "):
            (tmp_path / first[2:].strip()).write_text(body)
    snippets = _blocks("python")
    assert len(snippets) >= 6
    namespace: dict = {"__name__": "__readme__"}
    checked_after = {"features", "report"}  # the claims asserted below
    for i, code in enumerate(snippets):
        exec(compile(code, f"README.md python block {i + 1}", "exec"), namespace)  # noqa: S102
        # A user's session would keep every model; the test drops what no later block (or check)
        # names, so that its memory is the largest block's, not the sum of all (issue 17's budget).
        later = checked_after.union(*(_names(block) for block in snippets[i + 1:]))
        for name in [n for n in namespace if not n.startswith("__") and n not in later]:
            del namespace[name]
        gc.collect()
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


def test_readme_has_the_data_parallel_scripts():
    assert set(SCRIPTS) >= {"ddp_torch.py", "dp_paddle.py", "sharded_flax.py"}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_script_recipes_run(name, tmp_path):
    (tmp_path / name).write_text(SCRIPTS[name])
    process = subprocess.Popen([sys.executable, name], cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=SCRIPT_TIMEOUT)
    except subprocess.TimeoutExpired:
        output = ""
    finally:
        if process.poll() is None:  # timed out: kill the script and every process it spawned
            os.killpg(process.pid, signal.SIGKILL)
            output = process.communicate()[0]
    assert process.returncode == 0, f"{name}: exit {process.returncode}\n{output[-3000:]}"
