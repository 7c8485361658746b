"""Run a command and report the peak memory of its whole process tree.

Usage: python3 .ci/tree_memory.py COMMAND...   (exits with the command's exit code)

GNU time's "maximum resident set size" is that of the largest single process, so a test that starts
worker processes (the README's data-parallel scripts, the CLI tests) would hide their memory. This
samples every process descended from the command twice a second and sums their proportional set
size (PSS: a page shared by n processes counts 1/n in each, so shared libraries are not counted
twice) and their resident set size (RSS, which counts shared pages once per process: an upper
bound). Linux only (/proc); elsewhere the command runs unmeasured.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

INTERVAL = 0.5  # seconds: a peak shorter than this can be missed; the suite's peaks last seconds


def _children_by_parent() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:  # the process ended between listdir and open
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def _tree(root: int) -> list[int]:
    children, pids, todo = _children_by_parent(), [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(children.get(pid, ()))
    return pids


def _memory_kb(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of one process in KB, (0, 0) if it is gone."""
    pss = rss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
                elif line.startswith("Rss:"):
                    rss = int(line.split()[1])
    except OSError:
        pass
    return pss, rss


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    process = subprocess.Popen(argv)
    if not os.path.exists("/proc/self/smaps_rollup"):
        return process.wait()
    peak = {"pss": 0, "rss": 0, "processes": 0}
    done = threading.Event()

    def sample():
        while not done.wait(INTERVAL):
            sizes = [_memory_kb(pid) for pid in _tree(process.pid)]
            pss, rss = sum(s[0] for s in sizes), sum(s[1] for s in sizes)
            if pss > peak["pss"]:
                peak.update(pss=pss, rss=rss, processes=len(sizes))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    code = process.wait()
    done.set()
    sampler.join()
    print(f"CI: tests' peak memory, summed over their processes: {peak['pss'] / 2 ** 20:.2f} GB PSS "
          f"({peak['rss'] / 2 ** 20:.2f} GB RSS, {peak['processes']} process(es) at that moment)", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
