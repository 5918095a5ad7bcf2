"""Node masks: exact-count sampling, a validated value type, a compact text form, gating and compaction.

A genome is a flat list of 0/1 over the units of a ``Layout`` (unit by unit, in the model's order). ``Mask`` is
its validated, immutable form. Sampling uses Python's ``random`` (DEAP draws from it too, so one seed and one saved
state cover both). Nothing here imports torch; gating and compaction work on the tensors they are given.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

ENCODING_PREFIX = "m1:"


class MaskError(ValueError):
    """A mask that does not fit its layout (wrong length, values other than 0/1, an empty unit, unknown unit)."""


@dataclass(frozen=True)
class Layout:
    """Names and channel counts of the maskable units, in genome order."""

    names: tuple[str, ...]
    sizes: tuple[int, ...]

    @classmethod
    def from_units(cls, units) -> Layout:
        return cls(tuple(u.name for u in units), tuple(u.channels for u in units))

    @property
    def size(self) -> int:
        return sum(self.sizes)

    def fingerprint(self) -> str:
        """Six hex digits naming the unit names and sizes, so a mask is never read against another network."""
        return hashlib.sha256(repr((self.names, self.sizes)).encode()).hexdigest()[:6]

    def spans(self) -> list[tuple[int, int]]:
        """[start, stop) of every unit in the flat genome."""
        out, start = [], 0
        for n in self.sizes:
            out.append((start, start + n))
            start += n
        return out

    def layerwise_counts(self, sparsity: float) -> tuple[int, ...]:
        """Channels kept per unit at ``sparsity``: round-half-up((1-s)·C), at least 1."""
        return tuple(max(1, math.floor((1.0 - sparsity) * c + 0.5)) for c in self.sizes)

    def global_count(self, sparsity: float) -> int:
        """Nodes kept in all at ``sparsity`` with global sampling (at least one per unit)."""
        return max(len(self.sizes), math.floor((1.0 - sparsity) * self.size + 0.5))


def sample(layout: Layout, sparsity: float, mode: str = "layerwise", rng: random.Random | None = None) -> list[int]:
    """A uniformly random genome with an exact number of kept nodes.

    layerwise: every unit keeps ``layout.layerwise_counts(s)`` channels, chosen uniformly within the unit.
    global: uniform over all valid masks, those with ``layout.global_count(s)`` kept nodes in all and at least one
    in every unit, by exact counting: each unit's count is drawn in turn with the exact probability of its share of
    the valid masks, then its kept channels uniformly within it. Every draw comes from ``rng``.
    """
    rng = rng or random  # default: the module-level generator that DEAP draws from too
    bits = [0] * layout.size
    if mode == "layerwise":
        for (start, stop), k in zip(layout.spans(), layout.layerwise_counts(sparsity)):
            for i in rng.sample(range(start, stop), k):
                bits[i] = 1
    elif mode == "global":
        counts = _global_unit_counts(layout.sizes, layout.global_count(sparsity), rng)
        for (start, stop), k in zip(layout.spans(), counts):
            for i in rng.sample(range(start, stop), k):
                bits[i] = 1
    else:
        raise MaskError(f"unknown sampling mode {mode!r}; use layerwise or global")
    return bits


@functools.lru_cache(maxsize=64)
def _completions(sizes: tuple[int, ...], total: int) -> tuple[tuple[int, tuple[int, ...]], ...]:
    """Rows i = 0..len(sizes) of N(i, r): the ways to keep r nodes in units i.. with each unit keeping at least one.

    Row i is ``(lo, values)`` with N(i, r) = values[r - lo]; it holds only the r that can remain after units ..i-1
    kept one to all of their nodes out of ``total`` (every other r is 0, or never asked for). N(len(sizes), 0) = 1.
    """
    u = len(sizes)
    before = [0, *itertools.accumulate(sizes)]  # nodes in units ..i-1
    rows: list[tuple[int, tuple[int, ...]]] = [(0, ())] * (u + 1)
    lo, hi = max(total - before[u], 0), min(total - u, 0)
    rows[u] = (0, (1,)) if lo <= 0 <= hi else (0, ())
    for i in range(u - 1, -1, -1):
        c, (next_lo, nxt) = sizes[i], rows[i + 1]
        next_hi = next_lo + len(nxt) - 1
        weights = [math.comb(c, k) for k in range(c + 1)]
        lo, hi = max(total - before[i], u - i), min(total - i, before[u] - before[i])
        values = []
        for r in range(lo, hi + 1):
            ks = range(max(1, r - next_hi), min(c, r - next_lo) + 1)
            values.append(sum(weights[k] * nxt[r - k - next_lo] for k in ks))
        rows[i] = (lo, tuple(values))
    return tuple(rows)


def _count(rows, i: int, r: int) -> int:
    """N(i, r) from ``_completions``' rows (0 outside the stored range)."""
    lo, values = rows[i]
    return values[r - lo] if 0 <= r - lo < len(values) else 0


def _count_weights(sizes: tuple[int, ...], total: int, i: int, r: int):
    """Yield (k, comb(C_i, k)·N(i+1, r-k)) for every count k > 0 unit i can keep of r remaining; they sum to N(i, r)."""
    next_lo, nxt = _completions(sizes, total)[i + 1]
    c = sizes[i]
    for k in range(max(1, r - (next_lo + len(nxt) - 1)), min(c, r - next_lo) + 1):
        yield k, math.comb(c, k) * nxt[r - k - next_lo]


def _global_unit_counts(sizes: tuple[int, ...], total: int, rng) -> list[int]:
    """Kept count per unit, drawn so the mask is uniform over valid masks with ``total`` kept (exact, no floats)."""
    rows = _completions(sizes, total)
    if _count(rows, 0, total) == 0:
        raise MaskError(f"no mask keeps {total} of {sum(sizes)} nodes with at least one in each of {len(sizes)} units")
    counts, r = [], total
    for i in range(len(sizes)):
        x = rng.randrange(_count(rows, i, r))  # walk the cumulative weights to the one holding x
        for k, w in _count_weights(sizes, total, i, r):
            x -= w
            if x < 0:
                counts.append(k)
                break
        r -= counts[-1]
    return counts


@dataclass(frozen=True)
class Mask:
    """A validated node mask: which channels of each unit are kept."""

    layout: Layout
    bits: tuple[int, ...]

    def __post_init__(self):
        if len(self.bits) != self.layout.size:
            raise MaskError(f"mask has {len(self.bits)} nodes but the network has {self.layout.size}")
        if any(b not in (0, 1) for b in self.bits):
            raise MaskError("mask values must be 0 or 1")
        bits = tuple(int(b) for b in self.bits)
        for name, (start, stop) in zip(self.layout.names, self.layout.spans()):
            if not any(bits[start:stop]):
                raise MaskError(f"mask removes every channel of unit {name!r}; keep at least one")
        object.__setattr__(self, "bits", bits)

    @classmethod
    def from_units(cls, layout: Layout, kept: dict[str, Sequence[int]]) -> Mask:
        """Build from ``{unit: kept channel indices}``; every unit must be named."""
        unknown = set(kept) - set(layout.names)
        if unknown or len(kept) != len(layout.names):
            raise MaskError(f"give kept channels for exactly the units {list(layout.names)}; got {sorted(kept)}")
        bits = [0] * layout.size
        for name, (start, stop) in zip(layout.names, layout.spans()):
            for i in kept[name]:
                if not 0 <= i < stop - start:
                    raise MaskError(f"channel {i} out of range for unit {name!r} ({stop - start} channels)")
                bits[start + i] = 1
        return cls(layout, tuple(bits))

    @property
    def sparsity(self) -> float:
        """Fraction of maskable nodes removed."""
        return 1.0 - sum(self.bits) / len(self.bits)

    def kept(self) -> dict[str, list[int]]:
        """Kept channel indices per unit."""
        return {
            n: [i for i in range(b - a) if self.bits[a + i]]
            for n, (a, b) in zip(self.layout.names, self.layout.spans())
        }

    def widths(self) -> dict[str, int]:
        """Kept channel count per unit: the widths of the compacted network."""
        return {n: sum(self.bits[a:b]) for n, (a, b) in zip(self.layout.names, self.layout.spans())}

    def encode(self) -> str:
        """Compact text form for JSON: ``m1:<layout fingerprint>:<base64 of the packed bits, MSB first>``."""
        packed = bytearray((len(self.bits) + 7) // 8)
        for i, b in enumerate(self.bits):
            if b:
                packed[i // 8] |= 0x80 >> (i % 8)
        body = base64.urlsafe_b64encode(bytes(packed)).decode().rstrip("=")
        return f"{ENCODING_PREFIX}{self.layout.fingerprint()}:{body}"

    @classmethod
    def decode(cls, layout: Layout, text: str) -> Mask:
        """Inverse of ``encode``; MaskError if the text is not a mask of this layout."""
        if not isinstance(text, str) or not text.startswith(ENCODING_PREFIX):
            raise MaskError(f"not an encoded mask (expected it to start with {ENCODING_PREFIX!r})")
        fingerprint, _, body = text[len(ENCODING_PREFIX) :].partition(":")
        if fingerprint != layout.fingerprint():
            raise MaskError(
                f"mask was made for another network (layout {fingerprint}, this one is "
                f"{layout.fingerprint()}); check --depth and --width"
            )
        try:
            packed = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except ValueError as exc:
            raise MaskError(f"encoded mask is damaged: {exc}") from None
        if len(packed) != (layout.size + 7) // 8:
            raise MaskError(f"encoded mask holds {len(packed) * 8} bits, the network needs {layout.size}")
        return cls(layout, tuple((packed[i // 8] >> (7 - i % 8)) & 1 for i in range(layout.size)))

    def gates(self, like) -> dict:
        """0/1 float vectors per unit, on ``like``'s device and dtype (for ``WideResNet.set_gates``)."""
        return {n: like.new_tensor(self.bits[a:b]) for n, (a, b) in zip(self.layout.names, self.layout.spans())}


def compact_state(state: dict, param_units: dict[str, tuple[str | None, str | None]], mask: Mask) -> dict:
    """Slice a full-width state dict down to the kept channels, following the model's ``param_units``.

    The result loads into the model built at ``mask.widths()``; it holds copies, never views of ``state``.
    """
    import torch  # here, not at the top: the search imports this module and knows no torch

    kept = mask.kept()
    out = {}
    for name, tensor in state.items():
        t = tensor
        for dim, unit in enumerate(param_units[name]):
            if unit is not None:
                t = t.index_select(dim, torch.tensor(kept[unit], dtype=torch.long, device=t.device))
        out[name] = t.clone() if t is tensor else t
    return out
