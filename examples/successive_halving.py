"""Successive halving over node masks: an ask/tell plug-in for evo-sparse (copy it and make it yours).

The multi-fidelity idea of Hyperband and ASHA (Jamieson & Talwalkar 2016; Li et al. 2018): score many random masks
with a short training, promote the best 1/eta to a training eta times longer, and so on, until the last rung trains
at the run's own length (``--train-images``), the fitness every algorithm reports. A bracket of ``eta**(rungs-1)``
masks costs ``rungs`` trainings of the run's length, so at an equal budget it screens ``eta**(rungs-1) / rungs`` times
as many masks as Random Search, each first judged on a shorter, noisier training.

    evo-sparse run --preset smoke --algorithm examples.successive_halving:SuccessiveHalving --algo-opt eta=3
    evo-sparse compare --preset smoke --algorithms weedout,examples.successive_halving:SuccessiveHalving --runs 3
"""

from __future__ import annotations


class SuccessiveHalving:
    """Successive halving: many masks on a short training, the best 1/eta promoted to a longer one, rung by rung."""

    options = {"eta": 3, "rungs": 3}  # --algo-opt eta=2 --algo-opt rungs=4
    version = "1"

    @staticmethod
    def check_options(options: dict) -> None:
        if options["eta"] < 2:
            raise ValueError(f"eta must be at least 2 (the share promoted is 1/eta), not {options['eta']}")
        if options["rungs"] < 1:
            raise ValueError(f"rungs must be at least 1 (1 = plain Random Search), not {options['rungs']}")

    def __init__(self, toolbox):
        self.toolbox = toolbox
        self.eta, self.rungs = toolbox.options["eta"], toolbox.options["rungs"]
        full, batch = toolbox.train_images, toolbox.batch_size
        # training length per rung, shortest first; the last is the run's own (its fitness is comparable)
        self.lengths = [max(batch, full // self.eta ** (self.rungs - 1 - r)) for r in range(self.rungs)]
        self.rung, self.masks = 0, []

    def ask(self) -> list:
        if self.rung == 0:  # a new bracket: fresh random masks, drawn from the run's seeded generator
            self.masks = [self.toolbox.sample() for _ in range(self.eta ** (self.rungs - 1))]
        return [(mask, self.lengths[self.rung]) for mask in self.masks]

    def tell(self, proposals: list, fitnesses: list) -> None:
        ranked = sorted(
            range(len(proposals)), key=lambda i: (fitnesses[i] is None, -(fitnesses[i] or 0.0), i)
        )  # best first; failed trainings last
        keep = max(1, len(proposals) // self.eta)
        self.masks = [proposals[i][0] for i in ranked[:keep]]
        self.rung = (self.rung + 1) % self.rungs
