"""Wall time and memory of the README's one-command CPU job (`examples/cpu_pipeline.sh`), or of any launch script.

    python benchmarks/bench_cpu_pipeline.py [--env webshop] [--out-dir /tmp/cpu_bench] [-- script args]
    python benchmarks/bench_cpu_pipeline.py --script rl_grpo.sh

Runs the script with PLATFORM=cpu into a fresh output folder and samples, once a second, the memory of the whole
process tree it starts (the launch, Ray, vLLM, the FSDP workers, env workers): the sum of PSS over the tree
(proportional set size, from /proc/<pid>/smaps_rollup: shared pages are split between the processes that map them,
so the sum is what the tree really holds; a sum of RSS counts them once per process) and the sum of RSS for
comparison, plus the load average (other jobs on the machine). Prints a JSON summary: wall seconds, peak PSS and
RSS in GiB, mean and max 1-minute load average, the exit status.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def tree(root: int) -> list[int]:
    """`root` and all its descendants (from /proc's parent links)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def memory_kib(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of one process in KiB, (0, 0) when it is gone."""
    pss = rss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
                elif line.startswith("Rss:"):
                    rss = int(line.split()[1])
    except OSError:
        pass
    return pss, rss


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/bench_cpu_pipeline.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--env", default="webshop")
    p.add_argument("--script", default="cpu_pipeline.sh", help="a script of examples/ (default: the CPU pipeline)")
    p.add_argument("--out-dir", default=None, help="OUT_DIR of the run (default: a new temp folder)")
    p.add_argument("args", nargs="*", help="more arguments for the script")
    args = p.parse_args(argv)
    import tempfile

    out_dir = Path(args.out_dir or tempfile.mkdtemp(prefix="spa_cpu_bench_"))
    env = dict(os.environ, PLATFORM="cpu", OUT_DIR=str(out_dir), PYTHON=sys.executable)
    log = out_dir / "bench.log"
    out_dir.mkdir(parents=True, exist_ok=True)
    samples: list[tuple[float, int, int, float]] = []
    t0 = time.monotonic()
    with open(log, "wb") as f:
        proc = subprocess.Popen(["bash", str(REPO / "examples" / args.script), args.env, *args.args], cwd=REPO,
                                env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                pss = rss = 0
                for pid in tree(proc.pid):
                    a, b = memory_kib(pid)
                    pss, rss = pss + a, rss + b
                samples.append((time.monotonic() - t0, pss, rss, os.getloadavg()[0]))
                done.wait(1.0)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        rc = proc.wait()
        done.set()
        thread.join()
    gib = 1024 ** 2
    loads = [s[3] for s in samples] or [0.0]
    print(json.dumps({
        "script": args.script, "env": args.env, "exit_status": rc, "wall_s": round(time.monotonic() - t0, 1),
        "peak_pss_gib": round(max((s[1] for s in samples), default=0) / gib, 2),
        "peak_rss_sum_gib": round(max((s[2] for s in samples), default=0) / gib, 2),
        "load_mean": round(sum(loads) / len(loads), 1), "load_max": round(max(loads), 1),
        "out_dir": str(out_dir), "log": str(log),
    }, indent=2))
    return rc


if __name__ == "__main__":
    sys.exit(main())
