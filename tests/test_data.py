"""Dataset cards and the real loaders, exercised on tiny files written in the real on-disk
formats (idx for MNIST, python pickles for CIFAR, the tiny-imagenet-200 layout, a
``datasets.save_to_disk`` copy, an ImageFolder tree). Only torchvision's md5 check is
patched; all parsing is the libraries' own."""

from __future__ import annotations

import dataclasses
import os
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from xrbench.data import (
    DIGITS_CARD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    RGB_EPS_PGD,
    dataset_card,
    load_dataset,
)
from xrbench import standins
from xrbench.data import STANDIN_ENV
from xrbench.errors import XRBenchError
from xrbench.idx_files import arrays_sha256

Image = pytest.importorskip("PIL.Image")


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch the network, whatever the caller's environment says."""
    monkeypatch.setenv("XRBENCH_OFFLINE", "1")


def _all(split) -> tuple[torch.Tensor, torch.Tensor]:
    return split.get_batch(torch.arange(len(split)))


# --- digits -------------------------------------------------------------------------------------

def test_digits_split_sizes_shapes_and_range(digits) -> None:
    assert len(digits.train) == 1257 and len(digits.test) == 540
    assert digits.card.train_size == 1257 and digits.card.test_size == 540
    xtr, ytr = _all(digits.train)
    xte, yte = _all(digits.test)
    assert xtr.shape == (1257, 1, 8, 8) and xte.shape == (540, 1, 8, 8)
    assert xtr.dtype == torch.float32 and ytr.dtype == torch.int64
    for x in (xtr, xte):
        assert x.min() >= 0.0 and x.max() <= 1.0
        assert x.max() == 1.0  # values/16, and 16 occurs
        # every value is a multiple of 1/16
        assert torch.equal(x * 16, torch.round(x * 16))
    assert torch.equal(digits.train.targets, ytr)


def test_digits_stratified_and_a_partition(digits) -> None:
    from sklearn.datasets import load_digits

    d = load_digits()
    _, ytr = _all(digits.train)
    _, yte = _all(digits.test)
    total = np.bincount(d.target, minlength=10)
    test_counts = np.bincount(yte.numpy(), minlength=10)
    assert (test_counts > 0).all()
    assert np.all(np.abs(test_counts - 0.3 * total) <= 1.0), (test_counts, 0.3 * total)
    assert np.array_equal(np.bincount(ytr.numpy(), minlength=10) + test_counts, total)

    # train + test is exactly the full data set (as a multiset of rows)
    xtr, _ = _all(digits.train)
    xte, _ = _all(digits.test)
    ours = torch.cat([xtr, xte]).reshape(-1, 64).numpy() * 16
    ref = d.images.reshape(-1, 64)
    sort = lambda a: a[np.lexsort(a.T[::-1])]  # noqa: E731
    np.testing.assert_array_equal(sort(ours), sort(ref))


def test_digits_deterministic(digits) -> None:
    again = load_dataset("digits")
    for a, b in ((digits.train, again.train), (digits.test, again.test)):
        xa, ya = _all(a)
        xb, yb = _all(b)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_digits_card_mean_std_match_training_split(digits) -> None:
    xtr, _ = _all(digits.train)
    assert digits.card is DIGITS_CARD
    assert digits.card.channels == 1 and digits.card.size == 8 and digits.card.num_classes == 10
    assert digits.card.mean[0] == pytest.approx(float(xtr.mean()), abs=1e-4)
    assert digits.card.std[0] == pytest.approx(float(xtr.std()), abs=1e-4)
    assert digits.card.eps_pgd == 0.3
    assert dataset_card("digits") == digits.card


# --- MNIST / FashionMNIST (idx files) ------------------------------------------------------------

def _write_idx_images(path: Path, arr: np.ndarray) -> None:
    n, h, w = arr.shape
    path.write_bytes(struct.pack(">IIII", 2051, n, h, w) + arr.astype(np.uint8).tobytes())


def _write_idx_labels(path: Path, labels: np.ndarray) -> None:
    path.write_bytes(struct.pack(">II", 2049, len(labels)) + labels.astype(np.uint8).tobytes())


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_like_from_idx_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str,
                                   folder: str) -> None:
    monkeypatch.setenv(STANDIN_ENV, "1")  # five images: a stand-in, not the published set
    rng = np.random.default_rng(0)
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    tr_x = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    tr_x[0] = 0
    tr_x[1] = 255
    tr_y = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    te_x = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    te_y = np.array([9, 2, 6], dtype=np.uint8)
    _write_idx_images(raw / "train-images-idx3-ubyte", tr_x)
    _write_idx_labels(raw / "train-labels-idx1-ubyte", tr_y)
    _write_idx_images(raw / "t10k-images-idx3-ubyte", te_x)
    _write_idx_labels(raw / "t10k-labels-idx1-ubyte", te_y)

    ds = load_dataset(name, data_dir=tmp_path)
    assert ds.card.name == name and ds.card.channels == 1 and ds.card.size == 28
    assert ds.card.eps_pgd == 0.3
    for split, xs, ys in ((ds.train, tr_x, tr_y), (ds.test, te_x, te_y)):
        x, y = _all(split)
        assert x.shape == (len(xs), 1, 28, 28) and x.dtype == torch.float32
        assert torch.equal(x, torch.from_numpy(xs).float()[:, None] / 255.0)
        assert y.dtype == torch.int64 and y.tolist() == ys.tolist()
    x, _ = ds.train.get_batch(torch.tensor([1, 0]))
    assert torch.all(x[0] == 1.0) and torch.all(x[1] == 0.0)
    assert ds.card.content_sha256 == arrays_sha256([tr_x, tr_y, te_x, te_y])
    assert (ds.card.train_size, ds.card.test_size) == (5, 3) and "stand-in" in ds.card.source


# --- CIFAR10 / CIFAR100 (python pickles) ---------------------------------------------------------

def _pickle(path: Path, obj: dict) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2))


def _cifar_batch(rng: np.random.Generator, n: int, label_key: str, num_classes: int):
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = rng.integers(0, num_classes, n).tolist()
    batch = {"batch_label": "tiny", "data": data, label_key: labels,
             "filenames": [f"img_{i}.png" for i in range(n)]}
    if label_key == "fine_labels":
        batch["coarse_labels"] = [lab // 5 for lab in labels]
    return batch, data, labels


@pytest.fixture
def _skip_md5(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only torchvision's md5 check is replaced (files must still exist)."""
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity",
                        lambda fpath, md5=None: os.path.isfile(fpath))


def _expected(data: list[np.ndarray]) -> torch.Tensor:
    # row = 1024 red, 1024 green, 1024 blue, each plane row-major 32x32
    return torch.from_numpy(np.concatenate(data).reshape(-1, 3, 32, 32)).float() / 255.0


def test_cifar10_from_pickles(tmp_path: Path, _skip_md5) -> None:
    rng = np.random.default_rng(1)
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    tr_data, tr_labels = [], []
    for i in range(1, 6):
        batch, data, labels = _cifar_batch(rng, 2, "labels", 10)
        _pickle(base / f"data_batch_{i}", batch)
        tr_data.append(data)
        tr_labels += labels
    batch, te_data, te_labels = _cifar_batch(rng, 3, "labels", 10)
    _pickle(base / "test_batch", batch)
    _pickle(base / "batches.meta", {"label_names": [f"c{i}" for i in range(10)],
                                    "num_cases_per_batch": 2, "num_vis": 3072})

    ds = load_dataset("cifar10", data_dir=tmp_path)
    assert ds.card.name == "cifar10" and ds.card.num_classes == 10
    x, y = _all(ds.train)
    assert x.shape == (10, 3, 32, 32) and x.dtype == torch.float32
    assert torch.equal(x, _expected(tr_data))
    assert y.tolist() == tr_labels
    x, y = _all(ds.test)
    assert x.shape == (3, 3, 32, 32)
    assert torch.equal(x, _expected([te_data]))
    assert y.tolist() == te_labels
    # channel order: red plane first
    assert x[0, 0, 0, 1] == float(te_data[0, 1]) / 255.0
    assert x[0, 2, 31, 31] == float(te_data[0, 3071]) / 255.0


def test_cifar100_from_pickles(tmp_path: Path, _skip_md5) -> None:
    rng = np.random.default_rng(2)
    base = tmp_path / "cifar-100-python"
    base.mkdir()
    batch, tr_data, tr_labels = _cifar_batch(rng, 4, "fine_labels", 100)
    _pickle(base / "train", batch)
    batch, te_data, te_labels = _cifar_batch(rng, 2, "fine_labels", 100)
    _pickle(base / "test", batch)
    _pickle(base / "meta", {"fine_label_names": [f"f{i}" for i in range(100)],
                            "coarse_label_names": [f"c{i}" for i in range(20)]})

    ds = load_dataset("cifar100", data_dir=tmp_path)
    assert ds.card.num_classes == 100 and ds.card.channels == 3 and ds.card.size == 32
    x, y = _all(ds.train)
    assert x.shape == (4, 3, 32, 32)
    assert torch.equal(x, _expected([tr_data]))
    assert y.tolist() == tr_labels  # fine labels, not coarse
    x, y = _all(ds.test)
    assert torch.equal(x, _expected([te_data])) and y.tolist() == te_labels


# --- Tiny ImageNet ------------------------------------------------------------------------------

WNIDS = ["n02000002", "n01000001", "n03000003"]  # deliberately not sorted: labels follow the file
COLOURS = {"n02000002": (200, 30, 40), "n01000001": (20, 180, 60), "n03000003": (40, 50, 220)}


def _tiny_folder(root: Path, per_class: int = 2) -> Path:
    folder = root / "tiny-imagenet-200"
    folder.mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    for w in WNIDS:
        d = folder / "train" / w / "images"
        d.mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (64, 64), COLOURS[w]).save(d / f"{w}_{i}.JPEG", quality=95)
        (folder / "train" / w / f"{w}_boxes.txt").write_text("")
    val = folder / "val" / "images"
    val.mkdir(parents=True)
    order = ["n03000003", "n02000002", "n01000001", "n02000002"]
    lines = []
    for i, w in enumerate(order):
        Image.new("RGB", (64, 64), COLOURS[w]).save(val / f"val_{i}.JPEG", quality=95)
        lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63")
    # one greyscale JPEG, as the real set has some; it must come back as 3 channels
    Image.new("L", (64, 64), 128).save(val / "val_4.JPEG", quality=95)
    lines.append("val_4.JPEG\tn01000001\t1\t2\t60\t61")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return folder


def test_tinyimagenet_from_folder(tmp_path: Path) -> None:
    _tiny_folder(tmp_path)
    ds = load_dataset("tinyimagenet", data_dir=tmp_path)
    assert ds.card.name == "tinyimagenet" and ds.card.size == 64 and ds.card.num_classes == 200
    x, y = _all(ds.train)
    assert x.shape == (6, 3, 64, 64) and x.dtype == torch.float32
    assert y.tolist() == [0, 0, 1, 1, 2, 2]  # index in wnids.txt, not alphabetical
    for xi, yi in zip(x, y):
        colour = torch.tensor(COLOURS[WNIDS[int(yi)]], dtype=torch.float32) / 255.0
        assert torch.allclose(xi, colour[:, None, None].expand_as(xi), atol=4 / 255)
    x, y = _all(ds.test)
    assert x.shape == (5, 3, 64, 64)
    assert y.tolist() == [2, 0, 1, 0, 1]
    for xi, w in zip(x[:4], ["n03000003", "n02000002", "n01000001", "n02000002"]):
        colour = torch.tensor(COLOURS[w], dtype=torch.float32) / 255.0
        assert torch.allclose(xi, colour[:, None, None].expand_as(xi), atol=4 / 255)
    assert torch.allclose(x[4], torch.full((3, 64, 64), 128 / 255), atol=2 / 255)


def test_tinyimagenet_folder_does_not_hold_every_file_open(tmp_path: Path) -> None:
    """The real folder has 100000 training JPEGs; they must not all be open at once."""
    resource = pytest.importorskip("resource")
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc/self/fd")
    _tiny_folder(tmp_path, per_class=40)  # 120 train images
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 40, hard))
    try:
        ds = load_dataset("tinyimagenet", data_dir=tmp_path)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert len(ds.train) == 120


def test_tinyimagenet_from_saved_hf_dataset(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    hf = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    features = hf.Features({"image": hf.Image(), "label": hf.ClassLabel(num_classes=200)})
    train_imgs = [Image.new("RGB", (64, 64), (10 * i, 100, 255 - 10 * i)) for i in range(4)]
    # a smaller and a greyscale image: resized to 64 and converted to RGB (PNG: exact)
    valid_imgs = [Image.new("RGB", (32, 32), (7, 77, 177)), Image.new("L", (64, 64), 99)]
    dd = hf.DatasetDict({
        "train": hf.Dataset.from_dict({"image": train_imgs, "label": [5, 0, 199, 5]},
                                      features=features),
        "valid": hf.Dataset.from_dict({"image": valid_imgs, "label": [3, 42]},
                                      features=features),
    })
    dd.save_to_disk(str(tmp_path / "tinyimagenet-hf"))

    calls: list[object] = []
    monkeypatch.setattr(hf, "load_dataset", lambda *a, **k: calls.append(a))
    ds = load_dataset("tinyimagenet", data_dir=tmp_path)
    assert calls == []
    assert ds.card.size == 64 and ds.card.num_classes == 200
    x, y = _all(ds.train)
    assert x.shape == (4, 3, 64, 64) and y.tolist() == [5, 0, 199, 5]
    for i in range(4):
        expect = torch.tensor([10 * i, 100, 255 - 10 * i], dtype=torch.float32) / 255.0
        assert torch.equal(x[i], expect[:, None, None].expand(3, 64, 64))
    x, y = _all(ds.test)
    assert x.shape == (2, 3, 64, 64) and y.tolist() == [3, 42]
    expect = torch.tensor([7, 77, 177], dtype=torch.float32) / 255.0
    assert torch.equal(x[0], expect[:, None, None].expand(3, 64, 64))
    assert torch.equal(x[1], torch.full((3, 64, 64), 99.0) / 255.0)


# --- imagefolder:PATH ---------------------------------------------------------------------------

IF_COLOURS = {"cat": (250, 10, 10), "dog": (10, 250, 10), "emu": (12, 34, 56)}


def _image_tree(base: Path, splits=("train", "val")) -> None:
    for split in splits:
        for c, colour in IF_COLOURS.items():
            d = base / split / c
            d.mkdir(parents=True)
            n = 2 if split == "train" else 1
            for i in range(n):
                # non-square and smaller than 64: Resize(64) + CenterCrop(64) must give 64x64
                Image.new("RGB", (40 + 10 * i, 30), colour).save(d / f"{i}.png")


def test_imagefolder(tmp_path: Path) -> None:
    base = tmp_path / "imgs"
    _image_tree(base)
    ds = load_dataset(f"imagefolder:{base}")
    card = ds.card
    assert card.name.startswith("imagefolder:") and len(card.name) == len("imagefolder:") + 12
    assert str(base) in card.source  # the path is information, not identity
    assert card.channels == 3 and card.size == 64 and card.num_classes == 3
    assert card.train_size == 6 and card.test_size == 3
    assert card.mean == IMAGENET_MEAN and card.std == IMAGENET_STD
    assert card.eps_pgd == pytest.approx(RGB_EPS_PGD)
    assert len(ds.train) == 6 and len(ds.test) == 3
    assert ds.train.targets.tolist() == [0, 0, 1, 1, 2, 2]  # classes sorted: cat, dog, emu
    assert ds.test.targets.tolist() == [0, 1, 2]

    x, y = ds.train.get_batch(torch.tensor([5, 0, 3]))
    assert x.shape == (3, 3, 64, 64) and x.dtype == torch.float32
    assert y.tolist() == [2, 0, 1]
    for xi, c in zip(x, ["emu", "cat", "dog"]):
        expect = torch.tensor(IF_COLOURS[c], dtype=torch.float32) / 255.0
        assert torch.equal(xi, expect[:, None, None].expand(3, 64, 64))

    x, y = ds.test.get_batch(torch.arange(3))
    assert x.shape == (3, 3, 64, 64) and y.tolist() == [0, 1, 2]

    small = load_dataset(f"imagefolder:{base}", size=16)
    assert small.card.size == 16
    assert small.test.get_batch(torch.tensor([2]))[0].shape == (1, 3, 16, 16)


def test_imagefolder_accepts_test_dir(tmp_path: Path) -> None:
    base = tmp_path / "imgs"
    _image_tree(base, splits=("train", "test"))
    ds = load_dataset(f"imagefolder:{base}")
    assert len(ds.test) == 3 and ds.card.test_size == 3


def test_imagefolder_errors(tmp_path: Path) -> None:
    base = tmp_path / "imgs"
    _image_tree(base, splits=("train",))
    with pytest.raises(XRBenchError, match=r"must contain train/ and val/") as info:
        load_dataset(f"imagefolder:{base}")
    assert str(base) in str(info.value)

    other = tmp_path / "other"
    _image_tree(other)
    (other / "val" / "emu").rename(other / "val" / "owl")
    with pytest.raises(XRBenchError, match="different classes"):
        load_dataset(f"imagefolder:{other}")

    with pytest.raises(XRBenchError, match="needs an argument"):
        load_dataset("imagefolder")


# --- offline, no files --------------------------------------------------------------------------

@pytest.mark.parametrize("name,cls,what", [
    ("mnist", "MNIST", "MNIST/raw/"),
    ("fashion_mnist", "FashionMNIST", "FashionMNIST/raw/"),
    ("cifar10", "CIFAR10", "cifar-10-batches-py"),
    ("cifar100", "CIFAR100", "cifar-100-python"),
])
def test_torchvision_missing_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     name: str, cls: str, what: str) -> None:
    import torchvision

    from xrbench import data

    if name in data.IDX_BY_NAME:  # not the real files a system package installed
        monkeypatch.setitem(data.IDX_BY_NAME, name, dataclasses.replace(
            data.IDX_BY_NAME[name], system=(tmp_path / "no-system-copy",)))

    calls: list[object] = []
    monkeypatch.setattr(getattr(torchvision.datasets, cls), "download",
                        lambda self: calls.append(self))
    with pytest.raises(XRBenchError) as info:
        load_dataset(name, data_dir=tmp_path)
    msg = str(info.value)
    assert calls == []  # no download attempted
    assert str(tmp_path) in msg and what in msg and "put" in msg
    assert "--data-dir" in msg or "XRBENCH_DATA" in msg


def test_tinyimagenet_missing_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hf = pytest.importorskip("datasets")
    calls: list[object] = []
    monkeypatch.setattr(hf, "load_dataset", lambda *a, **k: calls.append(a))
    with pytest.raises(XRBenchError) as info:
        load_dataset("tinyimagenet", data_dir=tmp_path)
    msg = str(info.value)
    assert calls == []
    assert str(tmp_path) in msg
    assert "tiny-imagenet-200" in msg and "tinyimagenet-hf" in msg


def test_unknown_dataset_lists_names() -> None:
    with pytest.raises(XRBenchError, match="digits"):
        load_dataset("no_such_dataset")


# --- static cards -------------------------------------------------------------------------------

def test_dataset_card_without_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XRBENCH_DATA", str(tmp_path))  # an empty folder
    card = dataset_card("cifar10")
    assert (card.name, card.channels, card.size, card.num_classes) == ("cifar10", 3, 32, 10)
    assert card.mean == (0.4914, 0.4822, 0.4465) and card.std == (0.2470, 0.2435, 0.2616)
    assert card.train_size == 50000 and card.test_size == 10000
    assert card.eps_pgd == pytest.approx(8 / 255) and not card.grey
    assert card.retrieval_eps == pytest.approx((2 / 255, 4 / 255, 8 / 255))
    assert card.mean_std == pytest.approx(sum(card.std) / 3)
    assert card.to_dict()["num_classes"] == 10

    for name, channels, size, classes in [("mnist", 1, 28, 10), ("fashion_mnist", 1, 28, 10),
                                          ("cifar100", 3, 32, 100), ("tinyimagenet", 3, 64, 200)]:
        c = dataset_card(name, data_dir=tmp_path)
        assert (c.channels, c.size, c.num_classes) == (channels, size, classes)
        assert c.eps_pgd == (0.3 if channels == 1 else pytest.approx(8 / 255))
    assert list(tmp_path.iterdir()) == []


def test_failed_download_leaves_no_new_folders(tmp_path, monkeypatch):
    """A download that fails (no network) must not leave an empty MNIST/raw, nor create a
    --data-dir that did not exist."""
    import torchvision

    from xrbench.data import load_dataset
    from xrbench.errors import XRBenchError

    class NoNetworkMNIST:
        def __init__(self, root, train=True, download=False):
            if not download:
                raise RuntimeError("Dataset not found")
            (Path(root) / "MNIST" / "raw").mkdir(parents=True)
            raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.datasets, "MNIST", NoNetworkMNIST)
    monkeypatch.delenv("XRBENCH_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    missing = tmp_path / "not-yet"
    with pytest.raises(XRBenchError, match="not found"):
        load_dataset("mnist", missing)
    assert not missing.exists()
    existing = tmp_path / "mine"
    existing.mkdir()
    (existing / "notes.txt").write_text("keep me")
    with pytest.raises(XRBenchError, match="not found"):
        load_dataset("mnist", existing)
    assert sorted(p.name for p in existing.iterdir()) == ["notes.txt"]


# --- what a user meets off digits (issue 12, item 6) ----------------------------------------

def test_imagefolder_identity_is_its_files_not_its_path(tmp_path: Path) -> None:
    """Moving or renaming the folder keeps the dataset's name (and so its cache keys,
    manifest and table); changing a file's size or name, or the image side, changes it."""
    base = tmp_path / "imgs"
    _image_tree(base)
    name = load_dataset(f"imagefolder:{base}").card.name
    moved = tmp_path / "elsewhere" / "renamed"
    moved.parent.mkdir()
    base.rename(moved)
    card = load_dataset(f"imagefolder:{moved}").card
    assert card.name == name
    assert str(moved) in card.source and str(base) not in card.source
    # a stray non-image file is not part of the data, so not of the identity
    (moved / "train" / "cat" / "notes.txt").write_text("not an image")
    assert load_dataset(f"imagefolder:{moved}").card.name == name
    assert load_dataset(f"imagefolder:{moved}", size=16).card.name != name

    noise = np.random.default_rng(5).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(noise).save(moved / "val" / "dog" / "0.png")  # same name, other size
    assert load_dataset(f"imagefolder:{moved}").card.name != name  # other size in bytes
    again = tmp_path / "again"
    _image_tree(again)
    assert load_dataset(f"imagefolder:{again}").card.name == name  # same files, same name
    (again / "train" / "cat" / "1.png").rename(again / "train" / "cat" / "2.png")
    assert load_dataset(f"imagefolder:{again}").card.name != name  # other file list


def _cifar_folder(root: Path, ten: bool) -> Path:
    """A tiny CIFAR folder in torchvision's layout; its md5s are not the published ones."""
    rng = np.random.default_rng(3)
    base = root / ("cifar-10-batches-py" if ten else "cifar-100-python")
    base.mkdir(parents=True)
    key, classes = ("labels", 10) if ten else ("fine_labels", 100)
    for f in ([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"] if ten
              else ["train", "test"]):
        _pickle(base / f, _cifar_batch(rng, 2, key, classes)[0])
    meta = ({"label_names": [f"c{i}" for i in range(10)]} if ten
            else {"fine_label_names": [f"f{i}" for i in range(100)]})
    _pickle(base / ("batches.meta" if ten else "meta"), meta)
    return base


@pytest.mark.parametrize("name,first,md5", [
    ("cifar10", "data_batch_1", "c99cafc152244af753f735de768cd75f"),
    ("cifar100", "train", "16019d7e3df5f24257cddd939b257f8d"),
])
def test_cifar_folder_failing_md5_is_reported_as_found_and_corrupt(
        tmp_path: Path, name: str, first: str, md5: str) -> None:
    import hashlib

    base = _cifar_folder(tmp_path, ten=name == "cifar10")
    with pytest.raises(XRBenchError) as info:
        load_dataset(name, data_dir=tmp_path)
    msg = str(info.value)
    actual = hashlib.md5((base / first).read_bytes()).hexdigest()
    assert "not found" not in msg
    assert f"found {base}" in msg and f"file {first!r}" in msg
    assert f"md5 {actual}, expected {md5}" in msg
    assert "extract" in msg and f"delete {base}" in msg and "\n" not in msg


def test_cifar_folder_missing_a_file_names_it(tmp_path: Path, _skip_md5) -> None:
    base = _cifar_folder(tmp_path, ten=True)
    (base / "data_batch_3").unlink()
    with pytest.raises(XRBenchError) as info:
        load_dataset("cifar10", data_dir=tmp_path)
    msg = str(info.value)
    assert f"found {base}" in msg and "'data_batch_3' is missing" in msg and "extract" in msg


@pytest.mark.parametrize("name,layout", [("mnist", "MNIST/raw"), ("fashion_mnist", "FashionMNIST/raw"),
                                         ("fashion_mnist", "."), ("fashion_mnist", "fashion-mnist")])
def test_mnist_like_from_the_original_gz_files_read_only(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         name: str, layout: str) -> None:
    """Only the four published ``.gz`` archives, in torchvision's layout, flat in the folder
    given, or in a ``fashion-mnist`` folder below it (Debian's name), read-only: read in
    memory, nothing written beside them."""
    import gzip

    monkeypatch.setenv(STANDIN_ENV, "1")
    rng = np.random.default_rng(4)
    raw = tmp_path / layout
    raw.mkdir(parents=True, exist_ok=True)
    tr_x, tr_y = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8), np.arange(6) % 10
    te_x, te_y = rng.integers(0, 256, (4, 28, 28), dtype=np.uint8), np.array([7, 0, 9, 1])
    for stem, writer, arr in (("train-images-idx3-ubyte", _write_idx_images, tr_x),
                              ("train-labels-idx1-ubyte", _write_idx_labels, tr_y),
                              ("t10k-images-idx3-ubyte", _write_idx_images, te_x),
                              ("t10k-labels-idx1-ubyte", _write_idx_labels, te_y)):
        writer(raw / stem, arr)
        (raw / f"{stem}.gz").write_bytes(gzip.compress((raw / stem).read_bytes()))
        (raw / stem).unlink()
    before = sorted(p.name for p in raw.iterdir())
    raw.chmod(0o555)
    try:
        ds = load_dataset(name, data_dir=tmp_path)
    finally:
        raw.chmod(0o755)
    for split, xs, ys in ((ds.train, tr_x, tr_y), (ds.test, te_x, te_y)):
        x, y = _all(split)
        assert torch.equal(x, torch.from_numpy(xs).float()[:, None] / 255.0)
        assert y.tolist() == ys.tolist()
    assert sorted(p.name for p in raw.iterdir()) == before  # nothing written beside them


def test_mnist_like_files_are_checked_against_the_card(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the stand-in switch, small files are not the data set (counts), and
    Fashion-MNIST-shaped files with other contents are not Fashion-MNIST (sha256)."""
    monkeypatch.delenv(STANDIN_ENV, raising=False)
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for split, n in (("train", 60000), ("t10k", 10000)):
        _write_idx_images(raw / f"{split}-images-idx3-ubyte",
                          rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        _write_idx_labels(raw / f"{split}-labels-idx1-ubyte", np.arange(n) % 10)
    with pytest.raises(XRBenchError, match="not the published fashion_mnist data set"):
        load_dataset("fashion_mnist", data_dir=tmp_path)
    _write_idx_labels(raw / "t10k-labels-idx1-ubyte", np.arange(10000) % 9)
    with pytest.raises(XRBenchError, match="classes 0..9"):
        load_dataset("fashion_mnist", data_dir=tmp_path)
    _write_idx_labels(raw / "t10k-labels-idx1-ubyte", np.r_[np.arange(9990) % 10, [0] * 10])
    with pytest.raises(XRBenchError, match="not balanced"):
        load_dataset("fashion_mnist", data_dir=tmp_path)
    small = tmp_path / "small"
    standins.write_mnist(small, 20, 10)
    with pytest.raises(XRBenchError, match=r"\(60000, 28, 28\).*not the mnist files"):
        load_dataset("mnist", data_dir=small)


def test_idx_header_is_checked_before_reading(tmp_path: Path) -> None:
    """A header declaring more than any MNIST-like file holds, a wrong magic, or missing
    bytes: one error naming the file, nothing allocated for the declared size."""
    from xrbench.idx_files import read_idx

    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(struct.pack(">IIII", 2051, 4_000_000_000, 1000, 1000))
    with pytest.raises(XRBenchError, match="declares .* more than any MNIST-like file"):
        read_idx(path, 3)
    path.write_bytes(struct.pack(">IIII", 2049, 1, 28, 28))
    with pytest.raises(XRBenchError, match="not an idx file"):
        read_idx(path, 3)
    path.write_bytes(struct.pack(">IIII", 2051, 2, 28, 28) + b"\0" * 100)
    with pytest.raises(XRBenchError, match="truncated"):
        read_idx(path, 3)
    path.write_bytes(struct.pack(">IIII", 2051, 1, 2, 2) + b"\0" * 5)
    with pytest.raises(XRBenchError, match="more bytes than its header"):
        read_idx(path, 3)


def test_fashion_mnist_not_found_lists_every_place(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """No files anywhere (the Debian folder pointed at an empty one): the message names
    each folder looked in and the package that installs the data set."""
    from xrbench import data

    system = tmp_path / "usr-share-datasets-fashion-mnist"
    monkeypatch.setitem(data.IDX_BY_NAME, "fashion_mnist",
                        dataclasses.replace(data.IDX_BY_NAME["fashion_mnist"], system=(system,)))
    monkeypatch.setenv("XRBENCH_OFFLINE", "1")
    root = tmp_path / "data"
    with pytest.raises(XRBenchError) as info:
        load_dataset("fashion_mnist", data_dir=root)
    msg = str(info.value)
    for where in (root / "FashionMNIST" / "raw", root / "FashionMNIST", root / "fashion-mnist",
                  root, system):
        assert str(where) in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "--data-dir" in msg


def test_mnist_truncated_gz_names_the_file(tmp_path: Path) -> None:
    import gzip

    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        whole = struct.pack(">IIII", 2051, 100, 28, 28) + os.urandom(78400)
        (raw / f"{stem}.gz").write_bytes(gzip.compress(whole)[:2000])  # cut mid-stream
    with pytest.raises(XRBenchError) as info:
        load_dataset("mnist", data_dir=tmp_path)
    msg = str(info.value)
    assert "cannot read" in msg and "train-images-idx3-ubyte.gz" in msg
    assert "download it again" in msg
    assert not (raw / "train-images-idx3-ubyte").exists()


# --- issue 21: an imagefolder is its content; links and deep images read right -------------

def test_imagefolder_identity_covers_the_content(tmp_path: Path) -> None:
    """Case 1: rewriting images under the same names and sizes (two classes' images swapped)
    is another dataset, so no stale checkpoint or stage is reused for it."""
    base = tmp_path / "imgs"
    _image_tree(base)
    name = load_dataset(f"imagefolder:{base}").card.name
    cat, dog = base / "train" / "cat" / "0.png", base / "train" / "dog" / "0.png"
    a, b = cat.read_bytes(), dog.read_bytes()
    assert len(a) == len(b) and a != b  # same size, other pixels
    cat.write_bytes(b)
    dog.write_bytes(a)
    swapped = load_dataset(f"imagefolder:{base}")
    assert swapped.card.name != name
    assert "contents" in swapped.card.source
    cat.write_bytes(a)
    dog.write_bytes(b)
    assert load_dataset(f"imagefolder:{base}").card.name == name  # the same bytes again


def test_imagefolder_refuses_a_folder_link_loop(tmp_path: Path) -> None:
    """Case 3: ``train/cat/loop -> ..`` would walk the split again under class cat."""
    base = tmp_path / "imgs"
    _image_tree(base)
    (base / "train" / "cat" / "loop").symlink_to("..")
    with pytest.raises(XRBenchError, match="does not follow it"):
        load_dataset(f"imagefolder:{base}")
    (base / "train" / "cat" / "loop").unlink()
    elsewhere = tmp_path / "extra-emus"  # a class folder kept elsewhere is fine
    shutil.copytree(base / "val" / "emu", elsewhere)
    shutil.rmtree(base / "val" / "emu")
    (base / "val" / "emu").symlink_to(elsewhere)
    assert len(load_dataset(f"imagefolder:{base}").test) == 3


def test_imagefolder_reads_16_bit_images_at_their_depth(tmp_path: Path) -> None:
    """Case 4: a 16-bit PNG of value 4065/65535 is 16/255, not white."""
    base = tmp_path / "imgs"
    _image_tree(base)
    deep = np.full((30, 40), 4065, dtype=np.uint16)
    Image.fromarray(deep).save(base / "val" / "cat" / "0.png")
    assert Image.open(base / "val" / "cat" / "0.png").mode.startswith("I")
    ds = load_dataset(f"imagefolder:{base}")
    x, _ = ds.test.get_batch(torch.tensor([0]))  # val/cat/0.png is the first image
    assert torch.allclose(x, torch.full_like(x, 16 / 255), atol=1e-6)


def test_imagefolder_decompression_bomb_is_one_error(tmp_path: Path, monkeypatch) -> None:
    """Issue 21 case 8: an image past PIL's decompression-bomb limit is an error naming the
    file, not a traceback (the limit lowered here so that a small image trips it)."""
    base = tmp_path / "imgs"
    _image_tree(base)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 40 x 30 = 1200 > 2 x 100
    ds = load_dataset(f"imagefolder:{base}")
    with pytest.raises(XRBenchError, match="cannot read image .*DecompressionBombError"):
        ds.test.get_batch(torch.tensor([0]))
