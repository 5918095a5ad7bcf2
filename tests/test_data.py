"""Tests for evo_sparse.training.data: finding, checking, caching and splitting CIFAR-10, synthetic data, batch ops.

A tiny JPEG copy (3 train + 2 test images per class) is built in tmp_path; the expected per-class counts are
shrunk to match. Nothing is downloaded: torchvision's download is replaced by a function that fails.
"""

import hashlib
import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import evo_sparse.training.cifar10 as cifar10
import evo_sparse.training.data as data
from evo_sparse.foundations.errors import DataError

N_TRAIN, N_TEST = 3, 2  # images per class in the tiny copy
REAL_ARCHIVE = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No env var, a private cache, no default places, and a download that fails like an offline machine."""
    monkeypatch.delenv(cifar10.ENV_DATA, raising=False)
    monkeypatch.setenv(cifar10.ENV_CACHE, str(tmp_path / "default-cache"))

    def no_download(root):
        raise OSError("urlopen error [Errno -2] Name or service not known")

    monkeypatch.setattr(cifar10, "_download", no_download)
    monkeypatch.setattr(cifar10, "_default_candidates", lambda: [tmp_path / "nowhere" / "cifar10-jpeg.tar.gz"])


@pytest.fixture
def small(monkeypatch):
    monkeypatch.setattr(cifar10, "TRAIN_PER_CLASS", N_TRAIN)
    monkeypatch.setattr(cifar10, "TEST_PER_CLASS", N_TEST)


def write_tree(root: Path) -> Path:
    """train/<class>/NNNN.jpg and test/<class>/NNNN.jpg; red encodes the class, green the index (flat colours)."""
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        for c, cls in enumerate(data.CLASSES):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                colour = (20 * c + 10, 60 * i + 30 + (100 if split == "test" else 0), 128)
                Image.new("RGB", (32, 32), colour).save(root / split / cls / f"{i:04d}.jpg", quality=95)
    return root


def write_archive(tmp_path: Path, name: str = "mini.tar.gz", extra: list[tarfile.TarInfo] = ()) -> Path:
    tree = write_tree(tmp_path / "tree")
    archive = tmp_path / name
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree / "train", arcname="train")
        tar.add(tree / "test", arcname="test")
        for info in extra:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return archive


def count_decodes(monkeypatch) -> list[int]:
    calls = [0]
    real = cifar10._decode_jpeg

    def counting(blob, where):
        calls[0] += 1
        return real(blob, where)

    monkeypatch.setattr(cifar10, "_decode_jpeg", counting)
    return calls


def test_archive_decoded_once_then_cached(small, tmp_path, monkeypatch):
    archive = write_archive(tmp_path)
    calls, logs = count_decodes(monkeypatch), []
    first = data.load_cifar10(str(archive), val_size=10, cache_dir=tmp_path / "cache", log=logs.append)
    assert calls[0] == 10 * (N_TRAIN + N_TEST)
    assert len(logs) == 1 and "decoding CIFAR-10 JPEG copy once into cache" in logs[0]
    second = data.load_cifar10(str(archive), val_size=10, cache_dir=tmp_path / "cache", log=logs.append)
    assert calls[0] == 10 * (N_TRAIN + N_TEST) and len(logs) == 1  # no second decode, no second message
    assert torch.equal(first.train_x, second.train_x) and torch.equal(first.test_x, second.test_x)
    assert first.source == "cifar10-jpeg" and str(archive) in first.description and "JPEG" in first.description
    assert list(first.train_x.shape) == [20, 3, 32, 32] and first.train_x.dtype == torch.uint8
    assert list(first.test_x.shape) == [20, 3, 32, 32] and first.test_y.dtype == torch.int64
    # labels follow CLASSES order: the red channel was written as 20 * class + 10 (JPEG moves it by a few levels)
    for x, y in ((first.train_x, first.train_y), (first.val_x, first.val_y), (first.test_x, first.test_y)):
        assert (x[:, 0].float().mean((1, 2)) - (20 * y + 10)).abs().max() < 4
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_damaged_cache_is_rebuilt(small, tmp_path, monkeypatch):
    archive = write_archive(tmp_path)
    good = data.load_cifar10(str(archive), val_size=10, cache_dir=tmp_path / "cache", log=lambda m: None)
    (cached,) = (tmp_path / "cache").rglob("train_x.npy")
    np.save(cached, np.zeros((7, 3, 32, 32), np.uint8))
    calls, logs = count_decodes(monkeypatch), []
    again = data.load_cifar10(str(archive), val_size=10, cache_dir=tmp_path / "cache", log=logs.append)
    assert calls[0] == 10 * (N_TRAIN + N_TEST) and any("damaged" in m for m in logs)
    assert torch.equal(good.train_x, again.train_x)


def test_default_cache_dir_from_env(small, tmp_path):
    archive = write_archive(tmp_path)
    data.load_cifar10(str(archive), val_size=10, log=lambda m: None)
    assert len(list((tmp_path / "default-cache").rglob("*.npy"))) == 4


def test_extracted_folder_matches_archive(small, tmp_path):
    archive = write_archive(tmp_path)
    a = data.load_cifar10(str(archive), val_size=10, cache_dir=tmp_path / "c1", log=lambda m: None)
    f = data.load_cifar10(str(tmp_path / "tree"), val_size=10, cache_dir=tmp_path / "c2", log=lambda m: None)
    assert torch.equal(a.train_x, f.train_x) and torch.equal(a.val_y, f.val_y) and torch.equal(a.test_x, f.test_x)
    assert f.source == "cifar10-jpeg" and str(tmp_path / "tree") in f.description


def test_missing_image_names_split_and_class(small, tmp_path):
    tree = write_tree(tmp_path / "tree")
    (tree / "train" / "cat" / "0001.jpg").unlink()
    with pytest.raises(DataError, match="train/cat has 2 images, expected 3"):
        data.load_cifar10(str(tree), val_size=10, cache_dir=tmp_path / "cache", log=lambda m: None)


def test_wrong_image_size_rejected(small, tmp_path):
    tree = write_tree(tmp_path / "tree")
    Image.new("RGB", (30, 32)).save(tree / "test" / "dog" / "0000.jpg")
    with pytest.raises(DataError, match=r"test/dog/0000.jpg .*32x32"):
        data.load_cifar10(str(tree), val_size=10, cache_dir=tmp_path / "cache", log=lambda m: None)


def test_sidecar_checksum(small, tmp_path):
    archive = write_archive(tmp_path)
    sidecar = archive.with_name(archive.name + ".sha256")
    sidecar.write_text("0" * 64 + "  mini.tar.gz\n")
    with pytest.raises(DataError, match="corrupt"):
        data.load_cifar10(str(archive), val_size=10, cache_dir=tmp_path / "cache", log=lambda m: None)
    sidecar.write_text(hashlib.sha256(archive.read_bytes()).hexdigest() + "  mini.tar.gz\n")
    assert data.load_cifar10(str(archive), val_size=10, cache_dir=tmp_path / "cache", log=lambda m: None)


def test_shipped_name_checked_against_known_digest(small, tmp_path):
    archive = write_archive(tmp_path, name=cifar10.SHIPPED_NAME)  # right name, wrong bytes, no sidecar
    with pytest.raises(DataError, match="corrupt"):
        data.load_cifar10(str(archive), val_size=10, cache_dir=tmp_path / "cache", log=lambda m: None)


def test_truncated_archive(small, tmp_path):
    archive = write_archive(tmp_path)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DataError, match="cannot be read"):
        data.load_cifar10(str(archive), val_size=10, cache_dir=tmp_path / "cache", log=lambda m: None)


def _member(name: str, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, (3 if kind == tarfile.REGTYPE else 0)
    if kind == tarfile.SYMTYPE:
        info.linkname = "/etc/passwd"
    return info


@pytest.mark.parametrize(
    "member",
    [_member("../evil.jpg"), _member("/abs/evil.jpg"), _member("train/cat/9999.jpg", tarfile.SYMTYPE)],
    ids=["dotdot", "absolute", "symlink"],
)
def test_unsafe_member_rejected(small, tmp_path, member):
    archive = write_archive(tmp_path, extra=[member])
    with pytest.raises(DataError, match="unsafe member"):
        data.load_cifar10(str(archive), val_size=10, cache_dir=tmp_path / "cache", log=lambda m: None)
    assert not (tmp_path / "evil.jpg").exists()


def test_split_is_stratified_disjoint_and_seeded(small, tmp_path):
    archive = write_archive(tmp_path)
    kw = dict(val_size=20, cache_dir=tmp_path / "cache", log=lambda m: None)
    s = data.load_cifar10(str(archive), split_seed=0, **kw)
    assert len(s.train_y) == 10 and len(s.val_y) == 20 and len(s.test_y) == 20
    assert s.val_y.bincount(minlength=10).tolist() == [2] * 10
    assert s.train_y.bincount(minlength=10).tolist() == [1] * 10
    rows = lambda x: {bytes(img.numpy()) for img in x}  # noqa: E731 - every tiny image has its own colour
    assert not rows(s.train_x) & rows(s.val_x) and len(rows(s.train_x) | rows(s.val_x)) == 30
    again = data.load_cifar10(str(archive), split_seed=0, **kw)
    assert torch.equal(s.val_x, again.val_x) and torch.equal(s.train_y, again.train_y)
    others = [data.load_cifar10(str(archive), split_seed=seed, **kw).val_x for seed in (1, 2, 3)]
    assert any(not torch.equal(s.val_x, o) for o in others)
    assert torch.equal(s.test_x, data.load_cifar10(str(archive), split_seed=1, **kw).test_x)  # test split untouched


@pytest.mark.parametrize("val_size", [0, 15, 30, -10, 10.0, True])
def test_bad_val_size(small, tmp_path, val_size):
    with pytest.raises(DataError, match="val_size"):
        data.load_cifar10(str(tmp_path / "does-not-matter"), val_size=val_size)


def test_env_var_lookup_and_precedence(small, tmp_path, monkeypatch):
    archive = write_archive(tmp_path)
    monkeypatch.setenv(cifar10.ENV_DATA, str(archive))
    assert cifar10.resolve_cifar10(None) == archive.resolve()
    assert cifar10.resolve_cifar10(str(tmp_path / "tree")) == (tmp_path / "tree").resolve()  # the argument wins
    monkeypatch.setenv(cifar10.ENV_DATA, str(tmp_path / "gone.tar.gz"))
    with pytest.raises(DataError, match=cifar10.ENV_DATA):
        cifar10.resolve_cifar10(None)


def test_default_places_are_used(tmp_path, monkeypatch):
    archive = write_archive(tmp_path)
    monkeypatch.setattr(cifar10, "_default_candidates", lambda: [tmp_path / "absent.tar.gz", archive])
    assert cifar10.resolve_cifar10(None) == archive.resolve()


def test_missing_path_message(tmp_path):
    missing = tmp_path / "no" / "cifar.tar.gz"
    with pytest.raises(DataError) as err:
        cifar10.resolve_cifar10(str(missing))
    message = str(err.value)
    assert str(missing) in message and "--data" in message and "\n" not in message


def test_path_that_is_not_a_copy(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("hi")
    for bad in (tmp_path / "empty", tmp_path / "notes.txt"):
        with pytest.raises(DataError, match="not a CIFAR-10 copy"):
            cifar10.resolve_cifar10(str(bad))


def test_nothing_found_and_offline_is_one_line(tmp_path):
    with pytest.raises(DataError) as err:
        cifar10.resolve_cifar10(None)
    message = str(err.value)
    assert "\n" not in message and "--data" in message and cifar10.ENV_DATA in message
    assert str(tmp_path / "nowhere") in message and "download" in message


def test_torchvision_folder_found_and_checked(tmp_path):
    batches = tmp_path / "root" / cifar10.TV_FOLDER
    batches.mkdir(parents=True)
    (batches / "data_batch_1").write_bytes(b"not a real batch")
    assert cifar10.resolve_cifar10(str(tmp_path / "root")) == batches.resolve()
    assert cifar10.resolve_cifar10(str(batches)) == batches.resolve()
    with pytest.raises(DataError, match="damaged or incomplete"):  # torchvision's md5 check fails before unpickling
        data.load_cifar10(str(batches))


def test_torchvision_folder_loads(small, tmp_path, monkeypatch):
    """torchvision's format (written here with pickle, as torchvision ships it); its md5 check is bypassed."""
    import pickle

    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    batches = tmp_path / cifar10.TV_FOLDER
    batches.mkdir()
    rng = np.random.default_rng(0)
    train_x = rng.integers(0, 256, (10 * N_TRAIN, 3, 32, 32), dtype=np.uint8)
    train_y = np.arange(10 * N_TRAIN) % 10
    test_x = rng.integers(0, 256, (10 * N_TEST, 3, 32, 32), dtype=np.uint8)
    files = {f"data_batch_{i + 1}": (train_x[i::5], train_y[i::5]) for i in range(5)}
    files["test_batch"] = (test_x, np.arange(10 * N_TEST) % 10)
    for name, (x, y) in files.items():
        (batches / name).write_bytes(pickle.dumps({"data": x.reshape(len(x), -1), "labels": y.tolist()}))
    (batches / "batches.meta").write_bytes(pickle.dumps({"label_names": list(data.CLASSES)}))
    s = data.load_cifar10(str(tmp_path), val_size=10, log=lambda m: None)
    assert s.source == "cifar10" and "torchvision" in s.description
    assert torch.equal(s.test_x, torch.from_numpy(test_x)) and s.val_y.bincount().tolist() == [1] * 10
    assert len(s.train_y) == 20 and {bytes(i.numpy()) for i in s.train_x} <= {bytes(i) for i in train_x}


def _reference_views(img: torch.Tensor) -> list[torch.Tensor]:
    """Every crop of the 4-pixel zero-padded image, flipped and not: what augment_batch may return."""
    padded = torch.nn.functional.pad(img, (4, 4, 4, 4))
    crops = [padded[:, dy : dy + 32, dx : dx + 32] for dy in range(9) for dx in range(9)]
    return crops + [c.flip(-1) for c in crops]


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_augment_batch_crops_and_flips(dtype):
    x = torch.randint(1, 256, (48, 3, 32, 32), generator=torch.Generator().manual_seed(0)).to(dtype)
    out = data.augment_batch(x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == dtype
    assert torch.equal(out, data.augment_batch(x, torch.Generator().manual_seed(1)))
    assert not torch.equal(out, data.augment_batch(x, torch.Generator().manual_seed(2)))
    flipped = shifted = 0
    for img, aug in zip(x, out, strict=True):
        views = _reference_views(img)
        match = [i for i, v in enumerate(views) if torch.equal(v, aug)]
        assert match, "an augmented image is not a padded crop (optionally flipped) of its input"
        flipped += match[0] >= 81
        shifted += match[0] % 81 != 40  # 40 = (dy, dx) = (4, 4): no shift
    assert 0 < flipped < len(x) and shifted > len(x) // 2
    assert (out == 0).any()  # zero borders from padding: the inputs hold no zeros


def test_augment_batch_rejects_wrong_rank():
    with pytest.raises(ValueError):
        data.augment_batch(torch.zeros(3, 32, 32), torch.Generator())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_augment_batch_on_cuda_matches_cpu_with_cpu_generator():
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    cpu = data.augment_batch(x, torch.Generator().manual_seed(3))
    gpu = data.augment_batch(x.cuda(), torch.Generator().manual_seed(3))
    assert gpu.device.type == "cuda" and torch.equal(cpu, gpu.cpu())
    assert data.augment_batch(x.cuda(), torch.Generator("cuda").manual_seed(3)).device.type == "cuda"


def test_normalize():
    mean_pixel = torch.tensor([round(m * 255) for m in data.MEAN], dtype=torch.uint8).view(1, 3, 1, 1)
    x = mean_pixel.expand(2, 3, 8, 8).contiguous()
    out = data.normalize(x)
    assert out.dtype == torch.float32 and out.shape == x.shape and out.abs().max() < 0.01
    white = data.normalize(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8))
    expected = (1 - torch.tensor(data.MEAN)) / torch.tensor(data.STD)
    assert torch.allclose(white[0, :, 0, 0], expected)
    with pytest.raises(ValueError):
        data.normalize(x.float())


def test_synthetic_is_deterministic_balanced_and_shaped():
    a, b, c = data.make_synthetic(seed=0), data.make_synthetic(seed=0), data.make_synthetic(seed=1)
    for name in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.train_x, c.train_x)
    assert a.train_x.shape == (1024, 3, 32, 32) and a.train_x.dtype == torch.uint8 and a.train_y.dtype == torch.int64
    assert len(a.val_y) == 256 and len(a.test_y) == 256 and a.source == "synthetic"
    for y in (a.train_y, a.val_y, a.test_y):
        counts = y.bincount(minlength=10)
        assert counts.max() - counts.min() <= 1
    with pytest.raises(ValueError):
        data.make_synthetic(train_size=0)


def test_synthetic_is_learnable_but_not_trivial():
    """A nearest-centroid classifier on shift-invariant features: far above chance, yet not perfect."""
    s = data.make_synthetic(seed=0, train_size=2000, val_size=500)

    def features(x):
        return np.abs(np.fft.fft2(x.numpy().astype(np.float64) - 128, axes=(2, 3))).reshape(len(x), -1)

    train, val = features(s.train_x), features(s.val_x)
    centroids = np.stack([train[s.train_y.numpy() == c].mean(0) for c in range(10)])
    pred = ((val[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    accuracy = (pred == s.val_y.numpy()).mean()
    assert 0.5 < accuracy < 0.97


def test_splits_to_device_keeps_metadata():
    s = data.make_synthetic(train_size=10, val_size=10, test_size=10)
    moved = s.to("cpu")
    assert moved.description == s.description and torch.equal(moved.val_x, s.val_x)
    with pytest.raises(AttributeError):
        s.source = "x"


@pytest.mark.slow
@pytest.mark.skipif(not REAL_ARCHIVE.exists(), reason="the shipped CIFAR-10 JPEG copy is not beside the project")
def test_real_archive(tmp_path):
    s = data.load_cifar10(str(REAL_ARCHIVE), cache_dir=tmp_path / "cache", log=lambda m: None)
    assert (len(s.train_y), len(s.val_y), len(s.test_y)) == (45000, 5000, 10000)
    assert s.train_x.shape[1:] == (3, 32, 32) and s.train_x.dtype == torch.uint8
    assert s.train_y.bincount().tolist() == [4500] * 10 and s.val_y.bincount().tolist() == [500] * 10
    assert s.test_y.bincount().tolist() == [1000] * 10
    mean = s.train_x.float().mean((0, 2, 3)) / 255
    assert torch.allclose(mean, torch.tensor(data.MEAN), atol=0.01)
    assert os.path.basename(s.description.rstrip(")")) == cifar10.SHIPPED_NAME


def test_validation_subset_holds_every_class():
    labels = torch.arange(10).repeat_interleave(50)  # stored sorted by class, as the split is
    splits = data.Splits(*(torch.zeros(500, 3, 32, 32, dtype=torch.uint8), labels) * 3, "synthetic", "sorted")
    x, y = splits.validation(40)
    assert y.bincount(minlength=10).tolist() == [4] * 10
    assert len(x) == 40
    assert splits.validation(0)[1] is labels and splits.validation(10_000)[1] is labels


def test_balanced_order_keeps_order_within_a_class():
    order = data.balanced_order(torch.tensor([0, 0, 0, 1, 2, 2]))
    assert order.tolist() == [0, 3, 4, 1, 5, 2]


def test_fitness_with_few_validation_images_sees_every_class():
    from evo_sparse.foundations.presets import preset
    from evo_sparse.training.fitness import Evaluator

    cfg = preset("smoke").updated({"train.val_images": 50})
    splits = data.make_synthetic(seed=0, train_size=64, val_size=250, test_size=10)
    ev = Evaluator(cfg, splits)
    assert ev.val_y.bincount(minlength=10).tolist() == [5] * 10
