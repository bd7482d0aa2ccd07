"""The files of the regression guard (:mod:`xrbench.leaderboard.regress`): loading a side
(a file or a folder of entries, :func:`load_side`) and writing a baseline folder
(:func:`update_baselines`), with the checkpoint kept beside an entry.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Sequence

from xrbench.errors import XRBenchError

from .values import Side


#: a folder of the baseline whose entries only feed the seed spread (never required in CURRENT)
SPREAD_FOLDER = "spread"


def entry_files(root: Path) -> list[Path]:
    """The ``*.json`` files below ``root``, sorted, hidden files and folders skipped."""
    return sorted(p for p in root.rglob("*.json") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def _load(path: Path, with_examples: bool) -> Side:
    from xrbench.leaderboard.examples import read_examples
    from xrbench.leaderboard.schema import read_entry

    entry = read_entry(path)
    arrays = None
    if with_examples and entry.get("examples"):
        arrays = read_examples(path, entry)  # a damaged file is an error, not a silent skip
    return Side(path, entry, arrays)


def load_side(path: str | Path, *, split_spread: bool = False, with_examples: bool = True
              ) -> tuple[list[Side], list[Side]]:
    """The entries of a file or a folder (recursively; hidden names skipped), each with its
    per-example arrays. With ``split_spread``, entries below a ``spread/`` folder come back
    separately (second list): they only feed the seed spread. Returns (entries, spread)."""
    p = Path(path)
    if p.is_file():
        return [_load(p, with_examples)], []
    if not p.is_dir():
        raise XRBenchError(f"no such file or folder: {p}")
    files = entry_files(p)
    if not files:
        raise XRBenchError(f"no entries (*.json) found under {p}")
    main, spread = [], []
    for f in files:
        is_spread = split_spread and SPREAD_FOLDER in f.relative_to(p).parts[:-1]
        (spread if is_spread else main).append(_load(f, with_examples and not is_spread))
    return main, spread


def checkpoint_beside(entry_path: Path) -> Path:
    """Where a baseline keeps an entry's checkpoint: ``<defense>-s<seed>.pt`` beside it."""
    return entry_path.with_suffix(".pt")


def update_baselines(baseline_dir: str | Path, current: Sequence[Side], *,
                     examples: bool = True, prune: bool = False) -> list[str]:
    """Write the ``current`` entries into ``baseline_dir`` (``<dataset>/<model>/<explainer>/
    <profile>/<defense>-s<seed>.json``), replacing those of the same key, with their
    per-example files (``examples``) and the checkpoint ``<defense>-s<seed>.pt`` lying beside
    a current entry, if any (its sha256 must match the entry's). ``prune`` removes baseline
    entries (and their files) that ``current`` does not hold, spread folder excepted.
    Returns one line per action. A refresh is meant to be a reviewed commit."""
    from xrbench.leaderboard.examples import examples_path
    from xrbench.leaderboard.schema import entry_path, write_entry
    from xrbench.utils import atomic_write_bytes, sha256_file

    root = Path(baseline_dir)
    if root.exists() and not root.is_dir():
        raise XRBenchError(f"--update needs a baseline folder, and {root} is a file")
    actions: list[str] = []
    keep: set[Path] = set()
    for side in current:
        dest = entry_path(root, side.entry)
        entry = {k: v for k, v in side.entry.items() if k != "examples"}
        arrays = side.arrays if examples else None
        if examples and arrays is None and side.entry.get("examples"):
            from xrbench.leaderboard.examples import read_examples
            arrays = read_examples(side.path, side.entry)
        existed = dest.exists()
        for old in (dest, examples_path(dest)):  # replaced on purpose, per-example file too
            old.unlink(missing_ok=True)
        write_entry(dest, entry, examples=arrays)
        keep.add(dest.resolve())
        actions.append(f"{'replaced' if existed else 'added'} {dest}")
        ckpt = checkpoint_beside(side.path)
        if ckpt.is_file():
            want = side.entry.get("checkpoint", {}).get("sha256")
            if sha256_file(ckpt) != want:
                raise XRBenchError(f"{ckpt} is not the checkpoint its entry names (sha256 "
                                   f"{str(want)[:12]}...); not copied")
            there = checkpoint_beside(dest)
            if not there.is_file() or sha256_file(there) != want:
                atomic_write_bytes(there, ckpt.read_bytes())
                actions.append(f"copied checkpoint {checkpoint_beside(dest)}")
    if prune and root.is_dir():
        for f in entry_files(root):
            if f.resolve() in keep or SPREAD_FOLDER in f.relative_to(root).parts[:-1]:
                continue
            for p in (f, examples_path(f), checkpoint_beside(f)):
                if p.exists():
                    p.unlink()
            actions.append(f"removed {f}")
    return actions


def copy_checkpoint(src: str | Path, entry_file: str | Path) -> Path:
    """Copy a checkpoint beside an entry as ``<defense>-s<seed>.pt`` (what
    :func:`update_baselines` then carries into a baseline)."""
    dest = checkpoint_beside(Path(entry_file))
    shutil.copyfile(src, dest)
    return dest
