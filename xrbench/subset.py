"""The frozen evaluation subset (PROTOCOL.md section 4; SEP paper section 4 and appendix C).

Penultimate-layer features of a reference ResNet18 (``normal`` recipe, seed 0) on the test
split, k-means with k = 10 (scikit-learn, n_init 10, random_state 0), then from each cluster
the ``per_cluster`` images nearest its centroid (ties by index). The result is a JSON
manifest whose sha256 every entry names. Manifests shipped with the package (digits) are
found first; others are built on first use and kept in the cache.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import Dataset
from .errors import XRBenchError
from .explainers import expl_loss, get_explainer, sum_map
from .protocol import CLUSTERS, PROTOCOL_VERSION
from .utils import cache_dir, canonical_json, read_json, sha256_bytes, write_json

log = logging.getLogger(__name__)

EXTRACTOR = {"model": "resnet18", "defense": "normal", "seed": 0}
VALIDITY_EXPLAINER = "grad_x_input"


def manifest_name(dataset: str, per_cluster: int) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in dataset)
    return f"{safe}-k{CLUSTERS}-n{per_cluster}.json"


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


@torch.no_grad()
def extract_features(model: torch.nn.Module, dataset: Dataset, device: torch.device,
                     batch_size: int = 512) -> np.ndarray:
    """Penultimate-layer features (N, D) of the whole test split."""
    model.eval()
    feats = []
    for i in range(0, len(dataset.test), batch_size):
        x, _ = dataset.test.get_batch(torch.arange(i, min(i + batch_size, len(dataset.test))))
        feats.append(model.net.features(model.normalize(x.to(device))).cpu())
    return torch.cat(feats).double().numpy()


def validity_check(model: torch.nn.Module, images: torch.Tensor, cluster_ids: list[int]
                   ) -> dict[str, Any]:
    """Mean L_e at start over intra-cluster vs inter-cluster ordered pairs (appendix C:
    intra must be smaller). Maps: grad x input of the reference model, predicted class."""
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
    intra, inter = float(le[same].mean()), float(le[~same].mean())
    return {"explainer": VALIDITY_EXPLAINER, "model": "extractor", "intra_cluster_le": intra,
            "inter_cluster_le": inter, "intra_smaller": intra < inter}


def build_manifest(dataset: Dataset, per_cluster: int, extractor: torch.nn.Module,
                   extractor_sha256: str, device: torch.device) -> dict[str, Any]:
    """Run the section-4 selection and return the manifest (with its sha256)."""
    from sklearn.cluster import KMeans

    feats = extract_features(extractor, dataset, device)
    km = KMeans(n_clusters=CLUSTERS, n_init=10, random_state=0).fit(feats)
    indices, cluster_ids, topups = select_nearest(feats, km.labels_, km.cluster_centers_,
                                                  per_cluster)
    x, _ = dataset.test.get_batch(torch.tensor(indices))
    manifest: dict[str, Any] = {
        "protocol_version": PROTOCOL_VERSION,
        "dataset": dataset.card.name,
        "split": "test",
        "per_cluster": per_cluster,
        "clusters": CLUSTERS,
        "kmeans": {"n_init": 10, "random_state": 0, "library": "scikit-learn"},
        "extractor": {**EXTRACTOR, "checkpoint_sha256": extractor_sha256,
                      "features": "penultimate layer (512-d)"},
        "indices": indices,
        "cluster_ids": cluster_ids,
        "topped_up": topups,
        "validity": validity_check(extractor, x.to(device), cluster_ids),
    }
    manifest["sha256"] = body_sha256(manifest)
    return manifest


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
    ref = resources.files("xrbench") / "manifests" / manifest_name(dataset, per_cluster)
    if not ref.is_file():
        return None
    return check_manifest(read_json(Path(str(ref))), f"xrbench/manifests/{ref.name}")


def cached_manifest_path(dataset: str, per_cluster: int, root: Path | None = None) -> Path:
    return (root or cache_dir()) / "manifests" / manifest_name(dataset, per_cluster)


def get_manifest(dataset: Dataset, per_cluster: int, device: torch.device, *,
                 progress: bool = True, rebuild: bool = False, out: Path | None = None,
                 cache_root: Path | None = None) -> tuple[dict[str, Any], str]:
    """The manifest for (dataset, per_cluster): packaged, else cached, else built (training
    the reference ResNet18 if needed). Returns (manifest, where it came from)."""
    name = dataset.card.name
    if not rebuild and out is None:
        shipped = packaged_manifest(name, per_cluster)
        if shipped is not None:
            return shipped, "package"
        path = cached_manifest_path(name, per_cluster, cache_root)
        if path.is_file():
            return check_manifest(read_json(path), str(path)), str(path)
    from .train import get_trained_model

    ref = get_trained_model(dataset, EXTRACTOR["model"], EXTRACTOR["defense"],
                            seed=EXTRACTOR["seed"], device=device, progress=progress,
                            cache_root=cache_root)
    manifest = build_manifest(dataset, per_cluster, ref.model, ref.sha256, device)
    path = out or cached_manifest_path(name, per_cluster, cache_root)
    write_json(path, manifest)
    if not manifest["validity"]["intra_smaller"]:
        log.warning("subset validity check failed for %s: intra-cluster L_e %.3g is not "
                    "below inter-cluster %.3g", name, manifest["validity"]["intra_cluster_le"],
                    manifest["validity"]["inter_cluster_le"])
    return manifest, str(path)
