"""CIFAR-10 (and a synthetic stand-in) as uint8 tensors split into train / validation / test (``load_splits``).

Finding, checking and decoding the files is ``cifar10``'s. Augmentation and normalisation work on whole batches, on
whatever device the batch lives on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from evo_sparse.foundations.errors import DataError
from evo_sparse.training import cifar10
from evo_sparse.training.cifar10 import CLASSES, IMAGE_SHAPE

if TYPE_CHECKING:
    from evo_sparse.foundations.config import RunConfig

MEAN = (0.4914, 0.4822, 0.4465)  # per channel, pixels scaled to 0-1, over the 50,000 training images
STD = (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class Splits:
    """uint8 images [N,3,32,32] and int64 labels [N] for train / validation / test, plus where they came from."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    source: str  # "cifar10-jpeg" | "cifar10" | "synthetic"
    description: str  # human readable, e.g. "CIFAR-10, JPEG copy (/abs/path/cifar10-jpeg.tar.gz)"

    def to(self, device: torch.device | str) -> Splits:
        """The same splits with every tensor moved to `device` (data resident on the device, as in airbench)."""
        names = [f.name for f in dataclasses.fields(self) if f.name.endswith(("_x", "_y"))]
        return dataclasses.replace(self, **{n: getattr(self, n).to(device) for n in names})

    def validation(self, n: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` validation images in class-interleaved order (0 = all, in stored order).

        The stored split is sorted by class, so a plain ``[:n]`` would hold one or two classes only."""
        if not n or n >= len(self.val_y):
            return self.val_x, self.val_y
        idx = balanced_order(self.val_y)[:n].to(self.val_y.device)
        return self.val_x[idx], self.val_y[idx]


def balanced_order(labels: torch.Tensor) -> torch.Tensor:
    """Indices that visit the classes in turn (1st of each class, then 2nd of each, ...), keeping order within one."""
    y = labels.cpu()
    rank = torch.empty_like(y)
    for c in y.unique():
        where = (y == c).nonzero().flatten()
        rank[where] = torch.arange(len(where))
    return torch.argsort(rank * (int(y.max()) + 1) + y, stable=True)


def load_cifar10(
    path: str | None = None,
    *,
    val_size: int = 5000,
    split_seed: int = 0,
    cache_dir: str | Path | None = None,
    log=print,
) -> Splits:
    """CIFAR-10 as uint8 Splits on the CPU: train (50,000 - val_size), validation (val_size), test (10,000).

    The validation images come from the training split, val_size/10 per class, fixed by `split_seed`.
    JPEG copies are checked (SHA-256, per-class counts, 32x32 RGB) and decoded once into `cache_dir`
    (default ``$EVO_SPARSE_CACHE`` or ``~/.cache/evo-sparse``). Raises DataError for anything wrong with the data.
    """
    n_train = cifar10.TRAIN_PER_CLASS * len(CLASSES)
    if not isinstance(val_size, int) or isinstance(val_size, bool) or not 0 < val_size < n_train or val_size % 10:
        raise DataError(f"val_size={val_size!r} must be a multiple of 10 between 10 and {n_train - 10}; change it")
    src, arrays, source, label = cifar10.read_arrays(path, cache_dir, log)
    rng, y, k = np.random.default_rng(split_seed), arrays["train_y"], val_size // len(CLASSES)
    val = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:k] for c in range(len(CLASSES))])  # k per class
    is_val = np.zeros(len(y), dtype=bool)
    is_val[val] = True
    ti, vi = torch.from_numpy(np.flatnonzero(~is_val)), torch.from_numpy(np.flatnonzero(is_val))  # both sorted
    x, y = torch.from_numpy(arrays["train_x"]), torch.from_numpy(y)
    return Splits(
        train_x=x[ti], train_y=y[ti], val_x=x[vi], val_y=y[vi],
        test_x=torch.from_numpy(arrays["test_x"]), test_y=torch.from_numpy(arrays["test_y"]),
        source=source, description=f"CIFAR-10, {label} ({src})",
    )  # fmt: skip


def make_synthetic(*, seed: int = 0, train_size: int = 1024, val_size: int = 256, test_size: int = 256) -> Splits:
    """A seeded, learnable 10-class stand-in for CIFAR-10 (uint8 [N,3,32,32]) for tests.

    Each class is a fixed smooth pattern (low-frequency cosines per channel); an image is its class's pattern
    blended with up to 55% of another class's, shifted up to 4 pixels, with contrast jitter and pixel noise. A small
    CNN reaches ~0.65-0.75 validation accuracy in 300 steps; the ceiling is below 100% (blends past 50% mislead).
    Classes are balanced (counts differ by at most one). Same seed, same tensors.
    """
    sizes = (train_size, val_size, test_size)
    if any(not isinstance(n, int) or n < 1 for n in sizes):
        raise ValueError(f"synthetic split sizes must be positive integers, got {sizes}")
    rng = np.random.default_rng(seed)
    n_cls, (c, h, w) = len(CLASSES), IMAGE_SHAPE
    yy, xx = np.meshgrid(np.arange(h) / h, np.arange(w) / w, indexing="ij")
    freq = rng.integers(0, 3, size=(n_cls + 1, c, 4, 2))
    phase, amp = rng.uniform(0, 2 * np.pi, (n_cls + 1, c, 4)), rng.uniform(0.5, 1.0, (n_cls + 1, c, 4))
    arg = 2 * np.pi * (freq[..., 0, None, None] * yy + freq[..., 1, None, None] * xx) + phase[..., None, None]
    protos = (amp[..., None, None] * np.cos(arg)).sum(axis=2)  # [classes, C, H, W], smooth and periodic
    protos /= protos.std(axis=(1, 2, 3), keepdims=True)
    protos = 0.4 * protos[n_cls] + 0.6 * protos[:n_cls]  # a shared part makes classes look alike
    out = []
    for n in sizes:
        y = rng.permutation(np.arange(n) % n_cls)
        shift = rng.integers(-4, 5, size=(n, 2))
        other = (y + rng.integers(1, n_cls, size=n)) % n_cls
        mix = rng.uniform(0.0, 0.55, size=(n, 1, 1, 1))  # above 0.5 the other class dominates: a ceiling < 100%
        imgs = (1 - mix) * protos[y] + mix * protos[other]
        imgs = np.stack([np.roll(im, (dy, dx), axis=(1, 2)) for im, (dy, dx) in zip(imgs, shift, strict=True)])
        imgs = imgs * rng.uniform(0.6, 1.4, (n, 1, 1, 1)) + rng.normal(0.0, 1.2, imgs.shape)
        x = np.clip(128 + 32 * imgs, 0, 255).astype(np.uint8)
        out += [torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))]
    return Splits(*out, source="synthetic", description=f"synthetic (seed {seed}, {train_size}/{val_size}/{test_size})")


def augment_batch(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random 32x32 crop of the 4-pixel zero-padded image and random horizontal flip, per image, in one gather.

    `x` is uint8 or float [B,C,H,W] on any device; randomness comes only from `generator` (on x's device, or a
    CPU generator whose draws are moved). Returns a new tensor of x's dtype, shape and device.
    """
    if x.dim() != 4:
        raise ValueError(f"augment_batch expects [B,C,H,W], got shape {tuple(x.shape)}")
    b, c, h, w, pad = *x.shape, 4
    gdev = generator.device
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=gdev).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=gdev).to(x.device)
    flip = (torch.rand((b,), generator=generator, device=gdev) < 0.5).to(x.device)
    padded = x.new_zeros((b, c, h + 2 * pad, w + 2 * pad))
    padded[:, :, pad : pad + h, pad : pad + w] = x
    ar_h, ar_w = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    rows = dy[:, None] + ar_h  # [B,H]
    cols = dx[:, None] + torch.where(flip[:, None], w - 1 - ar_w, ar_w)  # flip folded into the column index
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


def normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 [B,3,H,W] -> float32 (x/255 - MEAN) / STD, on x's device."""
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"normalize expects uint8 [B,3,H,W], got {x.dtype} {tuple(x.shape)}")
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
    return (x.float() / 255.0 - mean) / std


def load_splits(cfg: RunConfig, log: Callable[[str], None]):
    """The train / validation / test splits ``cfg.data`` names: synthetic, or CIFAR-10 decoded once into a cache."""
    if cfg.data.dataset == "synthetic":
        return make_synthetic(
            seed=cfg.data.split_seed,
            train_size=cfg.data.synthetic_train,
            val_size=cfg.data.val_size,
            test_size=cfg.data.val_size,
        )
    return load_cifar10(cfg.data.path, val_size=cfg.data.val_size, split_seed=cfg.data.split_seed, log=log)
