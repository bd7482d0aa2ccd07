"""Per-example values of an entry, kept in a file beside its JSON.

Every stage's per-example output (per pair for the manipulation, per image elsewhere) goes
into one compressed numpy ``.npz`` archive next to the entry, ``<defense>-s<seed>.examples.npz``,
written atomically; the entry names it with its sha256 (``entry["examples"]``). Arrays are
plain numbers and booleans, read back with ``allow_pickle=False``, so opening a file someone
sent you never runs code. Keys are ``<stage>/<field>[/<sub-field>...]``, for example
``manipulation/expl_end`` (P,), ``accuracy/pgd_correct`` (N,), ``rps/cosine/8/255`` (N,),
``retrieval/hits/relex_adv_mask`` (E, N). A paired comparison of two entries on the same
manifest lines rows up by index.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from xrbench.errors import XRBenchError
from xrbench.utils import atomic_write_bytes, sha256_bytes, sha256_file

SUFFIX = ".examples.npz"


def examples_path(entry_path: str | os.PathLike[str]) -> Path:
    """``.../<defense>-s<seed>.json`` -> ``.../<defense>-s<seed>.examples.npz``."""
    p = Path(entry_path)
    return p.with_name(p.name[:-len(".json")] + SUFFIX if p.name.endswith(".json")
                       else p.name + SUFFIX)


def flatten(outputs: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dicts of tensors, arrays and lists of numbers -> ``{"a/b/c": ndarray}``.

    Keys starting with ``_`` (bookkeeping such as ``_seconds``) and values that are not
    numeric arrays are left out.
    """
    out: dict[str, np.ndarray] = {}
    for key, value in outputs.items():
        if str(key).startswith("_"):
            continue
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "/"))
            continue
        if hasattr(value, "detach"):  # a torch tensor
            value = value.detach().cpu().numpy()
        arr = np.asarray(value) if isinstance(value, (list, tuple, np.ndarray)) else None
        if arr is not None and (arr.dtype.kind in "biuf"):
            out[name] = arr
    return out


def write_examples(path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray]) -> str:
    """Write ``arrays`` as a deflate-compressed ``.npz`` atomically; returns its sha256
    (:func:`examples_bytes` makes the bytes)."""
    data = examples_bytes(arrays)
    atomic_write_bytes(path, data)
    return sha256_bytes(data)


def examples_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """``arrays`` as the bytes of a deflate-compressed ``.npz``.

    Members are sorted by name and carry a fixed timestamp, so the same arrays give the
    same bytes (and the same sha256) on every run.
    """
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arrays[name]),
                                      allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, member.getvalue())
    return buf.getvalue()


def read_examples(entry_path: str | os.PathLike[str], entry: Mapping[str, Any]
                  ) -> dict[str, np.ndarray]:
    """The per-example arrays of the entry at ``entry_path``, after checking the file's
    sha256 against ``entry["examples"]``; any problem is an :class:`XRBenchError`."""
    info = entry.get("examples")
    if not info:
        raise XRBenchError(f"entry {entry_path} keeps no per-example values (made before "
                           "they were recorded); re-run its evaluate command")
    path = Path(entry_path).with_name(info["file"])
    if not path.is_file():
        raise XRBenchError(f"per-example file {path} of entry {entry_path} is missing")
    digest = sha256_file(path)
    if digest != info["sha256"]:
        raise XRBenchError(f"per-example file {path} does not match its entry (sha256 "
                           f"{digest[:12]}... vs {info['sha256'][:12]}...); re-run the "
                           "entry's evaluate command with --force")
    try:
        check_sizes(path, entry)
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise XRBenchError(f"per-example file {path} cannot be read: {exc}") from exc


#: bytes per example (image or pair) an entry's arrays may take, all arrays together: the
#: stages keep a few dozen numbers per example (a 20-point Insertion curve, RPS draws x eps);
#: the gallery's images and maps come on top (:data:`FIXED_ALLOWANCE`)
BYTES_PER_EXAMPLE = 4096
FIXED_ALLOWANCE = 64 * 2 ** 20


def check_sizes(path: Path, entry: Mapping[str, Any]) -> None:
    """Refuse, before any array is read, a per-example file whose arrays (as its zip
    directory and each array's header declare them) would take more memory than the entry's
    examples can need: :data:`BYTES_PER_EXAMPLE` per pair and per test image the entry
    counts, plus :data:`FIXED_ALLOWANCE`. A small file that declares huge arrays (a
    decompression bomb, an edited header) is an error, not gigabytes of memory."""
    subset = entry.get("subset") or {}
    dataset = entry.get("dataset") or {}
    examples = sum(int(v) for v in (subset.get("n_pairs"), subset.get("n_images"),
                                    dataset.get("test_size"))
                   if isinstance(v, int) and not isinstance(v, bool) and v > 0)
    limit = FIXED_ALLOWANCE + BYTES_PER_EXAMPLE * examples
    total = 0
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            total += info.file_size
            if total > limit:
                raise XRBenchError(f"per-example file {path} declares {total} bytes of arrays "
                                   f"or more, beyond the {limit} its entry's examples can need")
            with zf.open(info) as f:
                version = np.lib.format.read_magic(f)
                shape, _, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0(f))
            declared = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
            if declared > info.file_size:
                raise XRBenchError(f"per-example file {path}: array {info.filename} declares "
                                   f"{declared} bytes but holds {info.file_size}")
