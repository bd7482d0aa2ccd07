"""MNIST and Fashion-MNIST from their four idx files, as users have them (PROTOCOL.md 1).

Where the files are looked for and how they are read and checked: :mod:`xrbench.idx_files`;
this module holds the two data sets' cards and registers them.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .data_base import Dataset, DatasetCard, TensorSplit, _offline
from .errors import XRBenchError
from .idx_files import DEBIAN_FASHION_MNIST
from .registry import datasets

log = logging.getLogger("xrbench.data")


#: sha256 of the published Fashion-MNIST arrays (:func:`xrbench.idx_files.arrays_sha256` of
#: the four files' contents, as read from Debian's dataset-fashion-mnist 0.0~git20200523);
#: the .gz files' own bytes differ between distributions, their contents do not
FASHION_MNIST_SHA256 = "eee656c63c1c7a3b7c885d28c97fd74dc039264ce75eae7cb8d991df379ef736"
#: lets the pipeline run on small files written in the real format (tests, stand-ins): the
#: card's counts and sha256 are not enforced, and the card says it is a stand-in
STANDIN_ENV = "XRBENCH_STANDIN_DATA"


@dataclass(frozen=True)
class IdxDataset:
    """An MNIST-like data set: its card, torchvision's class and folder name, other folder
    names it is found under, system folders that hold it, whether every class has the same
    count, the published arrays' sha256 where known, and what to tell a user who lacks it."""

    card: DatasetCard
    class_folder: str
    names: tuple[str, ...]
    system: tuple[Path, ...]
    balanced: bool
    sha256: str | None
    install: str


def _standin() -> bool:
    return os.environ.get(STANDIN_ENV, "") not in ("", "0")


def _idx_missing(spec: IdxDataset, folders: list[Path]) -> XRBenchError:
    from .idx_files import describe_search

    return XRBenchError(
        f"dataset {spec.card.name!r} not found: looked for its four idx files "
        "({train,t10k}-{images-idx3,labels-idx1}-ubyte, each plain or .gz) in "
        f"{describe_search(folders)}; {spec.install}, or pass --data-dir / set XRBENCH_DATA "
        "to the folder that holds them (flat, or torchvision's "
        f"{spec.class_folder}/raw/ layout)")


def _idx_download(spec: IdxDataset, root: Path, folders: list[Path]) -> None:
    """torchvision's download into ``root/<class>/raw`` (online only); a failed download
    leaves no folder the user did not have."""
    import torchvision

    cls = getattr(torchvision.datasets, spec.class_folder)
    new = [p for p in (root, root / spec.class_folder) if not p.exists()]
    try:
        cls(str(root), train=True, download=True)
    except Exception as exc:  # noqa: BLE001 - no network, bad mirror, disk...
        for p in reversed(new):
            shutil.rmtree(p, ignore_errors=True)  # created by this attempt alone
        raise _idx_missing(spec, folders) from exc


def load_idx_dataset(spec: IdxDataset, root: Path) -> Dataset:
    """Find, read and check an MNIST-like data set (:mod:`xrbench.idx_files`); the card
    returned carries the sha256 of the arrays read (``content_sha256``)."""
    from .idx_files import candidate_folders, check_idx_arrays, find_idx_folder, read_idx_folder

    root = Path(root)
    folders = candidate_folders(spec.class_folder, root, spec.names, spec.system)
    folder = find_idx_folder(folders)
    if folder is None:
        if _offline():
            raise _idx_missing(spec, folders)
        _idx_download(spec, root, folders)
        folder = find_idx_folder(folders)
        if folder is None:
            raise _idx_missing(spec, folders)
    arrays = read_idx_folder(folder)
    card = spec.card
    if _standin():
        source = (f"{card.source}: files at {folder} ({len(arrays.train_labels)} + "
                  f"{len(arrays.test_labels)} images; {STANDIN_ENV}: a stand-in, not checked)")
        card = replace(card, train_size=len(arrays.train_labels),
                       test_size=len(arrays.test_labels), source=source)
    else:
        check_idx_arrays(card.name, arrays, size=card.size, num_classes=card.num_classes,
                         train_size=card.train_size or 0, test_size=card.test_size or 0,
                         balanced=spec.balanced, sha256=spec.sha256)
    card = replace(card, content_sha256=arrays.sha256)
    log.info("%s: read from %s (sha256 %s)", card.name, folder, arrays.sha256[:12])

    def split(images: np.ndarray, labels: np.ndarray) -> TensorSplit:
        return TensorSplit(torch.from_numpy(images.copy())[:, None],
                           torch.from_numpy(labels))

    return Dataset(card, split(arrays.train_images, arrays.train_labels),
                   split(arrays.test_images, arrays.test_labels))


IDX_DATASETS = (
    IdxDataset(DatasetCard("mnist", 1, 28, 10, (0.1307,), (0.3081,), 60000, 10000,
                           "MNIST (LeCun et al.), the four idx files"),
               "MNIST", ("mnist",), (), balanced=False, sha256=None,
               install="put the four files there (torchvision downloads them when online)"),
    IdxDataset(DatasetCard("fashion_mnist", 1, 28, 10, (0.2860,), (0.3530,), 60000, 10000,
                           "Fashion-MNIST (Xiao et al. 2017), the four idx files"),
               "FashionMNIST", ("fashion-mnist", "fashion_mnist"), (DEBIAN_FASHION_MNIST,),
               balanced=True, sha256=FASHION_MNIST_SHA256,
               install="install them with `apt-get install dataset-fashion-mnist` (Debian, "
                       f"into {DEBIAN_FASHION_MNIST}) or put the four files there"),
)


#: by name, looked up when a set is loaded (so a test can point ``system`` elsewhere)
IDX_BY_NAME: dict[str, IdxDataset] = {spec.card.name: spec for spec in IDX_DATASETS}


def _idx_factory(spec: IdxDataset):
    def factory(root: Path) -> Dataset:
        return load_idx_dataset(IDX_BY_NAME[spec.card.name], root)

    factory.card = spec.card  # type: ignore[attr-defined]
    factory.__doc__ = spec.card.source
    return factory


for _spec in IDX_DATASETS:
    datasets.add(_spec.card.name, _idx_factory(_spec), _spec.card.source)
