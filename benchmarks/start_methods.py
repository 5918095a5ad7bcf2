"""Worker start methods side by side: spawn (the project's) vs forkserver, with and without preloading the parent's
main module. Prints, per method, the median seconds to evaluate one smoke generation on 2 fresh worker processes (their
start-up included), the ratio to spawn, how many of the 8 evaluations succeeded with spawn's fitness values, and what a
plain user script does under it: one without the ``__main__`` guard, and one that registers its own network (the
README's example). Measured here (2 cores, n = 3): forkserver's workers exit at once, because a forked worker's parent
is the fork server, not the run, and a worker that outlives the run's pid ends itself (``_die_with_parent``): its
seconds are those of failing, not of evaluating.

    python benchmarks/start_methods.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

METHODS = {  # name -> (start method, forkserver preload or None)
    "spawn": ("spawn", None),
    "forkserver+main": ("forkserver", ["__main__", "evo_sparse.training.fitness"]),
    "forkserver": ("forkserver", ["evo_sparse.training.fitness"]),
}


def select(name: str) -> None:
    from evo_sparse.execution import process

    method, preload = METHODS[name]
    process.START_METHOD = method
    if preload is not None:
        multiprocessing.get_context("forkserver").set_forkserver_preload(preload)


def one_generation(name: str) -> tuple[float, list]:
    """Seconds to start 2 workers and evaluate 8 smoke masks on them, and the fitness values."""
    import random

    from evo_sparse.execution.process import ProcessMap
    from evo_sparse.foundations.presets import preset
    from evo_sparse.models.masks import sample
    from evo_sparse.models.registry import architecture

    cfg = preset("smoke")
    layout = architecture(cfg.model).layout
    rng = random.Random(0)
    genomes = [sample(layout, 0.5, rng=rng) for _ in range(8)]
    start = time.perf_counter()
    pool = ProcessMap(cfg, 2)
    try:
        records = list(pool(None, genomes))
    finally:
        pool.close()
    return time.perf_counter() - start, [r["fitness"] for r in records]


def script_outcome(name: str, body: str) -> str:
    """Exit code and last stderr line of a user script run under ``name``."""
    method, preload = METHODS[name]
    head = f"import multiprocessing\nfrom evo_sparse.execution import process\nprocess.START_METHOD = {method!r}\n"
    if preload is not None:
        head += f"multiprocessing.get_context('forkserver').set_forkserver_preload({preload!r})\n"
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "script.py"
        script.write_text(head + textwrap.dedent(body))
        done = subprocess.run([sys.executable, str(script)], cwd=tmp, capture_output=True, text=True, timeout=600)
    last = (done.stderr.strip().splitlines() or [""])[-1][:110]
    return f"exit {done.returncode}" + (f": {last}" if done.returncode else "")


UNGUARDED = """
from evo_sparse.foundations.presets import preset
from evo_sparse.runs.run import execute
execute(preset("smoke").updated({"runs_dir": "runs", "backend": "process", "workers": 2}), show_progress=False)
"""

REGISTERED = """
from evo_sparse.foundations.presets import preset
from evo_sparse.models.registry import register
from evo_sparse.models.wrn import WRN
from evo_sparse.runs.run import execute

register("mywrn", WRN)  # a network this script registers: workers must see it

if __name__ == "__main__":
    cfg = preset("smoke").updated({"model.name": "mywrn", "runs_dir": "runs", "backend": "process", "workers": 2})
    execute(cfg, show_progress=False)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if "--child" in sys.argv:
        return
    seconds: dict[str, list[float]] = {n: [] for n in METHODS}
    values: dict[str, list] = {}
    for _ in range(args.repeats):  # interleaved, so a busy moment of the machine hits every method
        for name in METHODS:
            code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import start_methods as S; "
            code += f"S.select({name!r}); t, v = S.one_generation({name!r}); print(t); print(v)"
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
            if out.returncode:
                raise SystemExit(out.stderr[-2000:])
            t, v = out.stdout.strip().splitlines()[-2:]
            seconds[name].append(float(t))
            values[name] = v.strip("[]").split(", ")
    base = statistics.median(seconds["spawn"])
    print(f"{'method':<16} {'median s':>8} {'x spawn':>7} {'ok evals':>8}  unguarded script / registered network")
    for name in METHODS:
        med = statistics.median(seconds[name])
        ok = sum(a == b and a != "None" for a, b in zip(values[name], values["spawn"], strict=True))
        outcomes = f"{script_outcome(name, UNGUARDED)} / {script_outcome(name, REGISTERED)}"
        print(f"{name:<16} {med:8.2f} {med / base:7.2f} {ok:>6}/8  {outcomes}")
    cores = multiprocessing.cpu_count()
    print(f"(n = {args.repeats} interleaved repeats each, 2 workers, 8 smoke masks, {cores} cores)")


if __name__ == "__main__":
    main()
