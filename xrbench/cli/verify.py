"""``xrbench verify ENTRY SUBMISSION.npz``: an attack run elsewhere, submitted as data, checked
on a published entry's own checkpoint (PROTOCOL 5.8; :mod:`xrbench.verify`)."""

from __future__ import annotations

import argparse
from typing import Any

from .common import Handler


def add_commands(sub: Any) -> dict[str, Handler]:
    """Add the ``verify`` subparser to ``sub``; return ``{"verify": handler}``."""
    p = sub.add_parser(
        "verify", help="check an external attack's images against an entry's checkpoint",
        description="Recompute L_e and the predicted class of every submitted x' on the "
                    "entry's own checkpoint (sha256 checked) and write an updated entry whose "
                    "best-known worst case (metrics.ensemble.best_known) names the submission "
                    "and its sha256: per pair the lower of the entry's worst case and the "
                    "submission's L_e where it keeps the victim's class. SUBMISSION is an "
                    ".npz holding one array x_adv of shape (pairs, C, H, W), pixels in [0, 1], "
                    "one row per pair of the entry's ensemble (ensemble/pairs in its examples "
                    "file, in that order); read without pickle, its size checked before "
                    "reading.")
    p.add_argument("entry", metavar="ENTRY", help="the entry JSON (with its examples file)")
    p.add_argument("submission", metavar="SUBMISSION", help=".npz file with x_adv")
    p.add_argument("--checkpoint", default=None, metavar="PATH",
                   help="the weights the entry was scored on (default: <defense>-s<seed>.pt "
                        "beside the entry); its sha256 must be the entry's")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="results folder for the updated entry (the usual layout below it)")
    p.add_argument("--replace", action="store_true",
                   help="update the entry in place (without --out), or replace an entry "
                        "already at --out")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (auto)")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="where the entry's dataset lives (as for evaluate)")
    return {"verify": _cmd_verify}


def _cmd_verify(args: argparse.Namespace) -> int:
    from ..verify import verify

    done = verify(args.entry, args.submission, checkpoint=args.checkpoint, out=args.out,
                  replace=args.replace, device=args.device, data_dir=args.data_dir)
    best = done.entry["metrics"]["ensemble"]["best_known"]["expl_end"]
    print(f"submission: class kept on {100 * done.class_kept:.1f}% of pairs, its own mean "
          f"L_e {done.expl_end * 1e7:.4g} x1e-7; it lowered the worst case of "
          f"{done.pairs_improved} pairs")
    print(f"Expl@end best known: {best['value'] * 1e7:.4g} x1e-7 "
          f"(Expl@end worst of the ensemble: "
          f"{done.entry['metrics']['expl_end_worst']['value'] * 1e7:.4g} x1e-7)")
    print(f"wrote: {done.path}")
    return 0
