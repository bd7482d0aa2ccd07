"""``xrbench subset``: build (or show) the frozen evaluation subset manifest."""

from __future__ import annotations

import argparse
from typing import Any

from .common import EXTRACTOR_HELP, Handler, progress_bars


def add_commands(sub: Any) -> dict[str, Handler]:
    """Add the ``subset`` subparser to ``sub``; return ``{"subset": handler}``."""
    from ..protocol import PROFILES

    p = sub.add_parser("subset", help="build (or show) the frozen evaluation subset manifest",
                       description="Build the section-4 subset manifest for a dataset: "
                                   "ResNet18 features, k-means (k=10), nearest images per "
                                   "cluster. Shipped manifests (digits) are shown, not rebuilt, "
                                   "unless --rebuild.")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--profile", default="quick", choices=list(PROFILES))
    p.add_argument("--out", default=None, metavar="FILE",
                   help="write the manifest here too (an existing file only with --force)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--rebuild", action="store_true", help="build even if one exists")
    p.add_argument("--extractor-weights", default=None, metavar="PATH", help=EXTRACTOR_HELP)
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--quiet", action="store_true")
    return {"subset": _cmd_subset}


def _cmd_subset(args: argparse.Namespace) -> int:
    from .. import api

    manifest, where = api.subset(args.dataset, args.profile, device=args.device,
                                 data_dir=args.data_dir, out=args.out, rebuild=args.rebuild,
                                 force=args.force, progress=progress_bars(args),
                                 extractor_weights=args.extractor_weights)
    v = manifest["validity"]
    print(f"subset {manifest['dataset']}: {len(manifest['indices'])} images "
          f"({manifest['per_cluster']} x {manifest['clusters']} clusters), sha256 "
          f"{manifest['sha256'][:16]}...  ({where})")
    if v["intra_smaller"] is None:  # one image per cluster: no intra-cluster pairs
        print("  validity: not applicable (one image per cluster)")
    else:
        print(f"  validity: intra-cluster L_e {v['intra_cluster_le'] * 1e7:.1f} vs inter-cluster "
              f"{v['inter_cluster_le'] * 1e7:.1f} (x1e-7): "
              f"{'ok, intra smaller' if v['intra_smaller'] else 'FAILED, intra not smaller'}")
    if manifest["topped_up"]:
        print(f"  topped up: {manifest['topped_up']}")
    return 0
