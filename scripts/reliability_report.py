"""Print the reliability figures of the README's "Reliability" section.

    python scripts/reliability_report.py              # 20 random kills and the rest: 10-15 minutes on 2 busy cores
    python scripts/reliability_report.py --kills 5    # quicker

1. Kills: ``evo-sparse run --preset smoke --workers 1 --generations 6`` is SIGKILLed at seeded random moments (half
   counted from its start, half from its first new journal row, so that both start-up and work are hit) and at
   every fault point (inside the config.json, journal and checkpoint writes), started again with the same command
   after each kill, and compared with an uninterrupted run; then a run with the default worker processes is SIGKILLed
   and interrupted with Ctrl-C. Every run must end identical to the uninterrupted one (``seconds`` aside), with one
   journal row per evaluation, every generation once, no temp files and no worker left running.
2. SIGTERM: runs with the default worker processes (``--generations 6``) are stopped by SIGTERM to their process group
   (as Slurm or Kubernetes stop a job) at seeded moments (alternately 0-6 s after the start and 0-3 s after the first
   new journal row): exit 143 with one line and no traceback, no worker left, and resumed to the uninterrupted result.
3. Hung workers: runs on two worker processes whose first attempt at two chosen masks hangs for ever
   (``EVO_SPARSE_FAULT=hang=P``) under ``--eval-timeout``: every hang noticed, killed and retried, and the run equal to
   the local backend's; how long each went unanswered against the limit.
4. Final training: ``evo-sparse final RUN_DIR --final-masks 2 --seeds 1`` (5 trainings) of a smoke run on two worker
   processes, with the workers of two masks killed by ``crash=P``, with a worker SIGKILLed from outside mid-training,
   and stopped by SIGTERM mid-training then rerun; every record equal to an uninterrupted local final training's
   (``seconds``, ``epoch_seconds`` and ``retries`` aside).
5. Failures: runs whose evaluations raise or give NaN at 5%, 20% and 50% (and run out of memory once at 10%).
6. Bad inputs: every case of ``tests/bad_inputs.py``'s ``BAD_INPUTS`` and a run folder in use.

The machinery is the test suite's own (``tests/reliability.py``, ``tests/bad_inputs.py``); ``tests/test_reliability.py``
and the backends' tests run a smaller set of kills and every other case.
"""

from __future__ import annotations

import argparse
import shutil
import signal
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


def sigterms(workdir: Path, n: int, seed: int) -> bool:
    start = time.perf_counter()
    print(
        f"2. SIGTERM to the process group: {n} runs with the default worker processes, --generations 6, each stopped "
        "once (alternately 0-6 s after the start and 0-3 s after its first new journal row), then resumed"
    )
    checks = R.sigterm_campaign(workdir / "sigterm", {"generations": 6}, stops=n, seed=seed, max_delay=6.0, log=print)
    stops = [c.cycles[0] for _, c in checks]
    clean = [s for s in stops if R.stopped_cleanly(s.returncode, s.stderr)]
    by_signal = [s for s in stops if s.returncode == -signal.SIGTERM]
    working = [s for s in stops if s.rows_after > s.rows_before]
    print(
        f"   => exit 143 with the one line last and no traceback: {len(clean)} of {len(stops)}"
        f" ({len(working)} after new evaluations were journaled; child processes at the signal: "
        f"{sorted(s.children for s in stops)}); ended by the signal itself before the CLI's handler: {len(by_signal)}"
    )
    orphans, leftovers = sum(len(s.orphans) for s in stops), sum(len(s.leftovers) for s in stops)
    print(f"   => worker processes left running: {orphans}; temp files left: {leftovers}")
    rows = sorted({k for _, c in checks for k in c.rows_per_slot.values()})
    identical = sum(c.identical for _, c in checks)
    print(
        f"   => resumed to the uninterrupted result: {identical} of {len(checks)}; journal rows per evaluation: {rows}"
    )
    problems = [(round(delay, 2), c.problems) for delay, c in checks if not c.ok]
    print(f"   => problems: {problems or 'none'}  ({time.perf_counter() - start:.0f} s)")
    return not problems and len(clean) + len(by_signal) == len(stops)


def hangs(workdir: Path, n: int, timeout: float) -> bool:
    start = time.perf_counter()
    print(
        f"3. hung workers: {n} runs (seeds 0-{n - 1}), --backend process --workers 2 --eval-timeout {timeout:g}, the "
        "first attempt at the 2 masks of lowest hang= draw hangs for ever"
    )
    checks = [R.hung_workers(workdir / "hung", seed, timeout=timeout) for seed in range(n)]
    for c in checks:
        waits = ", ".join(f"{seconds:.2f}" for seconds, _ in c.noticed)
        print(
            f"   seed {c.seed}: {c.evaluations} evaluations, {c.expected} hung, noticed {len(c.noticed)} (after {waits}"
            f" s), retried {c.retried}, equal to the local backend {c.identical}, exit {c.exit_code}"
        )
    waits = [seconds for c in checks for seconds, _ in c.noticed]
    print(
        f"   => hung evaluations noticed {sum(len(c.noticed) for c in checks)} of {sum(c.expected for c in checks)}, "
        f"retried {sum(c.retried for c in checks)}; runs equal to the local backend: {sum(c.identical for c in checks)}"
        f" of {n}; unanswered for {min(waits, default=0):.2f}-{max(waits, default=0):.2f} s against a limit of "
        f"{timeout:g} s  ({time.perf_counter() - start:.0f} s)"
    )
    return all(c.ok for c in checks)


def final_training(workdir: Path, kills: int, sigterms: int, seed: int) -> bool:
    start = time.perf_counter()
    print(
        f"4. final training: `final RUN_DIR {' '.join(R.FINAL_JOBS)} {' '.join(R.WORKERS)}` of a smoke run, once with "
        f"crash= killing the workers of 2 masks, {kills} times with a worker SIGKILLed 0-2 s after a result, "
        f"{sigterms} times stopped by SIGTERM 0-2 s after a result and rerun"
    )
    trainings, checks = R.final_campaign(workdir / "final", kills=kills, sigterms=sigterms, seed=seed, log=print)
    hooked, killed, stopped = checks[0], checks[1 : 1 + kills], checks[1 + kills :]
    print(
        f"   => crash=: trainings retried {sum(hooked.retries)} (log lines {hooked.retried}), records equal to the "
        f"uninterrupted final's: {hooked.identical} ({trainings} records)"
    )
    hit = [c for c in killed if c.starts[0].killed_worker is not None]
    retried = sum(sum(c.retries) for c in hit)
    print(
        f"   => worker SIGKILLed mid-training: {len(hit)} of {kills} landed, trainings retried {retried}, records "
        f"equal: {sum(c.identical for c in killed)} of {kills}"
    )
    clean = sum(R.stopped_cleanly(c.starts[0].returncode, c.starts[0].stderr) for c in stopped)
    print(
        f"   => SIGTERM: exit 143 with the one line and no traceback {clean} of {sigterms} (results on disk at the "
        f"signal: {[c.starts[0].done_after for c in stopped]} of {trainings}); worker processes left "
        f"{sum(len(s.orphans) for c in stopped for s in c.starts)}; the rerun kept every finished result "
        f"{sum(c.kept for c in stopped)} of {sigterms} and ended equal {sum(c.identical for c in stopped)} of "
        f"{sigterms}"
    )
    problems = [(c.what, c.problems) for c in checks if not c.ok]
    print(f"   => problems: {problems or 'none'}  ({time.perf_counter() - start:.0f} s)")
    return not problems


def failures(workdir: Path) -> bool:
    start = time.perf_counter()
    print(
        "5. injected evaluation failures (raise / NaN at the rate, OOM at full batch for 10%), pop 20 x 2 generations"
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
    print(f"6. bad inputs: {len(results)} cases (settings, data, edited state files, runs folder)")
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
    parser.add_argument("--sigterms", type=int, default=6, help="runs stopped by SIGTERM")
    parser.add_argument("--hangs", type=int, default=3, help="runs with hung workers")
    parser.add_argument("--eval-timeout", type=float, default=10.0, help="--eval-timeout of the hung-worker runs")
    parser.add_argument("--final-kills", type=int, default=2, help="final trainings with a worker SIGKILLed")
    parser.add_argument("--final-sigterms", type=int, default=2, help="final trainings stopped by SIGTERM")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill and signal moments")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the run folders here (default: a temp dir)")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="evo-sparse-reliability-"))
    try:
        results = [
            kills(workdir, args.kills, args.seed),
            sigterms(workdir, args.sigterms, args.seed),
            hangs(workdir, args.hangs, args.eval_timeout),
            final_training(workdir, args.final_kills, args.final_sigterms, args.seed),
            failures(workdir),
            bad_inputs(workdir),
        ]
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print("all good" if all(results) else "PROBLEMS: see above")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
