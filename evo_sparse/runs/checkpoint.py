"""The search checkpoint: plain JSON written after every generation, checked in full before it is used.

It holds the schema version, the settings it was computed with (the run's hashed settings), the next generation's
index, the number of journal rows it covers, the population and hall of fame (encoded masks with their records), the
logbook and every RNG state (Python's, which DEAP uses, numpy's, torch's CPU and CUDA ones). Restoring it and
continuing gives what an uninterrupted run gives. Anything that does not fit the run (another schema, other settings,
masks of another network, a population of another size, an unreadable RNG state) is refused with RunStateError.
"""

from __future__ import annotations

import base64
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from deap import creator, tools

from evo_sparse import __version__
from evo_sparse.foundations.config import RunConfig, flat_items
from evo_sparse.foundations.errors import RunStateError
from evo_sparse.foundations.storage import SCHEMA_VERSION, read_json, write_json
from evo_sparse.models.masks import Layout, Mask
from evo_sparse.search.algorithms import SearchState, assign
from evo_sparse.training.records import STATUSES


def check_schema(found: Any, path: Path, what: str) -> None:
    """RunStateError unless ``found`` is this version's schema number."""
    if found == SCHEMA_VERSION:
        return
    written = "has no schema version" if found is None else f"has schema {found!r}"
    raise RunStateError(
        f"{what} {path} {written}, this evo-sparse ({__version__}) reads schema {SCHEMA_VERSION}; "
        "finish that run with the version that wrote it, or start again in another --runs-dir"
    )


def differences(saved: dict[str, Any], wanted: dict[str, Any]) -> str:
    """'search.sparsity 0.8 there, 0.5 here; ...' for two ``RunConfig.hashed_items()`` (absent = default)."""
    defaults = flat_items(RunConfig())
    keys = sorted(set(saved) | set(wanted))
    parts = [
        f"{k} {saved.get(k, defaults.get(k))!r} there, {wanted.get(k, defaults.get(k))!r} here"
        for k in keys
        if saved.get(k, defaults.get(k)) != wanted.get(k, defaults.get(k))
    ]
    return "; ".join(parts) or "settings of an unknown shape"


# --- RNG states as plain data -----------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch CPU (and CUDA, when present) generator states as JSON-ready data."""
    version, words, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(words), gauss],
        "numpy": [name, keys.tolist(), pos, has_gauss, cached],
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [base64.b64encode(s.numpy().tobytes()).decode() for s in torch.cuda.get_rng_state_all()]
    return state


def _python_state(saved) -> tuple:
    version, words, gauss = saved
    return (version, tuple(words), gauss)


def _numpy_state(saved) -> tuple:
    name, keys, pos, has_gauss, cached = saved
    return (name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached)


def _bytes_tensor(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text, validate=True)), dtype=torch.uint8)


def _check_rng(saved: dict[str, Any]) -> None:
    """Raise (ValueError, TypeError, ...) unless every saved state loads: tried on fresh generators, not the globals."""
    random.Random().setstate(_python_state(saved["python"]))
    np.random.RandomState().set_state(_numpy_state(saved["numpy"]))
    torch.Generator().set_state(_bytes_tensor(saved["torch"]))
    for s in saved.get("cuda", []):
        _bytes_tensor(s)


def set_rng_state(saved: dict[str, Any]) -> None:
    """Restore the global generators from ``rng_state()``'s data (CUDA only when the device count matches)."""
    random.setstate(_python_state(saved["python"]))
    np.random.set_state(_numpy_state(saved["numpy"]))
    torch.set_rng_state(_bytes_tensor(saved["torch"]))
    cuda = saved.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([_bytes_tensor(s) for s in cuda])


# --- save, read, restore ----------------------------------------------------------------------------------------------


def save(
    path: Path, cfg: RunConfig, state: SearchState, layout: Layout, evaluations: int, kind: str = "builtin"
) -> None:
    """Write the state after a generation, atomically; ``evaluations`` is the number of journal rows it covers, ``kind``
    the algorithm's (``plugins``: an ask/tell run's generations are its asks, of any size and number)."""

    def entry(ind) -> dict[str, Any]:
        return {"mask": Mask(layout, tuple(ind)).encode(), "record": ind.record}

    write_json(
        path,
        {
            "schema": SCHEMA_VERSION,
            "settings": cfg.hashed_items(),
            "next_generation": state.generation,
            "finished": state.finished,
            "kind": kind,
            "evaluations": evaluations,
            "population": [entry(ind) for ind in state.population],
            "hall_of_fame": [entry(ind) for ind in state.hall_of_fame],
            "logbook": list(state.logbook),
            "rng": rng_state(),
        },
    )


def read(path: Path, cfg: RunConfig, layout: Layout) -> dict[str, Any]:
    """The checkpoint at ``path`` as plain data, checked against the run ``cfg``; RunStateError saying what is wrong."""
    ckpt = read_json(path, "checkpoint")
    if not isinstance(ckpt, dict):
        raise RunStateError(f"checkpoint {path} is damaged (not a JSON object); restore it or delete the run folder")
    check_schema(ckpt.get("schema"), path, "checkpoint")
    settings = ckpt.get("settings")
    if not isinstance(settings, dict) or settings != cfg.hashed_items():
        what = differences(settings, cfg.hashed_items()) if isinstance(settings, dict) else "no settings recorded"
        raise RunStateError(
            f"checkpoint {path} belongs to another run ({what}); put back this folder's own checkpoint "
            "or delete the run folder"
        )
    try:
        problem = _problem(ckpt, cfg, layout)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as exc:  # MaskError: ValueError
        problem = " ".join(str(exc).split()) or type(exc).__name__
        problem = f"missing {problem}" if isinstance(exc, KeyError) else problem
    if problem:
        raise RunStateError(f"checkpoint {path} is damaged ({problem}); restore it or delete the run folder")
    return ckpt


def finished(ckpt: dict[str, Any], cfg: RunConfig) -> bool:
    """Whether a checkpoint read by ``read`` is of a finished run: the budget spent, or every generation done (an
    ask/tell run has no generations: its asks go on until the budget is spent)."""
    if ckpt.get("finished"):
        return True
    return ckpt.get("kind") != "ask/tell" and ckpt["next_generation"] >= cfg.search.generations


def _problem(ckpt: dict[str, Any], cfg: RunConfig, layout: Layout) -> str | None:
    s = cfg.search
    gen, evaluations = ckpt["next_generation"], ckpt["evaluations"]
    asks = ckpt.get("kind") == "ask/tell"  # any number of asks, of any size
    if not isinstance(gen, int) or not 1 <= gen <= (gen if asks else s.generations):
        return f"next_generation {gen!r} is not in 1..{s.generations}"
    size, whole = len(ckpt["population"]), not (asks or ckpt.get("finished"))  # the budget may cut the last one
    if (size != s.population) if whole else (size > s.population and not asks):
        return f"its population holds {size} masks, the run's --pop is {s.population}"
    if len(ckpt["hall_of_fame"]) > s.survivors:
        return f"its hall of fame holds {len(ckpt['hall_of_fame'])} masks, more than --keep {s.survivors}"
    for entry in ckpt["population"] + ckpt["hall_of_fame"]:
        Mask.decode(layout, entry["mask"])
        record = entry["record"]
        fitness = record["fitness"]
        if record["status"] not in STATUSES or not (fitness is None or isinstance(fitness, (int, float))):
            return f"a record has status {record['status']!r} and fitness {fitness!r}"
    if [e["gen"] for e in ckpt["logbook"]] != list(range(gen)):
        return f"its logbook does not list generations 0..{gen - 1}"
    if not isinstance(evaluations, int) or sum(e["nevals"] for e in ckpt["logbook"]) != evaluations:
        return f"its evaluation count {evaluations!r} disagrees with its logbook"
    _check_rng(ckpt["rng"])
    return None


def restore(ckpt: dict[str, Any], layout: Layout, hof_size: int) -> SearchState:
    """The search state a checkpoint read by ``read`` holds (the RNG states are restored by ``set_rng_state``)."""

    def individual(entry):
        ind = creator.MaskIndividual(Mask.decode(layout, entry["mask"]).bits)
        assign(ind, entry["record"])
        return ind

    state = SearchState(
        generation=ckpt["next_generation"],
        finished=bool(ckpt.get("finished")),
        population=[individual(e) for e in ckpt["population"]],
    )
    state.hall_of_fame = tools.HallOfFame(hof_size)
    for ind in map(individual, ckpt["hall_of_fame"]):  # stored best first; keys are kept in ascending order
        state.hall_of_fame.items.append(ind)
        state.hall_of_fame.keys.insert(0, ind.fitness)
    for entry in ckpt["logbook"]:
        state.logbook.record(**entry)
    return state
