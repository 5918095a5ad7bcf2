"""Does rounding compacted widths up (to multiples of 4 or 8, the extra channels masked) make training faster?

WRN-16-2 at 80% node sparsity (exact widths 3/6/13/26), one thread, SGD steps of 64 random images, the variants
interleaved, median of 5 repeats. Run: python benchmarks/round_widths.py
"""

from __future__ import annotations

import math
import statistics
import time

import torch
import torch.nn.functional as F

from evo_sparse.models import wrn
from evo_sparse.models.masks import Layout


def step_seconds(widths: dict[str, int], x: torch.Tensor, y: torch.Tensor, steps: int = 40) -> float:
    model = wrn.WideResNet(16, 2, widths)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    start = time.perf_counter()
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    torch.set_num_threads(1)
    layout = Layout.from_units(wrn.units(16, 2))
    exact = dict(zip(layout.names, layout.layerwise_counts(0.8), strict=True))
    full = {u.name: u.channels for u in wrn.units(16, 2)}

    def rounded(k: int) -> dict[str, int]:
        return {n: min(full[n], math.ceil(c / k) * k) for n, c in exact.items()}

    variants = {"exact": exact, "multiples of 4": rounded(4), "multiples of 8": rounded(8)}
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(5):
        for name, widths in variants.items():
            times[name].append(step_seconds(widths, x, y))
    base = statistics.median(times["exact"])
    for name, widths in variants.items():
        med = statistics.median(times[name])
        kept = sorted(set(widths.values()))
        print(f"{name}: widths {kept}, {med * 1000:.1f} ms/step, speed vs exact {base / med:.2f}x")


if __name__ == "__main__":
    main()
