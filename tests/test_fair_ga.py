"""A fair GA (issue 15, item 1): mutation always changes the genome, a fitness is invalidated only when the genome
changed, a mask is trained once per run (the cache), the budget of trainings is never passed (in a run, in
``compare``, in a simulation of many seeds), the curve by trainings, and how ``--algorithms`` is read."""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from evo_sparse.cli import cli
from evo_sparse.foundations.config import RunConfig, SearchConfig
from evo_sparse.foundations.presets import final_preset, preset
from evo_sparse.models.masks import Layout, Mask, sample
from evo_sparse.runs.journal import Journal
from evo_sparse.runs.run import execute
from evo_sparse.search.algorithms import Hooks, assign, evolve, make_toolbox, mut_swap, next_generation
from evo_sparse.study import compare as comparing

PLUGINS = Path(__file__).resolve().parent / "plugins"
WRN10_1 = Layout(
    ("stage1", "stage1.block0.inner", "stage2", "stage2.block0.inner", "stage3", "stage3.block0.inner"),
    (16, 16, 32, 32, 64, 64),
)
UNEVEN = Layout(("a", "b", "c", "d"), (3, 5, 8, 13))
ONE_MOVABLE = Layout(("a", "b", "c"), (1, 4, 1))  # only b can swap: a and c hold one node each
LAYOUTS = {"wrn10-1": WRN10_1, "uneven": UNEVEN, "one-movable": ONE_MOVABLE}
TINY = {"backend": "local", "data.val_size": 100, "train.train_images": 64, "search.population": 4}
TINY_ARGS = ["--preset", "smoke", "--quiet", "--backend", "local", "--val-size", "100", "--train-images", "64"]


def unit_counts(layout: Layout, genome) -> list[int]:
    return [sum(genome[a:b]) for a, b in layout.spans()]


def synthetic_fitness(genome) -> dict:
    """Deterministic in the genome: the share of kept nodes in the first half, plus a small term breaking ties."""
    half = len(genome) // 2
    tie = (sum(i * b for i, b in enumerate(genome)) % 997) / 1e6
    return {"status": "ok", "fitness": sum(genome[:half]) / max(1, sum(genome)) + tie, "seconds": 0.0}


def tiny(runs_dir: Path, algorithm: str = "ga", **flat) -> RunConfig:
    return preset("smoke").updated({**TINY, "runs_dir": str(runs_dir), "search.algorithm": algorithm, **flat})


def run(cfg: RunConfig) -> Path:
    return execute(cfg, log=lambda _: None, show_progress=False)


def journal(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "evaluations.jsonl").read_text().splitlines()]


def in_order(rows: list[dict]) -> list[dict]:
    """Rows in the order the loop asked for them (a cache hit is written before the trainings of its generation)."""
    return sorted(rows, key=lambda r: (r["gen"], r["index"]))


def within(rows: list[dict], budget: float) -> list[dict]:
    """The rows, in the loop's order, whose cumulative cost is within ``budget``."""
    out, spent = [], 0.0
    for row in in_order(rows):
        spent += row["cost"]
        if spent > budget + 1e-9:
            break
        out.append(row)
    return out


def assert_cache_is_sound(rows: list[dict]) -> None:
    """No (mask, length) trained twice; a run cache hit copies the trained row's fitness, costs 0 and took 0 s."""
    trained = {}
    for row in in_order(rows):
        key = (row["mask"], row.get("fidelity"))
        if row.get("cache") is None:
            assert key not in trained, f"{row['mask']} trained twice"
            trained[key] = row
        elif row["cache"] == "run":
            assert key in trained and row["fitness"] == trained[key]["fitness"]
            assert row["cost"] == 0.0 and row["seconds"] == 0.0


# --- mutation always mutates ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("swap_prob", (0.0, 0.01, 0.1, 1.0))
@pytest.mark.parametrize(
    ("name", "sparsity", "sampling"),
    (
        ("wrn10-1", 0.5, "layerwise"),
        ("wrn10-1", 0.95, "layerwise"),
        ("wrn10-1", 0.9, "global"),
        ("uneven", 0.3, "layerwise"),
        ("uneven", 0.8, "global"),
        ("one-movable", 0.5, "layerwise"),
        ("one-movable", 0.5, "global"),
    ),
)
def test_mut_swap_changes_the_genome_every_time_and_keeps_per_unit_counts(name, sparsity, sampling, swap_prob):
    """Over 200 seeds: every mutation changes the genome (even when no per-unit coin comes up), by whole swaps inside
    units, so every unit keeps its count; with swap_prob 0 it makes exactly one swap, in a unit that can swap."""
    layout = LAYOUTS[name]
    for seed in range(200):
        random.seed(seed)
        genome = sample(layout, sparsity, sampling)
        before = list(genome)
        (out,) = mut_swap(genome, layout, swap_prob)
        assert out is genome and genome != before, (seed, genome)
        assert unit_counts(layout, genome) == unit_counts(layout, before)
        changes = [sum(x != y for x, y in zip(genome[a:b], before[a:b])) for a, b in layout.spans()]
        assert set(changes) <= {0, 2}
        if swap_prob == 0.0:
            assert sorted(changes) == [0] * (len(changes) - 1) + [2]


def test_mut_swap_leaves_a_genome_no_unit_can_swap():
    """At sparsity 0 every node is kept: no swap is possible, and the mutation returns the genome as it was."""
    genome = sample(UNEVEN, 0.0)
    assert mut_swap(genome, UNEVEN, 1.0) == ([1] * UNEVEN.size,)


# --- a fitness is invalidated only when the genome changed -----------------------------------------------------------


def scored_population(tb, n: int, genome=None) -> list:
    population = []
    for _ in range(n):
        ind = tb.individual()
        if genome is not None:
            ind[:] = genome
        assign(ind, synthetic_fitness(ind))
        population.append(ind)
    return population


@pytest.mark.parametrize(("sampling", "crossover"), (("layerwise", "unit"), ("global", "uniform")))
def test_offspring_of_identical_parents_keep_their_fitness(sampling, crossover):
    """Crossing identical parents (cxpb 1) without mutation changes no genome: every offspring keeps the parents'
    fitness and record, so none is evaluated again; with mutpb 1 every offspring changed and is invalidated."""
    cfg = SearchConfig(algorithm="ga", population=8, sparsity=0.5, sampling=sampling, crossover=crossover)
    tb = make_toolbox(cfg, WRN10_1, synthetic_fitness)
    genome = tb.sample()
    population = scored_population(tb, 8, genome)
    out = next_generation(population, tb, 4, cxpb=1.0, mutpb=0.0)
    assert len(out) == 8 and all(list(ind) == genome for ind in out)
    assert all(ind.fitness.valid and ind.record == population[0].record for ind in out)
    out = next_generation(population, tb, 4, cxpb=1.0, mutpb=1.0)
    assert all(ind.fitness.valid for ind in out[:4])
    assert all(not ind.fitness.valid and ind.record is None and list(ind) != genome for ind in out[4:])


def test_an_offspring_is_invalidated_exactly_when_its_genome_changed():
    """Over many generations of random populations, each offspring (a clone of a known parent) has a valid fitness
    if and only if its genome equals that parent's, and a kept fitness is still its genome's."""
    cfg = SearchConfig(algorithm="ga", population=10, sparsity=0.9, cxpb=0.5, mutpb=0.3, swap_prob=0.1)
    tb = make_toolbox(cfg, WRN10_1, synthetic_fitness)
    tb.register("select_parents", lambda population, k: population[:k])  # offspring i is a clone of parent i
    kept = changed = 0
    for seed in range(200):
        random.seed(seed)
        population = scored_population(tb, 10)
        if seed % 2:
            population[1][:] = population[0]  # identical pairs too
            assign(population[1], synthetic_fitness(population[1]))
        parents = [list(ind) for ind in population[:5]]
        offspring = next_generation(population, tb, 5, cxpb=0.5, mutpb=0.3)[5:]
        for ind, parent in zip(offspring, parents):
            assert ind.fitness.valid == (list(ind) == parent)
            if ind.fitness.valid:
                kept += 1
                assert ind.fitness.values[0] == synthetic_fitness(ind)["fitness"]
            else:
                changed += 1
    assert kept > 100 and changed > 100  # both cases occur often


# --- the cache: a mask is trained once per run -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("algorithm", "flat"),
    (
        ("ga", {"search.population": 8, "search.generations": 6, "search.sparsity": 0.95, "search.cxpb": 1.0}),
        ("toy_plugins:repeats", {"search.generations": 6}),
    ),
)
def test_a_ga_run_never_trains_a_mask_twice(tmp_path, monkeypatch, algorithm, flat):
    """A GA that meets masks again (crossed children equal to masks scored before; a plug-in whose offspring repeat
    a pool of two masks) trains each mask once: the repeats are journaled as cache hits (``cache: "run"``, cost 0,
    0 s, the fitness scored before) and ``show`` counts them."""
    monkeypatch.syspath_prepend(str(PLUGINS))
    folder = run(tiny(tmp_path, algorithm, **{"search.mutpb": 0.0} | flat))
    rows = journal(folder)
    assert_cache_is_sound(rows)
    hits = [r for r in rows if r.get("cache") is not None]
    assert hits and all(r["cache"] == "run" for r in hits)
    summary = json.loads(CliRunner().invoke(cli, ["show", str(folder), "--json"]).stdout)
    assert summary["cache_hits"] == len(hits) and summary["trainings"] == len(rows) - len(hits)


# --- the budget of trainings ------------------------------------------------------------------------------------------


def test_budget_cuts_a_ga_run_and_a_finished_budget_run_is_left_as_it_is(tmp_path):
    """``--budget 7`` stops a GA that has generations to spare once 7 trainings are spent (never more), marks it
    finished (``show`` and the checkpoint); the same command then changes no file."""
    args = ["run", *TINY_ARGS, "--pop", "4", "--algorithm", "ga", "--generations", "12", "--budget", "7"]
    args += ["--runs-dir", str(tmp_path)]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    folder = Path(first.stdout.strip().splitlines()[-1])
    rows = journal(folder)
    assert sum(r["cost"] for r in rows) == 7.0
    ckpt = json.loads((folder / "checkpoint.json").read_text())
    assert ckpt["finished"] and ckpt["next_generation"] < 12
    summary = json.loads(CliRunner().invoke(cli, ["show", str(folder), "--json"]).stdout)
    assert summary["finished"] and summary["budget"] == 7.0 and summary["trainings"] == 7.0
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0 and "run already finished" in again.stderr
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()} == before


def test_a_fractional_budget_pays_only_for_whole_trainings(tmp_path):
    """A budget of 5.5 trainings pays for 5 brief trainings: the sixth would pass it."""
    folder = run(tiny(tmp_path, "ga", **{"search.generations": 12, "search.budget": 5.5}))
    assert sum(r["cost"] for r in journal(folder)) == 5.0


def test_compare_plans_an_equal_budget_in_trainings(tmp_path, monkeypatch):
    """Weedout runs as its plain run (no budget); every other algorithm gets Weedout's trainings as its budget, a
    generational one enough generations to spend it, an ask/tell one its generations unchanged; seeds are shared."""
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    base = tiny(tmp_path, "weedout", **{"search.generations": 3})
    names = ["weedout", "ga", "examples.successive_halving:SuccessiveHalving", ("examples.local_search:search", "")]
    budget, configs = comparing.plan(base, algorithms=names, runs=2)
    assert budget == 4 + 2 * 2
    assert {seed for _, seed in configs} == {0, 1} and len(configs) == 8
    weedout, ga = configs[("weedout", 0)].search, configs[("ga", 0)].search
    sh = configs[("examples.successive_halving:SuccessiveHalving", 0)].search
    assert weedout.budget == 0.0 and weedout.generations == 3
    assert ga.budget == sh.budget == configs[("examples.local_search:search", 1)].search.budget == 8.0
    assert ga.generations >= 1 + math.ceil((8 - 4) / 2) and sh.generations == 3


def test_compare_final_train_trains_only_masks_scored_within_the_budget(tmp_path):
    """``compare --final-train`` at smoke scale, GA vs Weedout: no GA training past the budget (costs summed in the
    loop's order), the best-so-far curve ends at the budget, and every mask fully trained was scored within it."""
    base = tiny(tmp_path, "weedout", **{"search.generations": 3})
    final_cfg = final_preset("smoke").updated({"epochs": 1, "seeds": 1})
    root, comparison = comparing.compare(
        base, algorithms=["weedout", "ga"], runs=2, final_cfg=final_cfg, log=lambda _: None, show_progress=False
    )
    budget = comparison["budget_trainings"]
    assert budget == 8
    ga_runs = [r for r in comparison["runs"] if r["algorithm"] == "ga"]
    assert len(ga_runs) == 2 and all(r["final_test_acc"] is not None for r in comparison["runs"])
    cut = 0
    for entry in ga_runs:
        folder = (root / entry["run_dir"]).resolve()
        rows = journal(folder)
        assert sum(r["cost"] for r in rows) <= budget + 1e-9 and entry["trainings"] <= budget + 1e-9
        assert len(entry["curve"]) == budget
        assert_cache_is_sound(rows)
        scored = {r["mask"] for r in within(rows, budget) if r["status"] == "ok"}
        found = [json.loads(p.read_text()) for p in folder.glob("final_*/found_*_seed0.json")]
        assert found and all(f["mask"] in scored for f in found)
        ckpt = json.loads((folder / "checkpoint.json").read_text())
        cut += ckpt["finished"] and ckpt["next_generation"] < entry["generations"]
        assert entry["generations_run"] == ckpt["next_generation"] <= entry["generations"]
    assert cut  # the budget, not the generations, ended a GA run: the test saw it bind


# --- a simulation: the GA never evaluates past its budget -------------------------------------------------------------


def simulate(seed: int, cfg: SearchConfig, budget: float | None, path: Path) -> tuple[list[dict], list, int]:
    """A GA run on a synthetic fitness through the run's journal (its cache and budget): (journal rows, hall of fame,
    trainings done)."""
    trained = []

    def evaluate(genome):
        trained.append(tuple(genome))
        return synthetic_fitness(genome)

    random.seed(seed)
    tb = make_toolbox(cfg, WRN10_1, evaluate)
    book = Journal(path, WRN10_1, 0, budget=budget)
    tb.register("map", book.wrap(map))

    def on_evaluated(gen, index, ind):
        ind.record = Journal.kept(ind.record)[0]

    def on_generation_start(gen, n):
        book.gen = gen

    hooks = Hooks(on_generation_start=on_generation_start, on_evaluated=on_evaluated, budget_left=book.budget_left)
    state = evolve(tb, cfg, None, hooks)
    assert len(set(trained)) == len(trained)  # the cache: no mask trained twice
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return rows, list(state.hall_of_fame), len(trained)


@pytest.mark.parametrize(("sampling", "crossover"), (("layerwise", "unit"), ("global", "uniform")))
def test_simulated_ga_never_evaluates_past_its_budget(tmp_path, monkeypatch, sampling, crossover):
    """100 seeds of a GA given Weedout's budget (P=10, K=5, G=5: 30 trainings) and four times the generations it would
    need: it trains at most 30 masks, its journal's costs stay within 30, and every hall-of-fame mask was scored
    within the budget. Without the budget the same runs train more (so the budget is what binds)."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)  # thousands of journal lines; durability is not under test
    weedout = SearchConfig(population=10, generations=5, sparsity=0.9, sampling=sampling)
    budget = weedout.weedout_trainings
    ga_cfg = SearchConfig(
        algorithm="ga", population=10, sparsity=0.9, sampling=sampling, crossover=crossover, mutpb=0.5, swap_prob=0.1
    )
    ga_cfg = SearchConfig(**{**ga_cfg.__dict__, "generations": 1 + 4 * math.ceil((budget - 10) / 5)})
    assert budget == 30
    spent_all = over = 0
    for seed in range(100):
        rows, hall_of_fame, trainings = simulate(seed, ga_cfg, budget, tmp_path / f"{seed}.jsonl")
        assert trainings <= budget and sum(r["cost"] for r in rows) <= budget + 1e-9
        assert all(r["cost"] == (0.0 if r.get("cache") else 1.0) for r in rows)
        scored = {r["mask"]: r["fitness"] for r in within(rows, budget)}
        for ind in hall_of_fame:
            mask = Mask(WRN10_1, tuple(ind)).encode()
            assert mask in scored and scored[mask] == ind.fitness.values[0]
        spent_all += trainings == budget
        _, _, unbounded = simulate(seed, ga_cfg, None, tmp_path / f"{seed}-unbounded.jsonl")
        over += unbounded > budget
    assert spent_all >= 90 and over >= 90


# --- the best-so-far curve by trainings -------------------------------------------------------------------------------


def row(fitness, cost=1.0, **extra) -> dict:
    return {"status": "ok", "fitness": fitness, "cost": cost, **extra}


@pytest.mark.parametrize(
    ("rows", "budget", "curve", "spent"),
    (
        ([row(0.1), row(0.3), row(0.2)], 3, [0.1, 0.3, 0.3], 3.0),
        ([row(0.2), row(0.2, 0.0, cache="run"), row(0.5)], 2, [0.2, 0.5], 2.0),  # a cache hit costs nothing
        ([row(0.2), row(0.9, 1.0, cache="shared"), row(0.1)], 3, [0.2, 0.9, 0.9], 3.0),  # a shared score costs one
        ([row(0.1), row(0.4), row(0.3), row(0.9), row(0.95)], 3, [0.1, 0.4, 0.4], 4.0),  # cut at the budget
        ([row(0.1), row(0.4)], 4, [0.1, 0.4], 2.0),  # a run that spent less: the curve stops there
        ([row(None, status="failed"), row(0.3)], 2, [None, 0.3], 2.0),  # a failed training costs, scores nothing
        (
            [row(0.9, 0.5, fidelity=32), row(0.8, 0.5, fidelity=32), row(0.3), row(0.4)],
            3,
            [None, 0.3, 0.4],
            3.0,
        ),  # shorter trainings cost their share and their fitness is not the run's
        ([row(0.99, 0.1, fidelity=6)] * 10 + [row(0.5)], 2, [None, 0.5], 2.0),  # ten tenths make one training
    ),
)
def test_curve_by_trainings(rows, budget, curve, spent):
    """The best fitness so far after each whole training of the budget: rows count once their cumulative cost is
    within the mark; cache hits cost 0, shared scores and failures their training; fidelity rows only cost."""
    got, got_spent = comparing.curve_by_trainings(rows, budget)
    assert got == curve and got_spent == pytest.approx(spent)


# --- --algorithms -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parsed"),
    (
        ("weedout,ga", [("weedout", ""), ("ga", "")]),
        (" weedout , ga ", [("weedout", ""), ("ga", "")]),
        ("weedout,pkg.mod:Search[eta=3,rungs=2]", [("weedout", ""), ("pkg.mod:Search", "eta=3,rungs=2")]),
        ("a[x=1],b[y=2, z=3],c", [("a", "x=1"), ("b", "y=2, z=3"), ("c", "")]),
        ("pkg.mod:Search[ eta=3 ], ga", [("pkg.mod:Search", "eta=3"), ("ga", "")]),
        ("weedout[]", [("weedout", "")]),
    ),
)
def test_parse_algorithms(text, parsed):
    """Comma-separated names, each with its options in brackets (commas inside brackets belong to the options)."""
    assert comparing.parse_algorithms(text) == parsed


@pytest.mark.parametrize("text", ("weedout,pkg.mod:Search[eta=3", "weedout,pkg.mod:Search[eta=[3]]"))
def test_a_malformed_algorithms_list_is_refused_naming_what_was_written(tmp_path, text):
    """An unbalanced or nested bracket is a one-line error that names the algorithm as written, not a silently
    different list (a stray fragment taken for an algorithm, or a plug-in dropped)."""
    result = CliRunner().invoke(cli, ["compare", *TINY_ARGS, "--algorithms", text, "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pkg.mod:Search" in lines[0], lines
    assert not any(tmp_path.iterdir())
