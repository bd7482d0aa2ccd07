"""Dataset types: the card, the splits and the (card, train, test) triple every loader returns.

Images are pixel space, float32 in [0, 1], NCHW (PROTOCOL.md section 0); the loaders are in
:mod:`xrbench.data` (and :mod:`xrbench.data_idx` for the MNIST-like sets).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from .errors import XRBenchError

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
    #: sha256 of the images and labels read, where the loader computes one (MNIST-like
    #: sets): part of the dataset's identity in entries
    content_sha256: str | None = None

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


def load_rgb(path: str | Path) -> Any:
    """The image file at ``path`` as an 8-bit RGB PIL image, its values scaled from the
    file's own depth: a 16-bit PNG (mode ``I;16``, or ``I`` as PIL opens some) is divided by
    257, so 4065/65535 becomes 16/255 (PIL's ``convert("RGB")`` clips it to 255, white); a
    float image (mode ``F``) is taken as [0, 1]. Everything else converts as PIL does."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        if im.mode.startswith("I;16") or im.mode == "I":
            arr = np.asarray(im, dtype=np.float64)
            if arr.min() < 0 or arr.max() > 65535:
                raise ValueError(f"{im.mode} pixel values outside 0..65535")
            im8 = Image.fromarray(np.rint(arr / 257.0).astype(np.uint8), mode="L")
            return im8.convert("RGB")
        if im.mode == "F":
            arr = np.clip(np.asarray(im, dtype=np.float64), 0.0, 1.0)
            return Image.fromarray(np.rint(arr * 255.0).astype(np.uint8), mode="L").convert("RGB")
        return im.convert("RGB")


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
        from PIL import Image

        path = self.folder.samples[i][0]
        try:
            return self.transform(load_rgb(path))
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            # PIL.UnidentifiedImageError is an OSError; a decompression bomb is neither
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



def _missing(name: str, root: Path, what: str) -> XRBenchError:
    return XRBenchError(
        f"dataset {name!r} not found under {root} and could not be downloaded (offline?): "
        f"{what}, or pass --data-dir / set XRBENCH_DATA to the folder that holds it"
    )


def _offline() -> bool:
    return os.environ.get("XRBENCH_OFFLINE", "") not in ("", "0") or os.environ.get(
        "HF_DATASETS_OFFLINE", ""
    ) not in ("", "0")
