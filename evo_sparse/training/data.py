"""CIFAR-10 (and a synthetic stand-in) as uint8 tensors split into train / validation / test.

Where the data comes from, in order: a path given by the user (``--data``), ``$EVO_SPARSE_DATA``, default
places beside the project, then torchvision's download. JPEG copies are decoded once into a ``.npy`` cache.
Augmentation and normalisation work on whole batches, on whatever device the batch lives on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import socket
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from evo_sparse.foundations.errors import DataError

if TYPE_CHECKING:
    from evo_sparse.foundations.config import RunConfig

CLASSES: tuple[str, ...] = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MEAN = (0.4914, 0.4822, 0.4465)  # per channel, pixels scaled to 0-1, over the 50,000 training images
STD = (0.2470, 0.2435, 0.2616)
IMAGE_SHAPE = (3, 32, 32)
TRAIN_PER_CLASS = 5000  # module constants so tests can shrink them
TEST_PER_CLASS = 1000
SHIPPED_NAME = "cifar10-jpeg.tar.gz"
SHIPPED_SHA256 = "58c58e3af3ec7ed2054f439f35ad3c83dc1ab019f4af6037f60612ea098c8fa1"
ENV_DATA = "EVO_SPARSE_DATA"
ENV_CACHE = "EVO_SPARSE_CACHE"
TV_FOLDER = "cifar-10-batches-py"  # torchvision's fixed folder name
DOWNLOAD_TIMEOUT_S = 30.0
_HOW = f"pass --data PATH or set {ENV_DATA} to a CIFAR-10 copy (JPEG .tar.gz, its extracted folder, or {TV_FOLDER})"


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


def default_cache_dir() -> Path:
    """``$EVO_SPARSE_CACHE`` or ``~/.cache/evo-sparse``: decoded arrays and torchvision downloads go here."""
    return Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "evo-sparse").expanduser()


def _kind(p: Path) -> str | None:
    """'archive', 'jpeg-folder' or 'torchvision' when `p` (existing) is a CIFAR-10 copy, else None."""
    if p.is_file():
        return "archive" if p.name.endswith((".tar.gz", ".tgz")) else None
    if not p.is_dir():
        return None
    if (p / "train").is_dir() and (p / "test").is_dir():
        return "jpeg-folder"
    if (p.name == TV_FOLDER and (p / "data_batch_1").is_file()) or (p / TV_FOLDER).is_dir():
        return "torchvision"
    return None


def _checked(p: Path, origin: str) -> Path:
    """`p` made absolute (a torchvision copy named by its `cifar-10-batches-py` folder), or DataError naming it."""
    p = p.expanduser().resolve()
    if not p.exists():
        raise DataError(f"{origin} {p} does not exist; {_HOW}")
    if (kind := _kind(p)) is None:
        raise DataError(f"{origin} {p} is not a CIFAR-10 copy; {_HOW}")
    return p / TV_FOLDER if kind == "torchvision" and p.name != TV_FOLDER else p


def _default_candidates() -> list[Path]:
    """Places looked at when no path is given: beside the current directory and beside the package's folder."""
    out: list[Path] = []
    for base in (Path.cwd(), Path(__file__).resolve().parent.parent):
        for rel in ("../shared/data/" + SHIPPED_NAME, "data/" + SHIPPED_NAME, "data/" + TV_FOLDER):
            cand = (base / rel).resolve()
            if cand not in out:
                out.append(cand)
    out.append(default_cache_dir() / TV_FOLDER)
    return out


def _download(root: Path) -> Path:
    """torchvision's standard download into `root`; raises whatever torchvision raises when offline."""
    from torchvision.datasets import CIFAR10

    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # urllib has no timeout of its own: a dead network must fail fast
    try:
        CIFAR10(root=str(root), train=True, download=True)
        CIFAR10(root=str(root), train=False, download=True)
    finally:
        socket.setdefaulttimeout(old)
    return root / TV_FOLDER


def resolve_cifar10(path: str | None) -> Path:
    """Where CIFAR-10 is: `path`, else ``$EVO_SPARSE_DATA``, else default places, else a torchvision download.

    Returns an absolute path to a JPEG archive, a JPEG folder or a ``cifar-10-batches-py`` folder.
    Raises DataError (one line naming the path and how to fix it) when a given path is missing or not a copy,
    or when nothing is found and the download fails.
    """
    if path is not None and str(path) != "":
        return _checked(Path(path), "data path")
    if env := os.environ.get(ENV_DATA):
        return _checked(Path(env), f"{ENV_DATA} path")
    candidates = _default_candidates()
    for cand in candidates:
        if cand.exists() and _kind(cand) is not None:
            return _checked(cand, "default path")
    root = default_cache_dir()
    try:
        return _checked(_download(root), "downloaded copy")
    except Exception as e:  # offline, proxy, disk full...: all mean the same thing to the user
        looked = ", ".join(str(c) for c in candidates)
        reason = " ".join(str(e).split())[:120]
        raise DataError(f"CIFAR-10 not found (looked at {looked}; download to {root} failed: {reason}); {_HOW}") from e


def _verify_archive(p: Path) -> str:
    """The archive's SHA-256, checked against `<archive>.sha256` or, for the shipped copy, the known digest."""
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    digest = h.hexdigest()
    sidecar = p.with_name(p.name + ".sha256")
    if sidecar.is_file():
        words = sidecar.read_text().split()
        expected = words[0].lower() if words else ""
    elif p.name == SHIPPED_NAME:
        expected = SHIPPED_SHA256
    else:
        return digest
    if digest != expected:
        raise DataError(f"archive {p} is corrupt (SHA-256 {digest[:12]}... expected {expected[:12]}...); copy it again")
    return digest


def _place(name: str) -> tuple[str, str, str] | None:
    """(split, class, file) for a member path ending in `train|test/<class>/<file>.jpg`, else None."""
    parts = PurePosixPath(name).parts
    if len(parts) < 3 or parts[-3] not in ("train", "test") or parts[-2] not in CLASSES:
        return None
    return (parts[-3], parts[-2], parts[-1]) if parts[-1].lower().endswith((".jpg", ".jpeg")) else None


def _archive_members(p: Path) -> dict[tuple[str, str], list[tuple[str, bytes]]]:
    """JPEG bytes per (split, class), read in memory; unsafe members (links, devices, absolute, '..') rejected."""
    found: dict[tuple[str, str], list[tuple[str, bytes]]] = {}
    try:
        with tarfile.open(p, "r:*") as tar:
            for m in tar:
                parts = PurePosixPath(m.name).parts
                if m.name.startswith(("/", "\\")) or ".." in parts or not (m.isfile() or m.isdir()):
                    raise DataError(f"archive {p} holds an unsafe member {m.name!r}; use a clean copy of CIFAR-10")
                place = _place(m.name) if m.isfile() else None
                if place is not None:
                    found.setdefault(place[:2], []).append((place[2], tar.extractfile(m).read()))
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DataError(f"archive {p} cannot be read ({e}); copy it again") from e
    return found


def _folder_files(root: Path) -> list[Path]:
    """The JPEG files of an extracted copy: `root/train|test/<class>/*.jpg`, sorted."""
    files = [f for split in ("train", "test") for cls in CLASSES for f in (root / split / cls).glob("*")]
    return sorted(f for f in files if _place(f.relative_to(root).as_posix()) and f.is_file())


def _decode_jpeg(data: bytes, where: str) -> np.ndarray:
    """One JPEG to uint8 [32,32,3] with PIL (torchvision.io's decoder is ~30% faster but deprecated since 0.29)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.mode != "RGB" or img.size != (IMAGE_SHAPE[2], IMAGE_SHAPE[1]):
                raise DataError(f"{where} is {img.mode} {img.size[0]}x{img.size[1]}, expected 32x32 RGB; not CIFAR-10")
            return np.asarray(img)
    except (OSError, ValueError) as e:
        raise DataError(f"{where} is not a readable JPEG ({e}); copy the data set again") from e


def _decode_all(found: dict[tuple[str, str], list[tuple[str, bytes]]], where: str) -> dict[str, np.ndarray]:
    """Check per-class counts, then decode to train/test x (uint8 [N,3,32,32]) and y (int64 [N]), sorted by file."""
    out: dict[str, np.ndarray] = {}
    for split, per_class in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        for cls in CLASSES:
            n = len(found.get((split, cls), []))
            if n != per_class:
                raise DataError(f"{where}: {split}/{cls} has {n} images, expected {per_class}; use a complete copy")
        items = [(cls, name, data) for cls in CLASSES for name, data in sorted(found[(split, cls)])]
        hwc = np.stack([_decode_jpeg(data, f"{where}: {split}/{c}/{name}") for c, name, data in items])
        out[f"{split}_x"] = np.ascontiguousarray(hwc.transpose(0, 3, 1, 2))
        out[f"{split}_y"] = np.repeat(np.arange(len(CLASSES), dtype=np.int64), per_class)
    return out


def _read_torchvision(folder: Path) -> dict[str, np.ndarray]:
    """torchvision's own pickled batches (the only pickle load in the project: torchvision's standard format)."""
    from torchvision.datasets import CIFAR10

    out: dict[str, np.ndarray] = {}
    for split, train in (("train", True), ("test", False)):
        try:
            ds = CIFAR10(root=str(folder.parent), train=train, download=False)
        except Exception as e:  # torchvision raises RuntimeError for missing or md5-damaged batches
            raise DataError(f"{folder} is damaged or incomplete ({e}); download CIFAR-10 again") from e
        out[f"{split}_x"] = np.ascontiguousarray(np.asarray(ds.data, dtype=np.uint8).transpose(0, 3, 1, 2))
        out[f"{split}_y"] = np.asarray(ds.targets, dtype=np.int64)
    return out


def _valid(arrays: dict[str, np.ndarray]) -> bool:
    """Shapes, dtypes and class balance as CIFAR-10 has them (guards against a damaged cache)."""
    for split, per_class in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        x, y = arrays.get(f"{split}_x"), arrays.get(f"{split}_y")
        n = per_class * len(CLASSES)
        if x is None or y is None or x.dtype != np.uint8 or x.shape != (n, *IMAGE_SHAPE) or y.shape != (n,):
            return False
        if y.dtype != np.int64 or y.min() < 0 or y.max() >= len(CLASSES) or (np.bincount(y) != per_class).any():
            return False
    return True


_CACHE_KEYS = ("train_x", "train_y", "test_x", "test_y")


def _save_cache(folder: Path, arrays: dict[str, np.ndarray], log) -> None:
    """Each array via temp file in the same folder, flush, fsync, os.replace: a reader never sees half an array."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for k in _CACHE_KEYS:
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=k, suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    np.save(f, arrays[k], allow_pickle=False)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, folder / f"{k}.npy")
            finally:
                Path(tmp).unlink(missing_ok=True)
    except OSError as e:  # a read-only home should not stop a run; it only costs the decode next time
        log(f"warning: could not write the CIFAR-10 cache in {folder} ({e}); it will be decoded again next time")


def _load_jpeg_copy(src: Path, kind: str, cache_root: Path, log) -> dict[str, np.ndarray]:
    """Decoded arrays of a JPEG archive or folder, from the cache when it holds a valid copy."""
    if kind == "archive":
        key = _verify_archive(src)
    else:
        files = _folder_files(src)
        key = hashlib.sha256(f"{src}|{len(files)}|{sum(f.stat().st_size for f in files)}".encode()).hexdigest()
    folder = cache_root / f"cifar10-jpeg-{key[:16]}"
    try:
        arrays = {k: np.load(folder / f"{k}.npy", allow_pickle=False) for k in _CACHE_KEYS}
        if _valid(arrays):
            return arrays
        log(f"the CIFAR-10 cache in {folder} is damaged; rebuilding it")
    except (OSError, ValueError, EOFError):  # absent or unreadable: (re)build it
        pass
    t0 = time.perf_counter()
    if kind == "archive":
        found = _archive_members(src)
    else:
        found = {}
        for f in files:
            split, cls, name = _place(f.relative_to(src).as_posix())
            found.setdefault((split, cls), []).append((name, f.read_bytes()))
    arrays = _decode_all(found, str(src))
    _save_cache(folder, arrays, log)
    n = len(arrays["train_y"]) + len(arrays["test_y"])
    log(f"decoding CIFAR-10 JPEG copy once into cache {folder}: {n:,} images in {time.perf_counter() - t0:.1f} s")
    return arrays


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
    n_train = TRAIN_PER_CLASS * len(CLASSES)
    if not isinstance(val_size, int) or isinstance(val_size, bool) or not 0 < val_size < n_train or val_size % 10:
        raise DataError(f"val_size={val_size!r} must be a multiple of 10 between 10 and {n_train - 10}; change it")
    src = resolve_cifar10(path)
    kind = _kind(src)
    if kind == "torchvision":
        arrays, source, label = _read_torchvision(src), "cifar10", "torchvision"
        if not _valid(arrays):
            raise DataError(f"{src} does not hold CIFAR-10's 50,000 + 10,000 balanced images; download it again")
    else:
        cache_root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        arrays, source, label = _load_jpeg_copy(src, kind, cache_root, log), "cifar10-jpeg", "JPEG copy"
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
