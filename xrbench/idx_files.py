"""MNIST-like data sets from their four original idx files (LeCun's format), as users have them.

MNIST and Fashion-MNIST are distributed as four files, ``{train,t10k}-images-idx3-ubyte`` and
``{train,t10k}-labels-idx1-ubyte``, usually gzip-compressed. A user may hold them in
torchvision's layout (``<root>/FashionMNIST/raw/``), flat in one folder, or where a system
package put them (Debian's ``dataset-fashion-mnist``: ``/usr/share/datasets/fashion-mnist/``,
read-only). This module finds the first folder that holds all four (compressed or not), reads
them into memory (a ``.gz`` file is decompressed in memory: nothing is ever written beside
the files, so a read-only folder is fine) and checks what it read.

The idx format (http://yann.lecun.com/exdb/mnist/): a big-endian header ``0x00 0x00 <type>
<ndim>`` (type 0x08: unsigned bytes), then ``ndim`` big-endian uint32 sizes, then the data
row-major. Declared sizes are checked against the bytes present before anything is
allocated, so a corrupt or hostile header cannot ask for more memory than the file holds.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import XRBenchError

#: the four files, by role: (stem, expected number of dimensions)
IDX_FILES: dict[str, tuple[str, int]] = {
    "train_images": ("train-images-idx3-ubyte", 3),
    "train_labels": ("train-labels-idx1-ubyte", 1),
    "test_images": ("t10k-images-idx3-ubyte", 3),
    "test_labels": ("t10k-labels-idx1-ubyte", 1),
}
#: where Debian's ``dataset-fashion-mnist`` package installs the four ``.gz`` files
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
#: the most any idx file of an MNIST-like set may declare (MNIST's training images: 47 MB)
MAX_IDX_BYTES = 64 * 1024 * 1024
_UBYTE = 0x08


@dataclass(frozen=True)
class IdxArrays:
    """The four arrays of an MNIST-like data set and where they were read from.

    ``train_images``/``test_images``: uint8 (N, H, W) in 0..255; ``train_labels``/
    ``test_labels``: int64 (N,); ``folder``: the folder that held the files; ``sha256``: hex
    digest of the four arrays' bytes in the order of :data:`IDX_FILES` (what the data set
    *is*, independent of compression and of where the files lie)."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    folder: Path
    sha256: str


def idx_file(folder: Path, stem: str) -> Path | None:
    """``folder/stem`` or ``folder/stem.gz``, whichever is a file (plain first); else None."""
    for name in (stem, stem + ".gz"):
        path = folder / name
        if path.is_file():
            return path
    return None


def candidate_folders(class_folder: str, root: Path, names: Sequence[str] = (),
                      system: Sequence[Path] = ()) -> list[Path]:
    """The folders searched, in order: torchvision's ``root/<class_folder>/raw`` and
    ``root/<class_folder>``, ``root/<name>`` for each of ``names`` (e.g. ``fashion-mnist``,
    so ``--data-dir /usr/share/datasets`` works), ``root`` itself (the files flat in the
    folder given), then the ``system`` folders (where a package installs them)."""
    root = Path(root)
    found = [root / class_folder / "raw", root / class_folder, *(root / n for n in names), root,
             *system]
    unique: list[Path] = []
    for f in found:
        if f not in unique:
            unique.append(f)
    return unique


def find_idx_folder(folders: Sequence[Path]) -> Path | None:
    """The first of ``folders`` that holds all four idx files (each plain or ``.gz``)."""
    for folder in folders:
        if all(idx_file(folder, stem) is not None for stem, _ in IDX_FILES.values()):
            return folder
    return None


def _read_exact(fh, n: int, path: Path) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise XRBenchError(f"{path} is truncated: expected {n} more bytes, found {len(data)}; "
                           "download the file again")
    return data


def read_idx(path: Path, ndim: int, max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """One idx file of unsigned bytes as a uint8 array of ``ndim`` dimensions.

    A ``.gz`` file is decompressed in memory. A wrong magic number, a type other than
    unsigned bytes, a number of dimensions other than ``ndim``, a declared size over
    ``max_bytes``, or fewer or more data bytes than declared is an :class:`XRBenchError`
    naming the file."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            head = _read_exact(fh, 4, path)
            if head[0] != 0 or head[1] != 0 or head[2] != _UBYTE or head[3] != ndim:
                raise XRBenchError(
                    f"{path} is not an idx file of unsigned bytes with {ndim} dimension"
                    f"{'s' if ndim != 1 else ''} (header {head.hex()}, expected "
                    f"000008{ndim:02x}); is it the right file?")
            dims = np.frombuffer(_read_exact(fh, 4 * ndim, path), dtype=">u4").astype(np.int64)
            size = int(np.prod(dims))
            if size > max_bytes:
                raise XRBenchError(f"{path} declares {tuple(int(d) for d in dims)} = {size} bytes,"
                                   f" more than any MNIST-like file holds ({max_bytes}); the "
                                   "file is corrupt")
            data = _read_exact(fh, size, path)
            if fh.read(1):
                raise XRBenchError(f"{path} holds more bytes than its header declares "
                                   f"{tuple(int(d) for d in dims)}; the file is corrupt")
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise XRBenchError(f"cannot read {path} ({type(exc).__name__}: {exc}); it is truncated "
                           "or not a gzip file: download it again") from None
    return np.frombuffer(data, dtype=np.uint8).reshape(tuple(int(d) for d in dims))


def arrays_sha256(arrays: Sequence[np.ndarray]) -> str:
    """sha256 (hex) of the arrays' shapes and bytes, in order."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(repr(tuple(a.shape)).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def read_idx_folder(folder: Path) -> IdxArrays:
    """The four arrays from ``folder`` (:func:`find_idx_folder` found it), labels as int64."""
    got = {}
    for role, (stem, ndim) in IDX_FILES.items():
        path = idx_file(folder, stem)
        if path is None:
            raise XRBenchError(f"{folder} has no {stem} (or {stem}.gz)")
        got[role] = read_idx(path, ndim)
    digest = arrays_sha256([got[r] for r in IDX_FILES])
    return IdxArrays(got["train_images"], got["train_labels"].astype(np.int64),
                     got["test_images"], got["test_labels"].astype(np.int64),
                     folder, digest)


def check_idx_arrays(name: str, arrays: IdxArrays, *, size: int, num_classes: int,
                     train_size: int, test_size: int, balanced: bool,
                     sha256: str | None = None) -> None:
    """Check what was read against the data set's card: image side, counts per split, labels
    in ``0..num_classes-1`` with every class present (``balanced``: the same count in each
    class, as Fashion-MNIST's 6,000 / 1,000), and, where the card knows it, the sha256 of the
    arrays. A mismatch is an :class:`XRBenchError` naming the folder and what differs."""
    where = f"dataset {name!r} read from {arrays.folder}"
    for split, images, labels, n in (("train", arrays.train_images, arrays.train_labels,
                                      train_size),
                                     ("test", arrays.test_images, arrays.test_labels,
                                      test_size)):
        if images.shape != (n, size, size) or labels.shape != (n,):
            raise XRBenchError(f"{where}: the {split} split has images {tuple(images.shape)} and "
                               f"labels {tuple(labels.shape)}, expected ({n}, {size}, {size}) and "
                               f"({n},); these are not the {name} files")
        counts = np.bincount(labels, minlength=num_classes)
        if labels.min() < 0 or counts.shape[0] != num_classes or (counts == 0).any():
            raise XRBenchError(f"{where}: the {split} labels are not the classes "
                               f"0..{num_classes - 1} (counts {counts.tolist()})")
        if balanced and len(set(counts.tolist())) != 1:
            raise XRBenchError(f"{where}: the {split} split is not balanced (class counts "
                               f"{counts.tolist()}, expected {n // num_classes} each)")
    if sha256 is not None and arrays.sha256 != sha256:
        raise XRBenchError(f"{where}: its images and labels (sha256 {arrays.sha256[:16]}...) are "
                           f"not the published {name} data set (sha256 {sha256[:16]}...); the "
                           "files were changed or are another data set: get the original files")


def describe_search(folders: Sequence[Path]) -> str:
    """The folders looked in, for a not-found message."""
    return ", ".join(os.fspath(f) for f in folders)
