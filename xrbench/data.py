"""Datasets: a card per dataset and the real loaders (scikit-learn, torchvision, Hugging Face).

Every dataset yields images in pixel space, float32 in [0, 1], NCHW (PROTOCOL.md section 0);
normalisation is the model's first layer, so the card carries the mean and std the model
needs. Splits are held as tensors in memory where they fit (all built-ins) and read lazily
from disk for ``imagefolder:PATH``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Protocol

import numpy as np
import torch

from .errors import XRBenchError
from .registry import datasets
from .utils import atomic_write_bytes, sha256_bytes
from .utils import data_dir as default_data_dir

log = logging.getLogger(__name__)

GREY_EPS_PGD = 0.3  # SEP paper, section 5.1
RGB_EPS_PGD = 8 / 255
RPS_EPS = (4 / 255, 8 / 255, 16 / 255)  # Joo et al. 2023, RobustAGA test_rps.py
RETRIEVAL_EPS_RGB = (2 / 255, 4 / 255, 8 / 255)  # RelEx, PROTOCOL 5.5
RETRIEVAL_EPS_GREY = (0.1, 0.2, 0.3)


@dataclass(frozen=True)
class DatasetCard:
    """What the protocol needs to know about a dataset.

    ``size`` is the side S of the S x S images in pixels; ``mean``/``std`` are per channel in
    pixel units ([0, 1]); ``eps_pgd`` is the L-inf PGD radius in pixel units.
    """

    name: str
    channels: int
    size: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_size: int | None = None
    test_size: int | None = None
    source: str = ""
    eps_pgd: float = field(default=-1.0)
    rps_eps: tuple[float, ...] = RPS_EPS
    retrieval_eps: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        grey = self.channels == 1
        if self.eps_pgd < 0:
            object.__setattr__(self, "eps_pgd", GREY_EPS_PGD if grey else RGB_EPS_PGD)
        if not self.retrieval_eps:
            object.__setattr__(
                self, "retrieval_eps", RETRIEVAL_EPS_GREY if grey else RETRIEVAL_EPS_RGB
            )

    @property
    def grey(self) -> bool:
        return self.channels == 1

    @property
    def mean_std(self) -> float:
        """Mean of the per-channel std: converts a normalised-space step to pixel units."""
        return float(sum(self.std) / len(self.std))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ImageSplit(Protocol):
    """One split: ``len(split)`` images, fetched in batches as (x, y).

    ``x``: float32 (B, C, S, S) in [0, 1]; ``y``: int64 (B,).
    """

    def __len__(self) -> int: ...

    def get_batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    @property
    def targets(self) -> torch.Tensor: ...


class TensorSplit:
    """A split held in memory: ``images`` uint8 (N, C, S, S) in 0..255 or float in [0, 1]."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if images.ndim != 4:
            raise ValueError(f"images must be NCHW, got shape {tuple(images.shape)}")
        self.images = images
        self.labels = labels.long()

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def targets(self) -> torch.Tensor:
        return self.labels

    def get_batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[indices]
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        return x, self.labels[indices]


class LazyImageSplit:
    """A split read from image files on demand (``imagefolder:PATH``)."""

    def __init__(self, folder: Any, size: int) -> None:
        from torchvision import transforms

        self.folder = folder
        self.transform = transforms.Compose(
            [transforms.Resize(size), transforms.CenterCrop(size), transforms.ToTensor()]
        )
        self._targets = torch.tensor(folder.targets, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.folder)

    @property
    def targets(self) -> torch.Tensor:
        return self._targets

    def _image(self, i: int) -> torch.Tensor:
        """One image as (3, size, size) in [0, 1]. A file that cannot be decoded is an error
        naming it, not a skip: skipping would silently change the split, and with it every
        index of the subset manifest."""
        path = self.folder.samples[i][0]
        try:
            return self.transform(self.folder.loader(path))
        except (OSError, ValueError) as exc:  # PIL.UnidentifiedImageError is an OSError
            raise XRBenchError(f"imagefolder: cannot read image {path} ({type(exc).__name__}: "
                               f"{exc}); fix or remove the file") from None

    def get_batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xs = [self._image(int(i)) for i in indices]
        return torch.stack(xs), self._targets[indices]


@dataclass
class Dataset:
    """A card and its ``train`` and ``test`` splits."""

    card: DatasetCard
    train: ImageSplit
    test: ImageSplit


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


def _missing(name: str, root: Path, what: str) -> XRBenchError:
    return XRBenchError(
        f"dataset {name!r} not found under {root} and could not be downloaded (offline?): "
        f"{what}, or pass --data-dir / set XRBENCH_DATA to the folder that holds it"
    )


def _offline() -> bool:
    return os.environ.get("XRBENCH_OFFLINE", "") not in ("", "0") or os.environ.get(
        "HF_DATASETS_OFFLINE", ""
    ) not in ("", "0")


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


def extract_mnist_gz(cls: Any, root: Path) -> list[Path]:
    """Decompress ``<root>/<Class>/raw/*-ubyte.gz`` where only the ``.gz`` file is there.

    torchvision reads the decompressed idx files and only extracts the ``.gz`` archives
    inside its download step; the original archives are accepted here, as torchvision would
    after a download: each is decompressed beside itself (atomically) and kept. Returns the
    files written. A truncated or non-gzip file, or a read-only folder, is an
    :class:`XRBenchError` naming the file.
    """
    raw = Path(root) / cls.__name__ / "raw"
    written: list[Path] = []
    for url, _md5 in cls.resources:
        gz = raw / os.path.basename(url)
        target = raw / os.path.splitext(gz.name)[0]
        if target.exists() or not gz.is_file():
            continue
        try:
            with gzip.open(gz, "rb") as src:
                data = src.read()  # at most 47 MB (MNIST's training images)
        except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
            raise XRBenchError(f"cannot decompress {gz} ({type(exc).__name__}: {exc}); it is "
                               "truncated or not a gzip file: download it again, or put the "
                               f"decompressed {target.name} beside it") from None
        try:
            atomic_write_bytes(target, data)
        except OSError as exc:
            raise XRBenchError(f"cannot write {target} beside {gz.name} ({exc.strerror or exc});"
                               f" make {raw} writable, or decompress the file there yourself "
                               f"(gunzip -k {gz})") from None
        log.info("decompressed %s (torchvision reads the idx file)", gz)
        written.append(target)
    return written


def _torchvision(cls_name: str, name: str, root: Path, hint: str) -> tuple[Any, Any]:
    import torchvision

    cls = getattr(torchvision.datasets, cls_name)
    if hasattr(cls, "resources") and (root / cls_name / "raw").is_dir():
        extract_mnist_gz(cls, root)  # MNIST-like: the original .gz files are enough
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
    ("MNIST", DatasetCard("mnist", 1, 28, 10, (0.1307,), (0.3081,), 60000, 10000,
                          "torchvision MNIST"),
     "put MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte (or the same files "
     "with .gz) there"),
    ("FashionMNIST", DatasetCard("fashion_mnist", 1, 28, 10, (0.2860,), (0.3530,), 60000, 10000,
                                 "torchvision FashionMNIST"),
     "put FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte (or the same "
     "files with .gz) there"),
    ("CIFAR10", DatasetCard("cifar10", 3, 32, 10, (0.4914, 0.4822, 0.4465),
                            (0.2470, 0.2435, 0.2616), 50000, 10000, "torchvision CIFAR10"),
     "put the extracted cifar-10-batches-py folder there"),
    ("CIFAR100", DatasetCard("cifar100", 3, 32, 100, (0.5071, 0.4865, 0.4409),
                             (0.2673, 0.2564, 0.2762), 50000, 10000, "torchvision CIFAR100"),
     "put the extracted cifar-100-python folder there"),
]
for _cls, _card, _hint in _TV:
    datasets.add(_card.name, _torchvision_dataset(_cls, _card, _hint), _card.source)


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
    tr, te = ImageFolder(str(base / "train")), ImageFolder(str(test_dir))
    if tr.classes != te.classes:
        raise XRBenchError(f"imagefolder: {base}/train and {test_dir} have different classes")
    digest = imagefolder_digest(base, [tr, te], size)
    card = DatasetCard(f"imagefolder:{digest[:12]}", 3, size, len(tr.classes), IMAGENET_MEAN,
                       IMAGENET_STD, len(tr), len(te),
                       f"torchvision ImageFolder at {base} (name: sha256 {digest[:12]} of its "
                       f"{len(tr) + len(te)} images' relative paths and sizes)")
    return Dataset(card, LazyImageSplit(tr, size), LazyImageSplit(te, size))


def imagefolder_digest(base: Path, folders: list[Any], size: int) -> str:
    """sha256 (hex) identifying an ``imagefolder:PATH`` dataset wherever it lies.

    Hashed: every image file the splits read (``folders``: torchvision ``ImageFolder``s, in
    train, test order) as its path relative to ``base`` (which names its split and class)
    with its size in bytes, and the side ``size`` the images are resized to. Not hashed:
    ``base`` itself, so moving or renaming the folder keeps the dataset's cache keys, subset
    manifest and leaderboard table; files ImageFolder skips (non-images) do not count. One
    ``stat`` per image: a few seconds for ImageNet's 1.3 million files on a local disk.
    """
    root = os.fspath(base)
    rows = [[os.path.relpath(path, root).replace(os.sep, "/"), os.stat(path).st_size]
            for folder in folders for path, _ in folder.samples]
    body = json.dumps({"files": rows, "image_size": size}, separators=(",", ":"))
    return sha256_bytes(body.encode())
