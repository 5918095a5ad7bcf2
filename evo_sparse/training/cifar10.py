"""The CIFAR-10 files: where they are, whether they are whole, and their decoded arrays (cached once).

Where the data comes from, in order: a path given by the user (``--data``), ``$EVO_SPARSE_DATA``, default places
beside the project, then torchvision's download. JPEG copies are checked (SHA-256, per-class counts, 32x32 RGB) and
decoded once into a ``.npy`` cache. Raises DataError, in one line, for anything wrong with the data.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import tarfile
import time
import zlib
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from evo_sparse.foundations.errors import DataError
from evo_sparse.foundations.storage import temp_file

CLASSES: tuple[str, ...] = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
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
            fd, tmp = temp_file(folder, prefix=k)
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


def read_arrays(path: str | None, cache_dir: str | Path | None, log) -> tuple[Path, dict[str, np.ndarray], str, str]:
    """(where, {train_x, train_y, test_x, test_y} uint8/int64 arrays, source name, label) of the CIFAR-10 copy that
    ``path`` (or the default places) names; JPEG copies come from the cache in ``cache_dir`` when it is valid."""
    src = resolve_cifar10(path)
    kind = _kind(src)
    if kind == "torchvision":
        arrays = _read_torchvision(src)
        if not _valid(arrays):
            raise DataError(f"{src} does not hold CIFAR-10's 50,000 + 10,000 balanced images; download it again")
        return src, arrays, "cifar10", "torchvision"
    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return src, _load_jpeg_copy(src, kind, cache_root, log), "cifar10-jpeg", "JPEG copy"
