"""Print the reliability figures of the README's "Reliability" section.

    python scripts/reliability_report.py              # 20 random kills, about 5-10 minutes on 2 cores
    python scripts/reliability_report.py --kills 5    # quicker

1. Kills: ``evo-sparse run --preset smoke --workers 1 --generations 6`` is SIGKILLed at seeded random moments (half
   counted from its start, half from its first new journal row, so that both start-up and work are hit) and at
   every fault point (inside the config.json, journal and checkpoint writes), started again with the same command
   after each kill, and compared with an uninterrupted run; then a run with the default worker processes is SIGKILLed
   and interrupted with Ctrl-C. Every run must end identical to the uninterrupted one (``seconds`` aside), with one
   journal row per evaluation, every generation once, no temp files and no worker left running.
2. Failures: runs whose evaluations raise or give NaN at 5%, 20% and 50% (and run out of memory once at 10%).
3. Bad inputs: every case of ``tests/bad_inputs.py``'s ``BAD_INPUTS`` and a run folder in use.

The machinery is the test suite's own (``tests/reliability.py``, ``tests/bad_inputs.py``); ``tests/test_reliability.py``
runs a smaller set of kills and every other case.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import bad_inputs as B  # noqa: E402
import reliability as R  # noqa: E402

FAULT_POINTS = (
    "kill-before-replace=config.json",
    "kill-mid-journal=2",
    "kill-before-replace=checkpoint.json",
    "kill-before-replace=environment.json",
    "kill-mid-journal=5",
    "kill-before-replace=checkpoint.json@2",
)


def kills(workdir: Path, n: int, seed: int) -> bool:
    start = time.perf_counter()
    print(
        f"1. kills: {n} at random moments (alternately 0-6 s after the start and 0-3 s after its first new journal "
        f"row; the first one probes the lock) + {len(FAULT_POINTS)} inside writes; --workers 1 --generations 6"
    )
    checks = R.kill_campaign(
        workdir / "kills",
        {"workers": 1, "generations": 6},
        kills=n,
        seed=seed,
        max_delay=6.0,
        fault_points=FAULT_POINTS,
        probe_lock=True,
        log=print,
    )
    cycles = [c for check in checks for c in check.cycles]
    killed = [c for c in cycles if c.killed]
    in_writes = [c for c in killed if c.how.startswith("fault")]
    random_working = [c for c in killed if not c.how.startswith("fault") and c.rows_after > c.rows_before]
    probes = [c.probe for c in cycles if c.probe]
    print("   worker processes: one run with the default count, SIGKILLed after a journal row, then Ctrl-C")
    options = {"runs_dir": workdir / "workers" / "runs"}
    sigkill = R.cycle(options, after_rows=1)
    ctrl_c = R.cycle(options, after_rows=1, interrupt=True)
    finish = R.cycle(options)
    workers = R.check_run(options, [sigkill, ctrl_c, finish], workdir / "workers")
    clean_stop = ctrl_c.returncode == R.EXIT_INTERRUPTED and "Traceback" not in ctrl_c.stderr
    runs = [*checks, workers]
    identical = sum(c.identical for c in runs)
    print(
        f"   => SIGKILLs survived: {len(killed) + sigkill.killed} ({len(killed) - len(in_writes)} at random moments, "
        f"{len(random_working)} of them after new evaluations were journaled; {len(in_writes)} inside writes; "
        f"{int(sigkill.killed)} with {sigkill.children} child processes) and {int(clean_stop)} Ctrl-C"
    )
    print(f"   => runs resumed to the uninterrupted result: {identical} of {len(runs)}")
    print(
        f"   => journal rows per evaluation: {sorted({n for c in runs for n in c.rows_per_slot.values()})} (want [1])"
    )
    print(f"   => runs with generations duplicated or skipped: {sum(R.SKIPPED in c.problems for c in runs)}")
    print(f"   => worker processes left after a kill: {sum(len(c.orphans) for r in runs for c in r.cycles)}")
    print(f"   => Ctrl-C: exit {ctrl_c.returncode}, traceback: {'Traceback' in ctrl_c.stderr}")
    print(f"   => second run while one is running: {probes[0] if probes else 'not probed'}")
    problems = [(c.seed, c.problems) for c in runs if not c.ok]
    print(f"   => problems: {problems or 'none'}  ({time.perf_counter() - start:.0f} s)")
    return not problems and clean_stop and bool(probes)


def failures(workdir: Path) -> bool:
    start = time.perf_counter()
    print(
        "2. injected evaluation failures (raise / NaN at the rate, OOM at full batch for 10%), pop 20 x 2 generations"
    )
    ok = True
    for rate in (0.05, 0.2, 0.5):
        c = R.injected_failures(workdir / "failures", rate)
        good = (
            c.exit_code == 0
            and c.recorded == c.injected
            and c.wrongly_failed == 0
            and c.oom_retried == c.oom_injected
            and c.failed_in_best == 0
            and c.best_is_best_ok
        )
        ok &= good
        print(
            f"   rate {rate:.0%}: {c.evaluations} evaluations, injected failures recorded {c.recorded} of {c.injected},"
            f" other evaluations failed {c.wrongly_failed}, out-of-memory retried at half batch {c.oom_retried} of "
            f"{c.oom_injected}, failed masks in the hall of fame {c.failed_in_best}, best = best success "
            f"{c.best_is_best_ok}, exit {c.exit_code}"
        )
    print(f"   => {'all recorded' if ok else 'PROBLEMS'}  ({time.perf_counter() - start:.0f} s)")
    return ok


def bad_inputs(workdir: Path) -> bool:
    start = time.perf_counter()
    base = B.half_finished_base(workdir / "bad")
    results = [B.reject(case, workdir / "bad" / f"case-{i}", base) for i, case in enumerate(B.BAD_INPUTS)]
    results.append(B.in_use_rejection(workdir / "bad" / "in-use", base))
    clean = [r for r in results if r.clean]
    print(f"3. bad inputs: {len(results)} cases (settings, data, edited state files, runs folder)")
    for r in results:
        print(f"   {'ok ' if r.clean else 'BAD'} {r.name}: {r.stderr[:150]}")
    print(
        f"   => rejected cleanly (exit 2, one line, every file unchanged): {len(clean)} of {len(results)}"
        f"  ({time.perf_counter() - start:.0f} s)"
    )
    return len(clean) == len(results)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="random SIGKILLs (besides the fault points)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the run folders here (default: a temp dir)")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="evo-sparse-reliability-"))
    try:
        results = [kills(workdir, args.kills, args.seed), failures(workdir), bad_inputs(workdir)]
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print("all good" if all(results) else "PROBLEMS: see above")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
