"""Small stand-ins of the built-in datasets, written in their real on-disk formats.

For tests, CI and measurements (``benchmarks/``), and to try the whole pipeline on a dataset
without downloading it. Each writer puts files where the loader looks under ``root`` (the
``--data-dir``), in the format the loader reads: MNIST's idx files (or the published
``.gz`` archives), CIFAR's python pickles in ``cifar-10-batches-py`` / ``cifar-100-python``,
the ``tiny-imagenet-200`` folder (``wnids.txt``, ``train/<wnid>/images/*.JPEG``,
``val/val_annotations.txt``), and an ImageFolder tree (``train/<class>/*.png``, ``val/``).

Classes are made learnable: class k (of the first ``classes`` labels, spread over the
dataset's label range) is a bright square at its own place on a 4 x 3 grid, in its own colour
for RGB data, over uniform noise. Stand-ins are not the data: a CIFAR stand-in fails
torchvision's md5 check (tests replace that check, as ``tests/test_data.py`` does).
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

from .utils import atomic_write_bytes


def class_images(labels: np.ndarray, side: int, channels: int, seed: int) -> np.ndarray:
    """uint8 images (N, side, side, channels): uniform noise in [0, 80], plus for label k a
    square of side ``side // 4`` at place ``k % 12`` of a 4 x 3 grid, lifted to 255 in a
    colour of its own (grey data: to 255). Labels are indices 0..K-1 of the classes used."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    x = rng.integers(0, 81, (n, side, side, channels)).astype(np.int16)
    k = labels % 12
    rows, cols = k // 3, k % 3
    half = side // 4
    ys = np.arange(side)[None, :]
    top = (rows * side // 4)[:, None]
    left = (cols * side // 3 + side // 12)[:, None]
    in_rows = (ys >= top) & (ys < top + half)  # (N, side)
    in_cols = (ys >= left) & (ys < left + half)
    square = in_rows[:, :, None] & in_cols[:, None, :]  # (N, side, side)
    if channels == 1:
        colour = np.full((n, 1), 255)
    else:  # a colour per class: two of the three channels bright, rotating with the label
        colour = np.stack([np.where((labels + c) % 3 == 0, 120, 255) for c in range(3)], 1)
    x = np.where(square[..., None], colour[:, None, None, :], x)
    return x.clip(0, 255).astype(np.uint8)


def _labels(n: int, classes: int, seed: int) -> np.ndarray:
    """``n`` labels 0..classes-1, balanced, in a seeded order."""
    return np.random.default_rng(seed).permutation(np.arange(n) % classes)


def _idx_images(arr: np.ndarray) -> bytes:
    n, h, w = arr.shape
    return struct.pack(">IIII", 2051, n, h, w) + arr.astype(np.uint8).tobytes()


def _idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">II", 2049, len(labels)) + labels.astype(np.uint8).tobytes()


def write_mnist(root: str | Path, n_train: int = 256, n_test: int = 100, *,
                fashion: bool = False, gz: bool = False, classes: int = 10,
                seed: int = 0) -> Path:
    """``root/MNIST/raw`` (``FashionMNIST`` with ``fashion``): the four idx files, or only
    their ``.gz`` archives with ``gz``. 28 x 28 grey. Returns the raw folder."""
    raw = Path(root) / ("FashionMNIST" if fashion else "MNIST") / "raw"
    for split, n, s in (("train", n_train, seed), ("t10k", n_test, seed + 1)):
        y = _labels(n, classes, s)
        x = class_images(y, 28, 1, s)[..., 0]
        for stem, data in ((f"{split}-images-idx3-ubyte", _idx_images(x)),
                           (f"{split}-labels-idx1-ubyte", _idx_labels(y))):
            if gz:
                atomic_write_bytes(raw / f"{stem}.gz", gzip.compress(data, mtime=0))
            else:
                atomic_write_bytes(raw / stem, data)
    return raw


def _cifar_batch(x: np.ndarray, labels: list[int], key: str, name: str) -> bytes:
    """One pickled CIFAR batch: ``data`` (N, 3072) uint8, rows of red, green, blue planes."""
    batch = {"batch_label": name, "data": x.transpose(0, 3, 1, 2).reshape(len(x), -1),
             key: labels, "filenames": [f"standin_{i}.png" for i in range(len(x))]}
    if key == "fine_labels":
        batch["coarse_labels"] = [lab // 5 for lab in labels]
    return pickle.dumps(batch, protocol=2)


def write_cifar(root: str | Path, n_train: int = 256, n_test: int = 100, *,
                hundred: bool = False, classes: int = 10, seed: int = 0) -> Path:
    """``root/cifar-10-batches-py`` (five training batches, ``test_batch``,
    ``batches.meta``) or, with ``hundred``, ``root/cifar-100-python`` (``train``, ``test``,
    ``meta``; fine labels spread over 0..99). 32 x 32 RGB. Returns the folder."""
    total = 100 if hundred else 10
    spread = total // classes
    folder = Path(root) / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    key = "fine_labels" if hundred else "labels"
    y_tr, y_te = _labels(n_train, classes, seed), _labels(n_test, classes, seed + 1)
    x_tr, x_te = class_images(y_tr, 32, 3, seed), class_images(y_te, 32, 3, seed + 1)
    lab_tr, lab_te = (y_tr * spread).tolist(), (y_te * spread).tolist()
    if hundred:
        atomic_write_bytes(folder / "train", _cifar_batch(x_tr, lab_tr, key, "train"))
        atomic_write_bytes(folder / "test", _cifar_batch(x_te, lab_te, key, "test"))
        meta = {"fine_label_names": [f"fine{i}" for i in range(100)],
                "coarse_label_names": [f"coarse{i}" for i in range(20)]}
        atomic_write_bytes(folder / "meta", pickle.dumps(meta, protocol=2))
    else:
        parts = np.array_split(np.arange(n_train), 5)
        for i, part in enumerate(parts, 1):
            atomic_write_bytes(folder / f"data_batch_{i}",
                               _cifar_batch(x_tr[part], [lab_tr[j] for j in part], key,
                                            f"training batch {i} of 5"))
        atomic_write_bytes(folder / "test_batch", _cifar_batch(x_te, lab_te, key, "test"))
        meta = {"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch":
                len(parts[0]), "num_vis": 3072}
        atomic_write_bytes(folder / "batches.meta", pickle.dumps(meta, protocol=2))
    return folder


def _save_images(images: np.ndarray, paths: list[Path], fmt: str) -> None:
    from PIL import Image

    for im, path in zip(images, paths):  # one file per image: the format is files
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(path, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))


def write_tinyimagenet(root: str | Path, n_train: int = 256, n_test: int = 100, *,
                       classes: int = 10, seed: int = 0) -> Path:
    """``root/tiny-imagenet-200`` as the archive unpacks: ``wnids.txt`` (200 ids),
    ``words.txt``, ``train/<wnid>/images/<wnid>_<i>.JPEG`` with ``<wnid>_boxes.txt``,
    ``val/images/val_<i>.JPEG`` with ``val/val_annotations.txt``. 64 x 64 RGB JPEG; images
    for ``classes`` wnids spread over the 200. Returns the folder."""
    folder = Path(root) / "tiny-imagenet-200"
    wnids = [f"n{10000000 + 7919 * i:08d}" for i in range(200)]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (folder / "words.txt").write_text("".join(f"{w}\tstand-in class {i}\n"
                                              for i, w in enumerate(wnids)))
    spread = 200 // classes
    y = _labels(n_train, classes, seed)
    x = class_images(y, 64, 3, seed)
    names = [wnids[int(k) * spread] for k in y]
    counts: dict[str, int] = {}
    paths = []
    for w in names:
        paths.append(folder / "train" / w / "images" / f"{w}_{counts.get(w, 0)}.JPEG")
        counts[w] = counts.get(w, 0) + 1
    _save_images(x, paths, "JPEG")
    for w in counts:
        (folder / "train" / w / f"{w}_boxes.txt").write_text(
            "".join(f"{w}_{i}.JPEG\t0\t0\t63\t63\n" for i in range(counts[w])))
    y = _labels(n_test, classes, seed + 1)
    x = class_images(y, 64, 3, seed + 1)
    _save_images(x, [folder / "val" / "images" / f"val_{i}.JPEG" for i in range(n_test)], "JPEG")
    (folder / "val" / "val_annotations.txt").write_text(
        "".join(f"val_{i}.JPEG\t{wnids[int(k) * spread]}\t0\t0\t63\t63\n" for i, k in enumerate(y)))
    return folder


def write_imagefolder(path: str | Path, n_train: int = 256, n_test: int = 100, *,
                      classes: int = 10, side: int = 32, seed: int = 0) -> Path:
    """An ImageFolder tree at ``path``: ``train/<class>/<i>.png`` and ``val/<class>/<i>.png``,
    ``side`` x ``side`` RGB PNG (the loader resizes to its own side). Returns ``path``."""
    base = Path(path)
    for split, n, s in (("train", n_train, seed), ("val", n_test, seed + 1)):
        y = _labels(n, classes, s)
        x = class_images(y, side, 3, s)
        _save_images(x, [base / split / f"class{int(k):02d}" / f"{i:05d}.png"
                         for i, k in enumerate(y)], "PNG")
    return base
