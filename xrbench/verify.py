"""External attacks as data (PROTOCOL.md 5.8; ``xrbench verify ENTRY SUBMISSION.npz``).

An attack run elsewhere is submitted as the manipulated images it found, one per pair of a
published entry, in an ``.npz`` file holding one array ``x_adv`` (P, C, H, W), pixels in
[0, 1], one row per pair the entry's ensemble ran on, in the order its examples file lists
them (``ensemble/pairs``: (victim, target) indices into the subset; every ordered pair at
``quick``, a fixed subset at ``paper`` and ``smoke``). xrbench checks it on that entry's own
checkpoint (an external evaluation in RobustBench's sense): it recomputes ``L_e`` and the
predicted class of every x' (:func:`xrbench.attacks.ensemble.judge`), keeps per pair the lower
of the entry's best-known worst case and the submission's L_e where the submission keeps the
victim's class, and writes an updated entry whose ``metrics.ensemble.best_known`` names the
submission and its sha256 (its per-pair values in the examples file,
``ensemble/expl_end_best_known``).

The file is read without pickle, and its size is checked before any array is read: exactly one
member ``x_adv.npy``, of float32 or float64, of the entry's shape, no larger than that shape
needs (a decompression bomb stops at the zip directory).
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import XRBenchError
from .utils import sha256_file

#: header room an .npy member may take beyond its data (the format pads headers to 64 bytes;
#: numpy writes at most a few hundred)
NPY_HEADER_MAX = 4096


@dataclass
class Verified:
    """What :func:`verify` did: the updated entry, where it was written, how many pairs the
    submission improved, its share of pairs that kept the class, its own mean L_e."""

    entry: dict[str, Any]
    path: Path
    pairs_improved: int
    class_kept: float
    expl_end: float


def read_submission(path: str | os.PathLike[str], shape: tuple[int, ...]) -> np.ndarray:
    """The ``x_adv`` array of the submission at ``path``, checked to be ``shape`` (P, C, H, W),
    float, finite and in [0, 1]; sizes are checked before the data is read. Any problem is an
    :class:`XRBenchError` of one line."""
    path = Path(path)
    if not path.is_file():
        raise XRBenchError(f"submission not found: {path}")
    want = int(np.prod(shape))
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise XRBenchError(f"submission {path} is not an .npz file ({exc}); save it with "
                           "numpy.savez(path, x_adv=x_adv)") from None
    with zf:
        names = zf.namelist()
        if names != ["x_adv.npy"]:
            raise XRBenchError(f"submission {path} must hold exactly one array, x_adv "
                               f"(found {', '.join(names) or 'nothing'})")
        info = zf.getinfo("x_adv.npy")
        if info.file_size > want * 8 + NPY_HEADER_MAX:
            raise XRBenchError(f"submission {path}: x_adv takes {info.file_size} bytes, more "
                               f"than {len(shape) and shape[0]} pairs of shape {shape[1:]} can "
                               f"(the entry has {shape[0]} pairs)")
        with zf.open(info) as f:
            try:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    got_shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                else:
                    got_shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            except ValueError as exc:
                raise XRBenchError(f"submission {path}: x_adv is not a numpy array "
                                   f"({exc})") from None
            if dtype not in (np.dtype("float32"), np.dtype("float64")):
                raise XRBenchError(f"submission {path}: x_adv is {dtype}, not float32 or "
                                   "float64 pixels in [0, 1]")
            if tuple(got_shape) != tuple(shape):
                raise XRBenchError(f"submission {path}: x_adv has shape {tuple(got_shape)}, "
                                   f"the entry's pairs need {tuple(shape)} (one image per "
                                   "pair of ensemble/pairs in its examples file, in that "
                                   "order)")
            data = f.read(want * dtype.itemsize + 1)
    if len(data) != want * dtype.itemsize:
        raise XRBenchError(f"submission {path}: x_adv holds {len(data)} bytes, not the "
                           f"{want * dtype.itemsize} its header declares")
    arr = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    if np.isnan(arr).any():
        raise XRBenchError(f"submission {path}: x_adv holds NaN")
    if (arr < 0).any() or (arr > 1).any():
        raise XRBenchError(f"submission {path}: x_adv has values outside [0, 1] (pixels "
                           f"range {float(arr.min()):g} .. {float(arr.max()):g})")
    return np.array(arr, dtype=np.float32, order="C")  # a writable copy


def verify(entry_path: str | os.PathLike[str], submission: str | os.PathLike[str], *,
           checkpoint: str | os.PathLike[str] | None = None,
           out: str | os.PathLike[str] | None = None, replace: bool = False,
           device: str = "auto", data_dir: str | os.PathLike[str] | None = None,
           cache_root: Path | None = None, progress: bool = False) -> Verified:
    """Check ``submission`` against the entry at ``entry_path`` (module docstring) and write
    the updated entry under ``out`` (the usual ``<dataset>/<model>/...`` layout; an existing
    entry there is replaced only with ``replace``), or in place of the entry with
    ``replace`` and no ``out``. ``checkpoint``: the entry's weights, by default
    ``<defense>-s<seed>.pt`` beside it; its sha256 must be the entry's."""
    from .attacks.ensemble import judge
    from .chunking import chunk_slices
    from .engine.runtime import metric
    from .explainers import get_explainer
    from .leaderboard.examples import read_examples
    from .leaderboard.schema import entry_path as layout_path
    from .leaderboard.schema import read_entry, write_entry
    from .protocol import get_profile
    from .utils import resolve_device

    entry_path = Path(entry_path)
    entry = read_entry(entry_path)
    if out is None and not replace:
        raise XRBenchError("give --out DIR for the updated entry, or --replace to update "
                           f"{entry_path} in place")
    arrays = dict(read_examples(entry_path, entry))
    prev_key = ("ensemble/expl_end_best_known" if "ensemble/expl_end_best_known" in arrays
                else "ensemble/expl_end_worst")
    if prev_key not in arrays:
        raise XRBenchError(f"{entry_path} has no worst-case ensemble (PROTOCOL 5.8); score it "
                           "with this xrbench first (xrbench evaluate ... --replace)")
    # the ensemble's pairs: every pair of the manipulation, or the profile's fixed subset
    # (paper, smoke), in the order its examples file lists them
    pairs = torch.from_numpy(np.asarray(arrays.get("ensemble/pairs"), dtype=np.int64))
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise XRBenchError(f"{entry_path}: its examples file lists no ensemble pairs; re-score "
                           "it with this xrbench (xrbench evaluate ... --replace)")
    n_pairs = int(pairs.shape[0])
    ds_info = entry["dataset"]
    shape = (n_pairs, int(ds_info["channels"]), int(ds_info["size"]), int(ds_info["size"]))
    x_adv = torch.from_numpy(read_submission(submission, shape))  # refuse before any work
    digest = sha256_file(submission)

    dev = resolve_device(device)
    net, images = _model_and_images(entry, entry_path, checkpoint, dev, data_dir, cache_root)
    explainer = get_explainer(entry["explainer"]["name"])
    prof = get_profile(entry["protocol"]["profile"])
    expl = torch.empty(n_pairs, dtype=torch.float64)
    kept = torch.empty(n_pairs, dtype=torch.bool)
    for chunk in chunk_slices(n_pairs, prof.pair_batch):
        idx = pairs[chunk]
        e, k = judge(net, explainer, images[idx[:, 0]], images[idx[:, 1]],
                     x_adv[chunk].to(dev))
        expl[chunk], kept[chunk] = e.double().cpu(), k.cpu()
    prev = torch.from_numpy(np.asarray(arrays[prev_key], dtype=np.float64))
    better = kept & (expl < prev)
    best = torch.where(better, expl, prev)
    arrays["ensemble/expl_end_best_known"] = best.numpy()

    victims = pairs[:, 0]
    best_known = dict((entry["metrics"].get("ensemble") or {}).get("best_known") or {})
    subs = list(best_known.get("submissions") or [])
    subs.append({"file": Path(submission).name, "sha256": digest,
                 "pairs_improved": int(better.sum()),
                 "class_kept": float(kept.double().mean()),
                 "expl_end": float(expl.mean())})
    best_known = {"expl_end": metric(best, prof.bootstrap_resamples, int(entry["seed"]),
                                     groups=victims, median=True),
                  "submissions": subs}
    entry = {**entry, "metrics": {**entry["metrics"], "ensemble": {
        **entry["metrics"]["ensemble"], "best_known": best_known}}}
    target = (entry_path if out is None
              else layout_path(Path(out).expanduser(), entry))
    if out is not None and target.resolve() == entry_path.resolve() and not replace:
        raise XRBenchError(f"{target} is the entry itself; pass --replace to update it")
    done = write_entry(target, entry, overwrite=replace, examples=arrays)
    return Verified(done.entry, done.path, int(better.sum()), float(kept.double().mean()),
                    float(expl.mean()))


def _model_and_images(entry: dict[str, Any], entry_path: Path,
                      checkpoint: str | os.PathLike[str] | None, dev: torch.device,
                      data_dir: str | os.PathLike[str] | None, cache_root: Path | None
                      ) -> tuple[torch.nn.Module, torch.Tensor]:
    """The entry's model with its own weights (sha256 checked) and its subset's images."""
    from .checkpoints import load_weights
    from .data import load_dataset
    from .models import create_model
    from .protocol import CLUSTERS, get_profile
    from .subset import ExtractorSpec, get_manifest

    ckpt = Path(checkpoint) if checkpoint is not None else entry_path.with_name(
        entry_path.name[:-len(".json")] + ".pt")
    if not ckpt.is_file():
        digest = entry["checkpoint"]["sha256"][:12]
        raise XRBenchError(f"checkpoint not found: {ckpt}; pass --checkpoint with the weights "
                           f"the entry was scored on (sha256 {digest}...)")
    ds = load_dataset(entry["dataset"]["name"], data_dir)
    net = create_model(entry["model"]["name"], ds.card, beta=float(entry["model"]["beta"]))
    try:
        load_weights(net, ckpt, entry["checkpoint"]["sha256"])
    except XRBenchError as exc:
        raise XRBenchError(f"{exc} (it must be the checkpoint entry {entry_path.name} was "
                           "scored on)") from None
    prof = get_profile(entry["protocol"]["profile"])
    per_cluster = int(entry["subset"]["n_images"]) // CLUSTERS
    manifest, _ = get_manifest(ds, per_cluster, dev,
                               extractor=ExtractorSpec(prof.extractor_epochs, None),
                               progress=False, cache_root=cache_root)
    if manifest["sha256"] != entry["subset"]["manifest_sha256"]:
        raise XRBenchError(f"the subset manifest found for {entry['dataset']['name']} is not "
                           f"the one {entry_path.name} was scored on (sha256 "
                           f"{manifest['sha256'][:12]}... vs "
                           f"{entry['subset']['manifest_sha256'][:12]}...)")
    images, _ = ds.test.get_batch(torch.tensor(manifest["indices"]))
    return net.to(dev).eval(), images.to(dev)
