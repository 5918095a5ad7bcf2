"""Readable text for a run summary (``evo-sparse show``)."""

from __future__ import annotations

from typing import Any

from evo_sparse.stats.measurement import noise_line


def _num(value: float | None, fmt: str = ".4f") -> str:
    return "-" if value is None else format(value, fmt)


def _replicates(s: dict[str, Any]) -> str:
    r = s.get("replicates", 1)
    return f" ({r} replicates of {s['train_images_per_eval'] // r:,})" if r > 1 else ""


def _progress(s: dict[str, Any]) -> str:
    done = (
        f"{s['generations_done']} asks"
        if s.get("kind") == "ask/tell"
        else f"{s['generations_done']}/{s['generations']} generations"
    )
    spent = s.get("trainings")
    if spent is None:
        return done
    budget = f" of a budget of {s['budget']:g}" if s.get("budget") else ""
    hits = f" ({s['cache_hits']} masks scored before, not trained again)" if s.get("cache_hits") else ""
    return f"{done}, {spent:g} trainings{budget}{hits}"


def format_summary(s: dict[str, Any]) -> str:
    """A few lines: what ran, how far it got, the logbook and the best mask."""
    m = s["model"]
    state = "finished" if s["finished"] else "unfinished (run the same command to resume)"
    lines = [
        f"run      {s['run_dir']}",
        f"search   {s['algorithm']}, population {s['population_size']}, keep {s['keep']}, "
        f"sparsity {s['sparsity']} ({s['sampling']}), seed {s['seed']}, preset {s['preset']}",
        f"model    {m['label']}: {m['params']:,} params, {m['macs'] / 1e6:.1f} MMACs dense, "
        f"{m['maskable_nodes']} maskable nodes" + ("" if m["batched"] else "; no batched form: one at a time"),
        f"data     {s.get('data') or '-'} on {s.get('device') or '-'}",
        f"progress {_progress(s)}, {state}",
        f"evals    {s['evaluations']} ({s['failed_evaluations']} failed), {s['train_images_per_eval']:,} training "
        f"images each{_replicates(s)}, {_num(s['eval_seconds_mean'], '.1f')} s each on average",
        noise_line(s["noise"]),
        "",
        f"{'gen':>4} {'nevals':>6} {'failed':>6} {'min':>7} {'avg':>7} {'max':>7}",
    ]
    for e in s["logbook"]:
        lines.append(
            f"{e['gen']:>4} {e['nevals']:>6} {e['failed']:>6} {_num(e['min']):>7} {_num(e['avg']):>7} "
            f"{_num(e['max']):>7}"
        )
    best = s["best"]
    if best:
        lines += [
            "",
            f"best     fitness {_num(best['fitness'])} at sparsity {best['sparsity']:.4f}: "
            f"{best['params']:,} params ({best['params'] / m['params']:.1%} of dense), "
            f"{best['macs'] / 1e6:.2f} MMACs ({best['macs'] / m['macs']:.1%})",
            f"mask     {best['mask']}",
        ]
    return "\n".join(lines)
