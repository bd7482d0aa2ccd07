"""The ``xrbench plot`` command: figures of result entries as PNG files.

``xrbench plot KIND ENTRY... --out FILE.png`` draws one figure (:mod:`xrbench.plots`) of the
entries named (JSON files, or folders searched for them) and writes it atomically; it never
overwrites a file without ``--force``. :func:`add_commands` is called by
:func:`xrbench.cli.app.build_parser`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Mapping

from ..errors import XRBenchError
from .common import int_in

DESCRIPTION = """\
Draw one figure of result entries (all of one leaderboard table: same dataset, model,
explainer, profile and protocol version) as a PNG file. KIND is one of:
  landscape  the loss landscapes (PROTOCOL 5.6, the SEP paper's figure 4): mean L_e and mean
             cross-entropy against gamma, one curve per entry
  insertion  the Insertion and Adv-Insertion curves (PROTOCOL 5.4): the true label's
             probability against the share of pixels put back, one curve per entry
  gallery    for a few pairs per entry, the victim, target and manipulated images with their
             maps (PROTOCOL 5.2)
  scatter    --metric (default expl_end) against PGD accuracy, one point per entry, with the
             Spearman correlation (PROTOCOL 5.7)
  pareto     PGD accuracy against Expl@end (worst), the rows on the Pareto front of clean
             accuracy, PGD accuracy and Expl@end (worst) as stars (PROTOCOL 5.8)
Entries made before xrbench kept the insertion curves and the gallery lack them; re-running
their evaluate command adds them (docs/figures.md)."""


def add_commands(sub: Any) -> dict[str, Any]:
    """Add the ``plot`` subparser to ``sub``; return ``{"plot": handler}``."""
    from ..plots import KINDS

    p = sub.add_parser("plot", help="draw a figure (landscape, insertion, gallery, scatter, "
                                    "pareto) of entries as a PNG",
                       description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", metavar="KIND", choices=KINDS,
                   help="the figure: " + ", ".join(KINDS))
    p.add_argument("entries", metavar="ENTRY", nargs="+",
                   help="entry JSON files, or folders searched (recursively) for them")
    p.add_argument("--out", required=True, metavar="FILE.png",
                   help="where to write the PNG (its folder is created if needed)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--metric", default=None, metavar="NAME",
                   help="scatter only: the metric on the y axis, a path under the entries' "
                        "metrics such as expl_end (default), expl_start, insertion, "
                        "adv_insertion, class_changed, rps/cosine/8/255, "
                        "retrieval/relex_adv_mask/0.1 (docs/figures.md lists them)")
    p.add_argument("--pairs", type=int_in(1, 1000, "--pairs"), default=None, metavar="N",
                   help="gallery only: pairs shown per entry (default 3; an entry keeps 4)")
    return {"plot": _cmd_plot}


def entry_files(paths: list[str]) -> list[Path]:
    """The entry JSON files named by ``paths``: files as they are, folders searched
    recursively for ``*.json`` (hidden files and folders skipped), in sorted order, each once.
    A path that does not exist, or a folder without entries, is an :class:`XRBenchError`."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_dir():
            found = sorted(f for f in p.rglob("*.json") if f.is_file() and not any(
                part.startswith(".") for part in f.relative_to(p).parts))
            if not found:
                raise XRBenchError(f"no entry files (*.json) under {p}")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise XRBenchError(f"entry not found: {p} (pass entry JSON files or folders of "
                               "them)")
    seen: set[Path] = set()
    return [f for f in out if not (f.resolve() in seen or seen.add(f.resolve()))]


def load_items(files: list[Path], with_examples: bool
               ) -> list[tuple[Mapping[str, Any], Mapping[str, Any]]]:
    """(entry, per-example arrays) of each file; every entry validated, every per-example
    file checked against its sha256 (``with_examples=False`` reads no arrays)."""
    from ..leaderboard.examples import read_examples
    from ..leaderboard.schema import read_entry

    items = []
    for f in files:
        entry = read_entry(f)
        items.append((entry, read_examples(f, entry) if with_examples else {}))
    return items


def _cmd_plot(args: argparse.Namespace) -> int:
    from .. import plots
    from ..utils import atomic_write_bytes

    out = Path(args.out).expanduser()
    if out.suffix.lower() != ".png":
        raise XRBenchError(f"--out {out} must name a .png file")
    if out.is_dir():
        raise XRBenchError(f"--out {out} is a folder; name a .png file")
    if out.exists() and not args.force:
        raise XRBenchError(f"{out} exists; pass --force to overwrite it, or another --out")
    if args.metric is not None and args.kind != "scatter":
        raise XRBenchError("--metric applies to the scatter figure only")
    if args.pairs is not None and args.kind != "gallery":
        raise XRBenchError("--pairs applies to the gallery figure only")
    files = entry_files(args.entries)
    items = load_items(files, with_examples=args.kind in ("insertion", "gallery"))
    if args.kind == "landscape":
        png = plots.landscape_figure(items)
    elif args.kind == "insertion":
        png = plots.insertion_figure(items)
    elif args.kind == "gallery":
        png = plots.gallery_figure(items, pairs=3 if args.pairs is None else args.pairs)
    elif args.kind == "pareto":
        png = plots.pareto_figure([e for e, _ in items])
    else:
        png = plots.scatter_figure([e for e, _ in items], args.metric or "expl_end")
    atomic_write_bytes(out, png)
    print(f"wrote {out} ({args.kind}, {len(items)} entries)")
    return 0
