"""Which ``--pack`` makes a run's generations fastest here: seconds per generation, measured side by side.

A run evaluates P individuals in its first generation and P - K in every later one (Weedout: 20, then 10 for the
README's run). This times exactly those map calls on the run's own backend (worker processes, one per core, or this
process on one core) for each pack size, interleaved repeat by repeat, and prints the medians, the speed-up of each
pack over ``--pack 1`` for a whole run (first generation + (G - 1) later ones) and a JSON object last.

    python benchmarks/pack_bench.py --packs 1,2,4,5 --repeats 2 [--data ../shared/data/cifar10-jpeg.tar.gz]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

from evo_sparse.execution import backends
from evo_sparse.foundations.devices import resolve_device
from evo_sparse.foundations.presets import preset
from evo_sparse.models.masks import Layout, sample
from evo_sparse.models.wrn import units
from evo_sparse.training.data import load_splits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--packs", default="1,2,4,5", help="comma-separated pack sizes to compare (1 is the baseline)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--data", default=None)
    args = ap.parse_args()
    packs = [int(p) for p in args.packs.split(",")]
    cfg = preset(args.preset).updated({"data.path": args.data} if args.data else {}).validate()
    s = cfg.search
    sizes = {"first": s.population, "later": s.population - s.survivors}
    layout = Layout.from_units(units(cfg.model.depth, cfg.model.width))
    rng = random.Random(0)
    genomes = [sample(layout, s.sparsity, s.sampling, rng) for _ in range(s.population)]
    splits = load_splits(cfg, print)
    where = backends.plan(cfg, resolve_device(cfg.device))
    maps = {k: backends.start(where, cfg.updated({"train.pack": k}), splits) for k in packs}
    times: dict[tuple[int, str], list[float]] = {}
    fitness: dict[int, list[float]] = {}
    try:
        for m in maps.values():  # warm-up: worker start-up stays out of the timings
            list(m(None, genomes[:1]))
        for r in range(args.repeats):
            for k, m in maps.items():
                for gen, n in sizes.items():
                    start = time.perf_counter()
                    records = list(m(None, genomes[:n]))
                    times.setdefault((k, gen), []).append(time.perf_counter() - start)
                    fitness[k] = [rec["fitness"] for rec in records]
                    took = times[(k, gen)][-1]
                    print(f"repeat {r + 1}/{args.repeats} --pack {k} {gen} generation ({n}): {took:.1f} s")
    finally:
        for m in maps.values():
            m.close()
    med = {key: statistics.median(v) for key, v in times.items()}
    run_seconds = {k: med[(k, "first")] + (s.generations - 1) * med[(k, "later")] for k in packs}
    base = run_seconds[packs[0]]
    print(f"\n{cfg.preset} preset, {where.describe()}, {args.repeats} repeats (medians), s = {s.sparsity}")
    print("| --pack | first generation s | later generation s | whole run s (estimated) | speed-up |")
    print("| --- | --- | --- | --- | --- |")
    for k in packs:
        row = f"| {k} | {med[(k, 'first')]:.1f} | {med[(k, 'later')]:.1f} | {run_seconds[k]:.0f} | "
        print(row + f"{base / run_seconds[k]:.2f}x |")
    result = {
        "preset": cfg.preset,
        "backend": where.describe(),
        "sizes": sizes,
        "repeats": args.repeats,
        "seconds": {f"{k}@{gen}": v for (k, gen), v in med.items()},
        "run_speedup": {str(k): base / run_seconds[k] for k in packs},
        "mean_fitness": {str(k): statistics.mean(fitness[k]) for k in packs},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
