"""Datasets: a card per dataset and the real loaders (scikit-learn, torchvision, Hugging Face).

Every dataset yields images in pixel space, float32 in [0, 1], NCHW (PROTOCOL.md section 0);
normalisation is the model's first layer, so the card carries the mean and std the model
needs. Splits are held as tensors in memory where they fit (all built-ins) and read lazily
from disk for ``imagefolder:PATH``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from .data_base import (GREY_EPS_PGD, RETRIEVAL_EPS_GREY, RETRIEVAL_EPS_RGB, RGB_EPS_PGD,  # noqa: F401
                        RPS_EPS, Dataset, DatasetCard, ImageSplit, LazyImageSplit, TensorSplit,
                        _missing, _offline)
from .errors import XRBenchError
from .registry import datasets
from .utils import data_dir as default_data_dir
from .utils import sha256_bytes

log = logging.getLogger(__name__)


def load_dataset(name: str, data_dir: str | os.PathLike[str] | None = None, **kwargs: Any) -> Dataset:
    """Load a registered dataset by name (``digits``, ``cifar10``, ``imagefolder:PATH``...).

    ``data_dir`` defaults to ``$XRBENCH_DATA`` or ``<cache>/data``.
    """
    root = default_data_dir(data_dir)
    return datasets.create(name, root=root, **kwargs)


def dataset_card(name: str, data_dir: str | os.PathLike[str] | None = None) -> DatasetCard:
    """The card of a dataset without loading its images where that is possible."""
    entry = datasets.get_entry(name)
    card = getattr(entry.obj, "card", None)
    if isinstance(card, DatasetCard):
        return card
    return load_dataset(name, data_dir).card


# --- digits (embedded default) ---------------------------------------------------------------

DIGITS_CARD = DatasetCard(
    name="digits", channels=1, size=8, num_classes=10,
    # mean/std of the training split (values/16); tests/test_data.py recomputes them.
    mean=(0.3056,), std=(0.3761,), train_size=1257, test_size=540,
    source="scikit-learn load_digits; stratified 70/30 split, random_state=0",
)


@datasets.register("digits", "scikit-learn 8x8 handwritten digits (embedded, offline default)")
def _digits(root: Path | None = None) -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    xtr, xte, ytr, yte = train_test_split(
        x, d.target, test_size=0.3, stratify=d.target, random_state=0
    )
    return Dataset(
        DIGITS_CARD,
        TensorSplit(torch.from_numpy(xtr), torch.from_numpy(ytr)),
        TensorSplit(torch.from_numpy(xte), torch.from_numpy(yte)),
    )


_digits.card = DIGITS_CARD  # type: ignore[attr-defined]


# --- torchvision datasets ----------------------------------------------------------------------

def _md5_file(path: Path) -> str:
    h = hashlib.md5()  # torchvision's integrity check is md5; used only to name a bad file
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cifar_integrity_error(cls: Any, name: str, root: Path) -> XRBenchError | None:
    """Why torchvision rejected a CIFAR folder that is there, or None when it is not there.

    torchvision reports a folder whose files fail its md5 check exactly as a missing one
    ("Dataset not found or corrupted"). When ``root/<cls.base_folder>`` exists, this checks
    its files in torchvision's order (training batches, test batch, metadata) with
    torchvision's own ``check_integrity`` and returns an error naming the first file that is
    missing or whose md5 differs from the published one, and what to do about it.
    """
    from torchvision.datasets import cifar as tv_cifar

    folder = Path(root) / cls.base_folder
    if not folder.is_dir():
        return None
    files = [*cls.train_list, *cls.test_list, [cls.meta["filename"], cls.meta["md5"]]]
    archive = {"cifar-10-batches-py": "cifar-10-python.tar.gz",
               "cifar-100-python": "cifar-100-python.tar.gz"}.get(cls.base_folder, "the archive")
    advice = (f"delete {folder} and extract {archive} (from https://www.cs.toronto.edu/~kriz/) "
              f"into {root} again, or run once online to download it")
    for fname, md5 in files:
        path = folder / fname
        if not path.is_file():
            return XRBenchError(f"dataset {name!r}: found {folder}, but its file {fname!r} is "
                                f"missing (an incomplete extraction?); {advice}")
        if not tv_cifar.check_integrity(str(path), md5):
            return XRBenchError(
                f"dataset {name!r}: found {folder}, but its file {fname!r} fails torchvision's "
                f"md5 integrity check (md5 {_md5_file(path)}, expected {md5}: the download or "
                f"extraction is incomplete, or the file was changed); {advice}")
    return None


def _torchvision(cls_name: str, name: str, root: Path, hint: str) -> tuple[Any, Any]:
    import torchvision

    cls = getattr(torchvision.datasets, cls_name)
    splits = []
    for train in (True, False):
        try:
            ds = cls(str(root), train=train, download=False)
        except RuntimeError:
            if hasattr(cls, "base_folder"):  # CIFAR: there but corrupt is not "not found"
                corrupt = cifar_integrity_error(cls, name, root)
                if corrupt is not None:
                    raise corrupt from None
            if _offline():
                raise _missing(name, root, hint) from None
            # a failed download must not leave folders the user did not have (an empty
            # MNIST/raw, or a --data-dir that did not exist)
            new = [p for p in (root, root / cls_name) if not p.exists()]
            try:
                ds = cls(str(root), train=train, download=True)
            except Exception as exc:  # noqa: BLE001 - no network, bad mirror, disk...
                for p in reversed(new):
                    shutil.rmtree(p, ignore_errors=True)  # created by this attempt alone
                raise _missing(name, root, hint) from exc
        splits.append(ds)
    return splits[0], splits[1]


def _torchvision_dataset(cls_name: str, card: DatasetCard, hint: str):
    def factory(root: Path) -> Dataset:
        tr, te = _torchvision(cls_name, card.name, Path(root), hint)

        def to_split(ds: Any) -> TensorSplit:
            data = torch.as_tensor(np.asarray(ds.data))
            data = data[:, None] if data.ndim == 3 else data.permute(0, 3, 1, 2)
            return TensorSplit(data.contiguous(), torch.as_tensor(np.asarray(ds.targets)))

        return Dataset(card, to_split(tr), to_split(te))

    factory.card = card  # type: ignore[attr-defined]
    factory.__doc__ = f"{card.source}"
    return factory


_TV = [
    ("CIFAR10", DatasetCard("cifar10", 3, 32, 10, (0.4914, 0.4822, 0.4465),
                            (0.2470, 0.2435, 0.2616), 50000, 10000, "torchvision CIFAR10"),
     "put the extracted cifar-10-batches-py folder there"),
    ("CIFAR100", DatasetCard("cifar100", 3, 32, 100, (0.5071, 0.4865, 0.4409),
                             (0.2673, 0.2564, 0.2762), 50000, 10000, "torchvision CIFAR100"),
     "put the extracted cifar-100-python folder there"),
]
for _cls, _card, _hint in _TV:
    datasets.add(_card.name, _torchvision_dataset(_cls, _card, _hint), _card.source)


# --- MNIST-like data sets (registered by xrbench.data_idx) -------------------------------------

from .data_idx import (FASHION_MNIST_SHA256, IDX_BY_NAME, IDX_DATASETS, STANDIN_ENV,  # noqa: E402,F401
                       IdxDataset, load_idx_dataset)


# --- Tiny ImageNet -----------------------------------------------------------------------------

TINY_CARD = DatasetCard(
    "tinyimagenet", 3, 64, 200, (0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821),
    100000, 10000, "Tiny ImageNet (tiny-imagenet-200 folder, saved or hub HF dataset)",
)
TINY_HUB_ID = "zh-plus/tiny-imagenet"


def _pil_batch_to_uint8(images: Iterable[Any], size: int) -> torch.Tensor:
    arr = np.stack(
        [np.asarray(im.convert("RGB").resize((size, size)), dtype=np.uint8) for im in images]
    )
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def _tiny_from_folder(folder: Path) -> Dataset:
    from PIL import Image

    wnids = (folder / "wnids.txt").read_text().split()
    index = {w: i for i, w in enumerate(wnids)}
    tr_files, tr_labels = [], []
    for w in wnids:
        for f in sorted((folder / "train" / w / "images").glob("*.JPEG")):
            tr_files.append(f)
            tr_labels.append(index[w])
    te_files, te_labels = [], []
    for line in (folder / "val" / "val_annotations.txt").read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 2:
            te_files.append(folder / "val" / "images" / parts[0])
            te_labels.append(index[parts[1]])

    def load(files: list[Path]) -> torch.Tensor:
        # a generator: each file is opened, decoded and closed before the next is opened
        # (a list would hold all 100000 training files open at once: EMFILE)
        return _pil_batch_to_uint8((Image.open(f) for f in files), 64)

    return Dataset(
        TINY_CARD,
        TensorSplit(load(tr_files), torch.tensor(tr_labels)),
        TensorSplit(load(te_files), torch.tensor(te_labels)),
    )


def _tiny_from_hf(dd: Any) -> Dataset:
    test_key = "valid" if "valid" in dd else ("validation" if "validation" in dd else "test")

    def to_split(ds: Any) -> TensorSplit:
        return TensorSplit(_pil_batch_to_uint8(list(ds["image"]), 64), torch.tensor(ds["label"]))

    return Dataset(TINY_CARD, to_split(dd["train"]), to_split(dd[test_key]))


@datasets.register("tinyimagenet", "Tiny ImageNet 64x64, 200 classes (local folder or Hugging Face)")
def _tinyimagenet(root: Path) -> Dataset:
    root = Path(root)
    folder = root / "tiny-imagenet-200"
    if (folder / "wnids.txt").exists():
        return _tiny_from_folder(folder)
    import datasets as hf

    saved = root / "tinyimagenet-hf"
    if saved.exists():
        return _tiny_from_hf(hf.load_from_disk(str(saved)))
    if not _offline():
        try:
            return _tiny_from_hf(hf.load_dataset(TINY_HUB_ID, cache_dir=str(root / "hf-cache")))
        except Exception as exc:  # noqa: BLE001 - no network or no such hub copy
            raise _missing("tinyimagenet", root, "put the tiny-imagenet-200 folder or a "
                           "datasets.save_to_disk copy named tinyimagenet-hf there") from exc
    raise _missing("tinyimagenet", root, "put the tiny-imagenet-200 folder or a "
                   "datasets.save_to_disk copy named tinyimagenet-hf there")


_tinyimagenet.card = TINY_CARD  # type: ignore[attr-defined]


# --- imagefolder:PATH ---------------------------------------------------------------------------

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@datasets.register("imagefolder", "torchvision ImageFolder at PATH with train/ and val/ (or test/)",
                   takes_arg=True, arg_name="PATH")
def _imagefolder(path: str, root: Path | None = None, size: int = 64) -> Dataset:
    from torchvision.datasets import ImageFolder

    base = Path(path).expanduser()
    test_dir = next((base / d for d in ("val", "test") if (base / d).is_dir()), None)
    if not (base / "train").is_dir() or test_dir is None:
        raise XRBenchError(
            f"imagefolder: {base} must contain train/ and val/ (or test/), each with one "
            "folder of images per class"
        )
    for split in (base / "train", test_dir):
        check_folder_links(split)
    try:
        tr, te = ImageFolder(str(base / "train")), ImageFolder(str(test_dir))
    except FileNotFoundError as exc:  # no class folder, or a class folder without images
        raise XRBenchError(f"imagefolder: {str(exc).rstrip('.')}. Each of train/ and "
                           f"{test_dir.name}/ needs "
                           "one folder of images per class") from None
    if tr.classes != te.classes:
        raise XRBenchError(f"imagefolder: {base}/train and {test_dir} have different classes")
    digest = imagefolder_digest(base, [tr, te], size)
    card = DatasetCard(f"imagefolder:{digest[:12]}", 3, size, len(tr.classes), IMAGENET_MEAN,
                       IMAGENET_STD, len(tr), len(te),
                       f"torchvision ImageFolder at {base} (name: sha256 {digest[:12]} of its "
                       f"{len(tr) + len(te)} images' relative paths and contents)")
    return Dataset(card, LazyImageSplit(tr, size), LazyImageSplit(te, size))


def check_folder_links(split: Path) -> None:
    """Refuse folder links ImageFolder would follow into wrong labels: any link to a folder
    inside a class folder (``train/a/loop -> ..`` walks the whole split again under class
    ``a``, relabelling every other class), and a class folder that links into its own split
    (a loop, or one class's images twice). A class folder that links elsewhere is fine."""
    split_real = split.resolve()
    for dirpath, dirnames, _ in os.walk(split, followlinks=False):
        depth = len(Path(dirpath).relative_to(split).parts)
        for d in dirnames:
            link = Path(dirpath) / d
            if not link.is_symlink():
                continue
            target = link.resolve()
            inside = target == split_real or split_real in target.parents \
                or target in split_real.parents
            if depth >= 1 or inside:
                raise XRBenchError(
                    f"imagefolder: {link} is a link to the folder {target}; xrbench does not "
                    "follow it (a link inside a class folder, or into the split itself, gives "
                    "images the wrong class or loops): put the images themselves there")


def imagefolder_digest(base: Path, folders: list[Any], size: int,
                       cache_root: Path | None = None) -> str:
    """sha256 (hex) identifying an ``imagefolder:PATH`` dataset wherever it lies.

    Hashed: every image file the splits read (``folders``: torchvision ``ImageFolder``s, in
    train, test order) as its path relative to ``base`` (which names its split and class)
    with the sha256 of its bytes, and the side ``size`` the images are resized to. So
    rewriting images (even with the same names and sizes) gives another dataset, whose
    checkpoints, subset and stages are computed anew; moving or renaming the folder keeps
    them (``base`` itself is not hashed); files ImageFolder skips do not count.

    Reading every byte on every run would be slow for large folders, so each file's sha256 is
    kept in an index in the cache (``imagefolder-index/``), reused while the file's size and
    modification time are the same (the cheap check; a rewrite changes the time) and
    computed again otherwise.
    """
    from .utils import atomic_write_text, cache_dir, sha256_file

    root = os.fspath(base)
    index_path = ((cache_root or cache_dir()) / "imagefolder-index"
                  / f"{sha256_bytes(os.path.realpath(root).encode())[:16]}.json")
    try:
        known = json.loads(index_path.read_text())
        known = known if isinstance(known, dict) else {}
    except (OSError, ValueError):
        known = {}
    index, rows = {}, []
    for folder in folders:
        for path, _ in folder.samples:
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            st = os.stat(path)
            rec = known.get(rel)
            if (isinstance(rec, list) and len(rec) == 3 and rec[0] == st.st_size
                    and rec[1] == st.st_mtime_ns):
                digest = str(rec[2])
            else:
                digest = sha256_file(path)
            index[rel] = [st.st_size, st.st_mtime_ns, digest]
            rows.append([rel, digest])
    if index != known:
        try:
            atomic_write_text(index_path, json.dumps(index, separators=(",", ":")))
        except OSError:  # a read-only cache: hashed again next time, nothing lost
            pass
    body = json.dumps({"files": rows, "image_size": size, "identity": "content"},
                      separators=(",", ":"))
    return sha256_bytes(body.encode())
