"""The frozen evaluation subset (PROTOCOL.md section 4; SEP paper section 4 and appendix C).

Penultimate-layer features of a reference extractor on the test split, k-means with k = 10
(scikit-learn, n_init 10, random_state 0), then from each cluster the ``per_cluster`` images
nearest its centroid (ties by index). The result is a JSON manifest whose sha256 every entry
names. Manifests shipped with the package (digits) are found first; others are built on first
use and kept in the cache, one file per (dataset, size, extractor).

The extractor (PROTOCOL 4.1, :class:`ExtractorSpec`) is one of:

- the **reference**: a ResNet18 trained with the reference ``normal`` recipe (25 epochs, seed
  0) on the dataset; trained once per dataset and cached as a checkpoint;
- a **short** recipe of the same (``quick``: 3 epochs, ``smoke``: 1, PROTOCOL 4.1 version 3):
  the manifest records the recipe and is kept under another name, so it never passes for
  the reference one;
- **torchvision's ImageNet ResNet18** from a weights file the user names (``--extractor-weights``;
  never downloaded): no training at all, its sha256 in the manifest (:class:`ImageNetResNet18`).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .chunking import chunk_slices
from .data import Dataset
from .errors import XRBenchError
from .explainers import expl_loss, get_explainer, sum_map
from .protocol import CLUSTERS, PROTOCOL_VERSION
from .utils import (cache_dir, canonical_json, duration_text, read_json, sha256_bytes,
                    write_json)

log = logging.getLogger(__name__)

EXTRACTOR = {"model": "resnet18", "defense": "normal", "seed": 0}
VALIDITY_EXPLAINER = "grad_x_input"
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet weights' normalisation
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_SIDE = 224  # the input side torchvision's ImageNet ResNet18 was trained at


#: seconds per (training image x pixel x epoch) of the extractor's training on the 2-core CPU
#: development machine: 32 minutes for one epoch of Fashion-MNIST (60,000 images of 28 x 28),
#: measured 2026-12-03 with other work on the machine (issue 19)
EXTRACTOR_CPU_SECONDS = 32 * 60 / (60_000 * 28 * 28)


@dataclass(frozen=True)
class ExtractorSpec:
    """Which extractor a manifest's features come from (PROTOCOL 4.1).

    ``weights``: a file holding torchvision's ImageNet ResNet18 state dict (e.g.
    ``resnet18-f37072fd.pth``, what ``ResNet18_Weights.IMAGENET1K_V1`` downloads); it wins
    over ``epochs``. ``epochs``: a short ``normal`` recipe of that many epochs for the trained
    ResNet18; ``None`` is the reference recipe.
    """

    epochs: int | None = None
    weights: str | None = None

    @property
    def reference(self) -> bool:
        """The trained ResNet18 with the reference recipe (the default)."""
        return self.weights is None and self.epochs is None

    @property
    def short(self) -> bool:
        return self.weights is None and self.epochs is not None

    @cached_property
    def weights_sha256(self) -> str:
        """sha256 of the weights file; a missing file is an :class:`XRBenchError`."""
        from .utils import sha256_file

        assert self.weights is not None
        path = Path(self.weights).expanduser()
        if not path.is_file():
            raise XRBenchError(f"--extractor-weights {path}: no such file; pass the file of "
                               "torchvision's ImageNet ResNet18 weights (resnet18-f37072fd.pth, "
                               "from torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url)")
        return sha256_file(path)

    def check(self) -> None:
        """Fail early, before any training, on a weights file that is not there or is not a
        torchvision ResNet18 state dict (it is loaded once, weights_only, to find out)."""
        if self.weights is not None:
            self.weights_sha256  # noqa: B018 - raises XRBenchError when missing
            load_imagenet_extractor(self.weights, 3)

    def tag(self) -> str:
        """What the cached manifest's file name adds for this extractor ("" for the
        reference, so shipped and earlier manifests keep their names)."""
        if self.weights is not None:
            return f"-imagenet-{self.weights_sha256[:12]}"
        return "" if self.epochs is None else f"-normal-e{self.epochs}"

    def overrides(self) -> dict[str, str] | None:
        """``--set``-style recipe overrides of the trained extractor (None: reference)."""
        return None if self.epochs is None else {"epochs": str(self.epochs)}

    def training_line(self, epochs: int, card: Any = None, device: Any = None) -> str:
        """The log line of the extractor's training step: what it is, what it costs on a CPU
        (:data:`EXTRACTOR_CPU_SECONDS`, scaled to ``card``'s images and pixels) and what
        avoids it."""
        which = "reference" if self.epochs is None else "short-recipe"
        cost = ""
        if card is not None and getattr(device, "type", "cpu") == "cpu" and card.train_size:
            est = EXTRACTOR_CPU_SECONDS * card.train_size * card.size ** 2 * epochs
            cost = (f"; about {duration_text(est)} on a 2-core CPU (measured: 32 min per epoch of "
                    "Fashion-MNIST's 60,000 images), avoided by --extractor-weights PATH "
                    "(torchvision's ImageNet ResNet18) or a shipped manifest")
        return (f"training the subset's {which} extractor (ResNet18, normal, {epochs} "
                f"epoch{'s' if epochs != 1 else ''}) - once per dataset, cached{cost}")


def manifest_name(dataset: str, per_cluster: int, tag: str = "") -> str:
    """``<dataset>-k10-n<per_cluster><tag>.json``; ``tag`` is :meth:`ExtractorSpec.tag`."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in dataset)
    return f"{safe}-k{CLUSTERS}-n{per_cluster}{tag}.json"


def body_sha256(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest without its own ``sha256`` field (canonical JSON)."""
    body = {k: v for k, v in manifest.items() if k != "sha256"}
    return sha256_bytes(canonical_json(body).encode())


def select_nearest(features: np.ndarray, labels: np.ndarray, centroids: np.ndarray,
                   per_cluster: int) -> tuple[list[int], list[int], list[dict[str, int]]]:
    """Per cluster, the ``per_cluster`` members nearest the centroid (ties by index); a
    cluster with too few members is topped up from the nearest unused images.

    Returns (indices, cluster ids, top-ups as {"cluster", "missing"}).
    """
    n = features.shape[0]
    order_idx = np.arange(n)
    chosen: list[int] = []
    cluster_ids: list[int] = []
    topups: list[dict[str, int]] = []
    used = np.zeros(n, dtype=bool)
    for c in range(centroids.shape[0]):
        dist = np.linalg.norm(features - centroids[c], axis=1)
        members = np.flatnonzero(labels == c)
        members = members[np.lexsort((members, dist[members]))][:per_cluster]
        picked = list(members)
        used[members] = True
        if len(picked) < per_cluster:
            missing = per_cluster - len(picked)
            rest = order_idx[~used]
            rest = rest[np.lexsort((rest, dist[rest]))][:missing]
            used[rest] = True
            picked += list(rest)
            topups.append({"cluster": c, "missing": int(missing)})
        chosen += [int(i) for i in picked]
        cluster_ids += [c] * len(picked)
    return chosen, cluster_ids, topups


class ImageNetResNet18(nn.Module):
    """torchvision's ResNet18 with ImageNet weights, applied to a dataset's pixel-space images.

    The choice of input handling (PROTOCOL 4.1 leaves it open): grey images are repeated to
    three channels; every image is resized whole (no crop: the datasets' images are already
    object-centred and small) to 224 x 224, the side the weights were trained at, bilinearly
    with anti-aliasing; then normalised with ImageNet's mean and std, as the weights expect.
    ``features`` is the 512-d output of the global average pool (torchvision's ``fc``
    removed); ``forward`` keeps the weights' own ``fc`` (ImageNet logits) only for the
    manifest's validity check, whose maps are therefore taken with respect to the dataset's
    pixel-space input.
    """

    feature_batch = 64  # images per forward pass at 224 x 224 (about 3 MB of activations each)

    def __init__(self, state: dict[str, torch.Tensor], channels: int, source: str) -> None:
        super().__init__()
        import torchvision

        fc = state.get("fc.weight") if isinstance(state, dict) else None
        if not isinstance(fc, torch.Tensor) or fc.ndim != 2:
            raise XRBenchError(f"--extractor-weights {source} is not a torchvision ResNet18 state "
                               "dict (no fc.weight); pass resnet18-f37072fd.pth "
                               "(torchvision.models.ResNet18_Weights.IMAGENET1K_V1)")
        body = torchvision.models.resnet18(weights=None, num_classes=int(fc.shape[0]))
        try:
            body.load_state_dict(state)
        except RuntimeError as exc:
            detail = " ".join(str(exc).split())[:300]
            raise XRBenchError(f"--extractor-weights {source} does not fit torchvision's ResNet18 "
                               f"({detail}); pass resnet18-f37072fd.pth "
                               "(torchvision.models.ResNet18_Weights.IMAGENET1K_V1)") from None
        self.fc = body.fc
        body.fc = nn.Identity()
        self.body = body
        self.channels = channels
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, S, S) in [0, 1] -> (N, 3, 224, 224), ImageNet-normalised."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(IMAGENET_SIDE, IMAGENET_SIDE), mode="bilinear",
                          align_corners=False, antialias=True)
        return (x - self.mean) / self.std

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features (N, 512) of pixel-space x."""
        return self.body(self.prepare(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def load_imagenet_extractor(path: str, channels: int) -> tuple[ImageNetResNet18, str]:
    """(the extractor in eval mode, the file's sha256) from a torchvision ImageNet ResNet18
    weights file, loaded with ``weights_only=True``. A file named as torchvision names its
    downloads (``resnet18-<first hex digits of its sha256>.pth``) must match that prefix."""
    from .checkpoints import verified_load

    state, digest = verified_load(Path(path).expanduser())
    m = re.fullmatch(r"resnet18-([0-9a-f]{8,64})\.pth?", Path(path).name)
    if m and not digest.startswith(m.group(1)):
        raise XRBenchError(f"--extractor-weights {path}: its sha256 {digest[:12]}... does not "
                           f"start with the {m.group(1)} its name promises (a truncated or "
                           "changed download); download it again")
    return ImageNetResNet18(state, channels, path).eval(), digest


def _features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Penultimate-layer features of pixel-space x for either kind of extractor."""
    if isinstance(model, ImageNetResNet18):
        return model.features(x)
    return model.net.features(model.normalize(x))


@torch.no_grad()
def extract_features(model: torch.nn.Module, dataset: Dataset, device: torch.device,
                     batch_size: int | None = None) -> np.ndarray:
    """Penultimate-layer features (N, D) of the whole test split (float64)."""
    model.eval()
    batch_size = batch_size or getattr(model, "feature_batch", 512)
    feats = []
    for s in chunk_slices(len(dataset.test), batch_size):
        x, _ = dataset.test.get_batch(torch.arange(s.start, s.stop))
        feats.append(_features(model, x.to(device)).cpu())
    return torch.cat(feats).double().numpy()


def validity_check(model: torch.nn.Module, images: torch.Tensor, cluster_ids: list[int]
                   ) -> dict[str, Any]:
    """Mean L_e at start over intra-cluster vs inter-cluster ordered pairs (appendix C:
    intra must be smaller). Maps: grad x input of the reference model, predicted class.
    With one image per cluster there are no intra-cluster pairs: the check does not apply
    (``intra_cluster_le`` and ``intra_smaller`` are None)."""
    explainer = get_explainer(VALIDITY_EXPLAINER)
    model.eval()
    with torch.no_grad():
        pred = model(images).argmax(1)
    maps = sum_map(explainer(model, images, pred))
    n = maps.shape[0]
    v, t = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    off = v != t
    le = expl_loss(maps[v[off]], maps[t[off]])
    cid = torch.tensor(cluster_ids)
    same = cid[v[off]] == cid[t[off]]
    inter = float(le[~same].mean())
    intra = float(le[same].mean()) if bool(same.any()) else None
    return {"explainer": VALIDITY_EXPLAINER, "model": "extractor", "intra_cluster_le": intra,
            "inter_cluster_le": inter, "intra_smaller": None if intra is None else intra < inter}


def build_manifest(dataset: Dataset, per_cluster: int, extractor: torch.nn.Module,
                   extractor_info: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Run the section-4 selection and return the manifest (with its sha256).

    ``extractor_info`` is what the manifest records about the extractor (its kind, recipe or
    weights, and the sha256 of its weights)."""
    from sklearn.cluster import KMeans

    feats = extract_features(extractor, dataset, device)
    km = KMeans(n_clusters=CLUSTERS, n_init=10, random_state=0).fit(feats)
    indices, cluster_ids, topups = select_nearest(feats, km.labels_, km.cluster_centers_,
                                                  per_cluster)
    x, _ = dataset.test.get_batch(torch.tensor(indices))
    manifest: dict[str, Any] = {
        "protocol_version": PROTOCOL_VERSION,
        "dataset": dataset.card.name,
        **({"dataset_sha256": dataset.card.content_sha256}
           if getattr(dataset.card, "content_sha256", None) else {}),
        "split": "test",
        "per_cluster": per_cluster,
        "clusters": CLUSTERS,
        "kmeans": {"n_init": 10, "random_state": 0, "library": "scikit-learn"},
        "extractor": {**extractor_info, "features": f"penultimate layer ({feats.shape[1]}-d)"},
        "indices": indices,
        "cluster_ids": cluster_ids,
        "topped_up": topups,
        "validity": validity_check(extractor, x.to(device), cluster_ids),
    }
    manifest["sha256"] = body_sha256(manifest)
    return manifest


def get_extractor(dataset: Dataset, spec: ExtractorSpec, device: torch.device, *,
                  progress: bool = True, cache_root: Path | None = None
                  ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """(the extractor in eval mode, what the manifest records about it) for ``spec``.

    A trained extractor is an ordinary cached checkpoint (``<cache>/checkpoints/<dataset>/
    resnet18/normal-<recipe key>-s0.pt``): trained once per dataset and recipe, then reused
    by every profile and defense. Its training is its own step: a log line saying what it
    costs and a progress bar labelled ``subset extractor``.
    """
    if spec.weights is not None:
        model, digest = load_imagenet_extractor(spec.weights, dataset.card.channels)
        return model.to(device), {
            "kind": "imagenet", "model": "torchvision resnet18", "weights": "ImageNet",
            "reference": False,
            "input": (f"grey repeated to RGB, resized whole to {IMAGENET_SIDE}x{IMAGENET_SIDE} "
                      "(bilinear, antialias), ImageNet mean/std"),
            "checkpoint_sha256": digest}  # the sha256 of the user's weights file
    from .train import checkpoint_key, get_trained_model

    key, recipe = checkpoint_key(dataset.card, EXTRACTOR["model"], EXTRACTOR["defense"],
                                 spec.overrides(), EXTRACTOR["seed"])
    if not key.path(cache_root).is_file():
        log.info("%s", spec.training_line(recipe.epochs, dataset.card, device))
    ref = get_trained_model(dataset, EXTRACTOR["model"], EXTRACTOR["defense"],
                            overrides=spec.overrides(), seed=EXTRACTOR["seed"], device=device,
                            progress=progress, cache_root=cache_root, label="subset extractor")
    return ref.model.eval(), {"kind": "trained", **EXTRACTOR, "recipe": ref.meta["recipe"],
                              "recipe_hash": ref.meta["recipe_hash"],
                              "reference": spec.reference, "checkpoint_sha256": ref.sha256}


def check_manifest(manifest: Any, source: str) -> dict[str, Any]:
    """A manifest read from ``source``, checked: an object with its fields and a body that
    still matches its sha256; anything else is an :class:`XRBenchError` naming the file."""
    if not isinstance(manifest, dict):
        raise XRBenchError(f"subset manifest {source} holds a JSON {type(manifest).__name__}, "
                           "not an object; delete it to rebuild")
    for key in ("dataset", "indices", "cluster_ids", "sha256", "per_cluster"):
        if key not in manifest:
            raise XRBenchError(f"subset manifest {source} has no {key!r}; delete it to rebuild")
    if body_sha256(manifest) != manifest["sha256"]:
        raise XRBenchError(f"subset manifest {source} was changed (sha256 mismatch); delete "
                           "it to rebuild, or restore the original")
    return manifest


def packaged_manifest(dataset: str, per_cluster: int) -> dict[str, Any] | None:
    """The manifest shipped with the package for (dataset, per_cluster), reference extractor
    only; None when there is none."""
    ref = resources.files("xrbench") / "manifests" / manifest_name(dataset, per_cluster)
    if not ref.is_file():
        return None
    return check_manifest(read_json(Path(str(ref))), f"xrbench/manifests/{ref.name}")


def cached_manifest_path(dataset: str, per_cluster: int, root: Path | None = None,
                         tag: str = "") -> Path:
    return (root or cache_dir()) / "manifests" / manifest_name(dataset, per_cluster, tag)


def get_manifest(dataset: Dataset, per_cluster: int, device: torch.device, *,
                 extractor: ExtractorSpec | None = None, progress: bool = True,
                 rebuild: bool = False, out: Path | None = None,
                 cache_root: Path | None = None,
                 timing: dict[str, float] | None = None) -> tuple[dict[str, Any], str]:
    """The manifest for (dataset, per_cluster, extractor): packaged, else cached, else built
    (getting the extractor first, :func:`get_extractor`). Returns (manifest, where it came
    from). ``timing``, when given, receives ``extractor``: the seconds this call spent getting
    the extractor (training it, or loading it), 0 when the manifest existed.

    A short-recipe extractor (quick, smoke) takes the manifest shipped with the package
    where there is one (digits, Fashion-MNIST): as fixed as the code. It never takes a
    cached reference manifest, so what it scores does not depend on what ran before.
    """
    spec = extractor or ExtractorSpec()
    name = dataset.card.name
    if timing is not None:
        timing["extractor"] = 0.0
    if not rebuild and out is None:
        if spec.weights is None:
            shipped = packaged_manifest(name, per_cluster)
            if shipped is not None:
                return shipped, "package"
        path = cached_manifest_path(name, per_cluster, cache_root, spec.tag())
        if path.is_file():
            return check_manifest(read_json(path), str(path)), str(path)
    t0 = time.perf_counter()
    model, info = get_extractor(dataset, spec, device, progress=progress, cache_root=cache_root)
    if timing is not None:
        timing["extractor"] = round(time.perf_counter() - t0, 3)
    path = out or cached_manifest_path(name, per_cluster, cache_root, spec.tag())
    log.info("building the %s subset (PROTOCOL 4): the extractor's features of the %d test "
             "images, k-means into %d clusters (10 restarts), the %d images nearest each "
             "centre; once per dataset and extractor, then read from %s", name,
             len(dataset.test), CLUSTERS, per_cluster, path)
    t0 = time.perf_counter()
    manifest = build_manifest(dataset, per_cluster, model, info, device)
    write_json(path, manifest)
    log.info("subset built in %s: %d images, manifest %s", duration_text(
        time.perf_counter() - t0), len(manifest["indices"]), path)
    if manifest["validity"]["intra_smaller"] is False:
        log.warning("subset validity check failed for %s: intra-cluster L_e %.3g is not "
                    "below inter-cluster %.3g", name, manifest["validity"]["intra_cluster_le"],
                    manifest["validity"]["inter_cluster_le"])
    return manifest, str(path)
