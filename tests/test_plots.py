"""Figures are pure functions of folders: each is drawn from fabricated results, with its PNG, PDF and sidecar."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from scipy import stats

from evo_sparse.cli import cli
from evo_sparse.foundations.presets import final_preset
from evo_sparse.foundations.storage import write_json
from evo_sparse.study import plot_style, plots
from evo_sparse.study.plot_style import OKABE_ITO, bars


def fabricated_rows(source: str = "runs/weedout_x/seed_0") -> list[dict]:
    rows = []
    for seed in (0, 1):
        rows += [fake("dense", 0, 0.0, seed, t, 0.30, 0.90, "runs/dense_x/seed_0") for t in (0, 1)]
        for s, base in ((0.5, 0.85), (0.9, 0.70)):
            for i in range(3):
                for t in (0, 1):
                    rows.append(fake("found", i, s, seed, t, 0.4 + 0.02 * i, base + 0.01 * i - 0.005 * t, source))
                    rows.append(fake("random", i, s, seed, t, 0.3 + 0.02 * i, base - 0.01 * i + 0.005 * t, source))
    return rows


def fake(kind, index, sparsity, seed, train_seed, early, final, source):
    keep = (1 - sparsity) ** 2
    return {
        "kind": kind,
        "index": index,
        "sparsity": sparsity,
        "seed": seed,
        "train_seed": train_seed,
        "early_fitness": early,
        "final_test_acc": final,
        "val_acc": [final * f for f in (0.5, 0.8, 0.95, 1.0)],
        "params": int(700_000 * keep) + index,
        "flops": int(100e6 * keep),
        "status": "ok",
        "source": source,
    }


def summary(alg: str, seed: int) -> dict:
    return {
        "run_dir": f"runs/{alg}_x/seed_{seed}",
        "population_size": 20,
        "generations": 4,
        "algorithm": alg,
        "sparsity": 0.8,
        "logbook": [{"gen": g, "max": 0.3 + 0.02 * g + 0.01 * seed, "avg": 0.2 + 0.02 * g} for g in range(4)],
    }


def comparison() -> dict:
    runs = [{"algorithm": a, "seed": s, "run_dir": f"runs/{a}_x/seed_{s}"} for a in ("weedout", "ga") for s in (0, 1)]
    bands = {
        a: {"mean": [0.2, 0.3, 0.35], "low": [0.1, 0.25, 0.3], "high": [0.3, 0.35, 0.4]} for a in ("weedout", "ga")
    }
    return {"runs": runs, "bands": bands, "train_images_per_eval": 4096}


def assert_drawn(out: Path, name: str, sources: list[str]) -> dict:
    for ext in ("png", "pdf"):
        assert (out / f"{name}.{ext}").stat().st_size > 1000, (name, ext)
    assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / f"{name}.pdf").read_bytes()[:5] == b"%PDF-"
    sidecar = json.loads((out / f"{name}.json").read_text())
    assert sidecar["figure"] == name and sidecar["sources"] == sorted(set(sources))
    return sidecar


def test_every_figure_from_fabricated_results(tmp_path):
    rows = fabricated_rows()
    sources = ["runs/weedout_x/seed_0", "runs/dense_x/seed_0"]
    assert plots.accuracy_vs_sparsity(rows, tmp_path) == tmp_path / "accuracy_vs_sparsity.png"
    data = assert_drawn(tmp_path, "accuracy_vs_sparsity", sources)["data"]
    assert data["found"]["sparsity"] == [0.5, 0.9] and data["found"]["n"] == [6, 6]  # masks, seeds averaged
    assert data["dense"]["mean"] == [pytest.approx(0.9)]
    plots.early_vs_final(rows, tmp_path)
    data = assert_drawn(tmp_path, "early_vs_final", sources)["data"]
    assert [d["sparsity"] for d in data] == [0.5, 0.9]
    points = data[0]["points"]
    tau = stats.kendalltau([p["early_fitness"] for p in points], [p["final_test_acc"] for p in points]).statistic
    assert len(points) == 12 and data[0]["kendall_tau"] == pytest.approx(tau)
    assert data[0]["early_measure"] == "search"  # the fabricated rows have no held-out early fitness
    plots.validation_curves(rows, tmp_path)
    assert len(assert_drawn(tmp_path, "validation_curves", sources)["data"]) == 6  # 2 sparsities x 3 kinds
    plots.cost_vs_accuracy(rows, tmp_path)
    assert len(assert_drawn(tmp_path, "cost_vs_accuracy", sources)["data"]) == 2 + 2 * 2 * 6
    runs = [summary(a, s) for a in ("weedout", "ga") for s in (0, 1)]
    plots.fitness_over_generations(runs, tmp_path)
    data = assert_drawn(tmp_path, "fitness_over_generations", [r["run_dir"] for r in runs])["data"]
    assert {d["algorithm"] for d in data} == {"weedout", "ga"}
    assert data[0]["best"] == pytest.approx([0.305, 0.325, 0.345, 0.365])  # mean over the two seeds
    c = comparison()
    plots.best_so_far(c, tmp_path)
    assert_drawn(tmp_path, "best_so_far", [r["run_dir"] for r in c["runs"]])


def test_early_vs_final_says_which_early_fitness_it_shows(tmp_path):
    rows = fabricated_rows()
    for r in rows:  # re-measured under a held-out replicate: the order within each group reversed
        r["early_fitness_heldout"] = 0.6 - r["early_fitness"]
    plots.early_vs_final(rows, tmp_path / "heldout")
    sidecar = json.loads((tmp_path / "heldout" / "early_vs_final.json").read_text())
    assert sidecar["early_measure"] == "heldout" and sidecar["early_label"] == plots.EARLY_LABELS["heldout"]
    points = sidecar["data"][0]["points"]
    x = [p["early_fitness_heldout"] for p in points]
    tau = stats.kendalltau(x, [p["final_test_acc"] for p in points]).statistic
    assert sidecar["data"][0]["kendall_tau"] == pytest.approx(tau) and sidecar["data"][0]["early_measure"] == "heldout"
    assert all(p["early_fitness"] is not None for p in points)  # the search's value stays beside it
    for r in rows[2:6]:  # two masks without it (both training seeds): the search's measure, said so
        del r["early_fitness_heldout"]
    plots.early_vs_final(rows, tmp_path / "search")
    sidecar = json.loads((tmp_path / "search" / "early_vs_final.json").read_text())
    assert sidecar["early_measure"] == "search" and "as the search measured it" in sidecar["early_label"]


def test_early_vs_final_caption_gives_the_trainings_behind_its_early_fitness(tmp_path):
    """A search's fitness is the mean of its replicates; the held-out measure is one training of one replicate."""
    rows = fabricated_rows()
    plots.early_vs_final(rows, tmp_path / "search", brief_images=[2048], replicates=[2])
    caption = json.loads((tmp_path / "search" / "early_vs_final.json").read_text())["captions"][0]
    assert "the mean of 2 trainings of 2,048 training images" in caption
    for r in rows:
        r["early_fitness_heldout"] = r["early_fitness"]
    plots.early_vs_final(rows, tmp_path / "heldout", brief_images=[2048], replicates=[2])
    caption = json.loads((tmp_path / "heldout" / "early_vs_final.json").read_text())["captions"][0]
    assert "one training of 2,048 training images under a replicate the search never saw" in caption


def test_a_long_title_is_wrapped_to_the_width_of_its_figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.8, 3.8))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    text = "Final test accuracy after 1 epoch of training, n=18 masks per kind and sparsity (legend)"
    fig.suptitle(f"{text}\nsecond line", fontsize=9)
    ax.set_title(text, fontsize=8)
    plot_style.fit_titles(fig)
    fig.tight_layout()
    renderer = fig.canvas.get_renderer()
    width = fig.get_window_extent(renderer).width
    for title in (fig.texts[0], ax.title):
        box = title.get_window_extent(renderer)
        assert "\n" in title.get_text() and box.x0 >= 0 and box.x1 <= width
    assert fig.texts[0].get_text().endswith("\nsecond line")  # its own line breaks kept


def test_same_data_same_files(tmp_path):
    rows = fabricated_rows()
    plots.accuracy_vs_sparsity(rows, tmp_path / "a")
    plots.accuracy_vs_sparsity(rows, tmp_path / "b")
    for ext in ("png", "pdf", "json"):
        name = f"accuracy_vs_sparsity.{ext}"
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), ext


def test_plot_command_draws_from_a_final_training_folder(tmp_path):
    folder = tmp_path / "runs" / "weedout_x" / "seed_0" / "final_abc"
    write_json(folder / "final.json", final_preset("smoke").to_dict())
    for r in [r for r in fabricated_rows(str(folder.parent)) if r["seed"] == 0 and r["sparsity"] < 0.9]:
        write_json(folder / f"{r['kind']}_{r['index']}_seed{r['train_seed']}_{r['seed']}_{r['sparsity']}.json", r)
    result = CliRunner().invoke(cli, ["plot", str(folder), "--out", str(tmp_path / "plots")])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == str(tmp_path / "plots")
    names = {Path(line).stem for line in lines[:-1]}
    assert names == {"accuracy_vs_sparsity", "early_vs_final", "validation_curves", "cost_vs_accuracy"}
    assert all((tmp_path / "plots" / f"{n}.pdf").exists() for n in names)


def test_plot_refuses_a_folder_it_cannot_read(tmp_path):
    result = CliRunner().invoke(cli, ["plot", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stderr.startswith("evo-sparse: error:") and "not a study" in result.stderr
    result = CliRunner().invoke(cli, ["plot", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "does not exist" in result.stderr


def test_error_bars_are_never_negative_when_an_estimate_lies_a_rounding_step_outside_its_interval():
    below, above = bars([-0.9999999999999999, 0.5], [[-1.0, -1.0], [0.25, 0.75]])
    assert min(below + above) >= 0.0  # matplotlib refuses a negative error bar
    assert above[0] == 0.0 and below[1] == above[1] == 0.25


# --- what a reviewer asks of every figure (issue 15): n, training length, colours, markers, references -------------


def test_kinds_and_algorithms_have_distinct_colour_blind_safe_colours_and_markers():
    names = ("found", "random", "dense", "ga", "weedout")
    colours, markers = [plot_style.color(n) for n in names], [plot_style.marker(n) for n in names]
    assert len(set(colours)) == len(set(markers)) == len(names)
    assert set(colours) <= set(OKABE_ITO.values())
    other = [plot_style.color("cma-es"), plot_style.marker("cma-es")]
    assert other == [plot_style.color("cma-es"), plot_style.marker("cma-es")]  # fixed by the name, not by the run
    assert other[0] in OKABE_ITO.values() and other[0] not in colours and other[1] not in markers


def test_every_figure_states_n_and_the_training_length(tmp_path):
    rows = fabricated_rows()
    for draw in (plots.accuracy_vs_sparsity, plots.early_vs_final, plots.validation_curves, plots.cost_vs_accuracy):
        sidecar = json.loads(draw(rows, tmp_path).with_suffix(".json").read_text())
        captions = " ".join(sidecar["captions"])
        assert "n=" in captions and "4 epochs" in captions, (sidecar["figure"], captions)  # 4 epochs: val_acc's length
    runs = [summary(a, s) | {"train_images_per_eval": 4096} for a in ("weedout", "ga") for s in (0, 1)]
    sidecar = json.loads(plots.fitness_over_generations(runs, tmp_path).with_suffix(".json").read_text())
    assert "n=2 seeds" in " ".join(sidecar["captions"]) and "4,096 images" in " ".join(sidecar["captions"])
    sidecar = json.loads(plots.best_so_far(comparison(), tmp_path).with_suffix(".json").read_text())
    assert "n=2 runs" in " ".join(sidecar["captions"]) and "95% t-interval" in " ".join(sidecar["captions"])
    assert sorted(sidecar["legend"]) == ["ga (n=2 runs)", "weedout (n=2 runs)"]


def test_accuracy_vs_sparsity_shows_masks_with_the_mean_and_its_t_interval_and_parameter_sparsity(tmp_path):
    rows = fabricated_rows()
    sidecar = json.loads(plots.accuracy_vs_sparsity(rows, tmp_path).with_suffix(".json").read_text())
    found = sidecar["data"]["found"]
    points = found["points"][0]
    assert len(points) == 6 and found["mean"][0] == pytest.approx(sum(points) / 6)
    half = stats.t.ppf(0.975, 5) * stats.tstd(points) / 6**0.5
    assert found["low"][0] == pytest.approx(found["mean"][0] - half) and found["high"][0] == pytest.approx(
        found["mean"][0] + half
    )
    assert found["param_sparsity"] == pytest.approx([0.75, 0.99], abs=1e-5)  # params (1 - s)^2 of the dense 700,000
    assert plot_style.sparsity_label(0.8, {0.8: 0.953}) == "0.8 (0.95 params)"
    assert plot_style.sparsity_label(0.8, {}) == "0.8" and plot_style.sparsity_label(0.0, {0.0: 0.0}) == "0 (dense)"


def test_equal_points_are_set_side_by_side_deterministically():
    offsets = plot_style.side_by_side([1, 1, 2, 1], [0.5, 0.5, 0.5, 0.7], 0.1)
    assert offsets.tolist() == pytest.approx([-0.05, 0.05, 0.0, 0.0])
    assert plot_style.dodge(3, 0.2).tolist() == pytest.approx([-0.1, 0.0, 0.1])


def test_early_vs_final_gives_tau_with_its_ci_within_each_kind_as_the_analysis_does(tmp_path):
    from evo_sparse.stats import analysis

    rows = fabricated_rows()
    sidecar = json.loads(plots.early_vs_final(rows, tmp_path, brief_images=[4096]).with_suffix(".json").read_text())
    expected = analysis.analyse(rows)["sparsities"]
    for panel, a in zip(sidecar["data"], expected):
        for kind in ("found", "random"):
            mine, theirs = panel["by_kind"][kind], a["early_vs_final"]["by_kind"][kind]
            assert mine["n"] == 6 and mine["kendall_tau"] == pytest.approx(theirs["kendall_tau"])
            assert mine["kendall_tau_ci"] == pytest.approx(theirs["kendall_tau_ci"])
        assert panel["kendall_tau_ci"] == pytest.approx(a["early_vs_final"]["kendall_tau_ci"])
    assert any(label.startswith("found: τ +1.00") for label in sidecar["legend"])
    assert "4,096 training images" in sidecar["captions"][0]


def test_validation_band_is_the_t_interval_of_the_mean_over_masks_and_says_so(tmp_path):
    rows = fabricated_rows()
    sidecar = json.loads(plots.validation_curves(rows, tmp_path).with_suffix(".json").read_text())
    found = next(d for d in sidecar["data"] if d["kind"] == "found" and d["sparsity"] == 0.5)
    last = [r["val_acc"][-1] for r in rows if r["kind"] == "found" and r["sparsity"] == 0.5]
    per_mask = [(a + b) / 2 for a, b in zip(last[::2], last[1::2])]  # a mask's two training seeds are adjacent rows
    half = stats.t.ppf(0.975, 5) * stats.tstd(per_mask) / 6**0.5
    assert found["n"] == 6 and found["trainings"] == 12 and found["high"][-1] - found["mean"][-1] == pytest.approx(half)
    assert "band: 95% t-interval" in sidecar["captions"][0]


def test_fitness_over_generations_draws_the_noise_of_one_fitness(tmp_path):
    measured = [summary("ga", s) | {"noise": {"measured": True, "fitness_sd": 0.004}} for s in (0, 1)]
    sidecar = json.loads(plots.fitness_over_generations(measured, tmp_path).with_suffix(".json").read_text())
    (line,) = sidecar["data"]
    assert line["noise"]["kind"] == "replicates" and line["noise_half_width"] == pytest.approx([0.004] * 4)
    assert "± 1 SD of one fitness value" in " ".join(sidecar["captions"])
    unmeasured = []
    for s in (0, 1):  # no replicates: the binomial SE on the validation images the run's config names
        run = summary("weedout", s) | {"run_dir": str(tmp_path / f"weedout_{s}"), "noise": {"measured": False}}
        write_json(Path(run["run_dir"]) / "config.json", {"data": {"val_size": 5000}, "train": {"val_images": 1000}})
        unmeasured.append(run)
    sidecar = json.loads(plots.fitness_over_generations(unmeasured, tmp_path).with_suffix(".json").read_text())
    (line,) = sidecar["data"]
    p = line["best"]
    assert line["noise"] == {"kind": "binomial", "val_images": 1000}
    assert line["noise_half_width"] == pytest.approx([(q * (1 - q) / 1000) ** 0.5 for q in p])
    assert "binomial SE" in " ".join(sidecar["captions"])


def test_best_so_far_draws_pure_random_search_from_generation_0_and_reads_old_comparisons(tmp_path):
    from evo_sparse.stats.reference import expected_best_of_n

    c = comparison() | {"budget_trainings": 3}
    values = [0.1, None, 0.2, 0.25, 0.3, 0.15]
    m = sum(v is not None for v in values)
    c["random_reference"] = {"values": m, "expected_best": expected_best_of_n(values, 3)}
    sidecar = json.loads(plots.best_so_far(c, tmp_path / "new").with_suffix(".json").read_text())
    assert sidecar["random_reference"]["expected_best"] == pytest.approx(expected_best_of_n(values, 3))
    assert sidecar["budget_trainings"] == 3 and sidecar["data"] == c["bands"]
    assert "expected best of N i.i.d. random masks\n(gen-0 distribution, m=5 values)" in sidecar["legend"]
    assert "of 3 evaluations" in sidecar["captions"][0]
    old = comparison() | {"budget_evaluations": 3}  # written before budget_trainings and the reference
    sidecar = json.loads(plots.best_so_far(old, tmp_path / "old").with_suffix(".json").read_text())
    assert sidecar["budget_trainings"] == 3 and sidecar["random_reference"] is None


def test_a_comparisons_budget_says_how_many_trainings_one_fitness_evaluation_is(tmp_path):
    c = comparison() | {"train_images_per_eval": 4096, "replicates": 2}
    assert plot_style.evaluation_text(c) == "2 trainings of 2,048 images"
    assert plot_style.evaluation_text(c | {"replicates": 1}) == "one training of 4,096 images"
    assert (
        plot_style.evaluation_text(comparison()) == "4,096 training images per replicate"
    )  # written before replicates
    sidecar = json.loads(plots.best_so_far(c, tmp_path).with_suffix(".json").read_text())
    assert sidecar["evaluation"] == "2 trainings of 2,048 images"
