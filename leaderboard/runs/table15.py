"""Measured rows beside the SEP paper's Table 15: real Fashion-MNIST, ConvNet, guided backprop.

    # CPU (what fits in a session on the 2-core development machine: a short recipe)
    nice .venv/bin/python leaderboard/runs/table15.py --epochs 1 --out leaderboard/results
    # CUDA machine (the reference 25-epoch recipes; leaderboard/runs/table15_gpu.sh runs this)
    python leaderboard/runs/table15.py --device cuda --jobs 4 --out OUT

For each of ``normal``, ``mat``, ``sep_pos`` and ``sep_neg`` (``--defenses``): train the
ConvNet on the real Fashion-MNIST (SEP with guided backprop in its regulariser, ``--set
explainer=guided_backprop``, as the paper's Table 15), score it at ``quick`` with the
guided-backprop explainer, and write beside the entry the checkpoint it scored
(``<defense>-s0.pt``, its sha256 in the entry) and the checkpoint's sidecar
(``<defense>-s0.sidecar``: its recipe, training history and sha256).

Resumable from what is committed: where a checkpoint and its sidecar already lie beside an
entry path in ``--out``, they are put back into the cache first, so the run scores the same
weights and trains nothing (a cache on another machine is not needed). A run that stops
mid-training resumes from the cache's last finished epoch.

Training and scoring resume across machines too, with ``--carry DIR`` (a quick score of one
defense is about 6 hours on one CPU thread, a 25-epoch SEP model about 14, longer than a
session): what ``DIR/<defense>/`` holds is put into the cache first, and while the run lasts
every stage output it writes (each finished stage, each finished chunk of the manipulation
and the ensemble) and the training state after each finished epoch (``train.partial.pt``,
removed once the checkpoint is published beside the entry) are copied there within a minute,
so committing ``DIR`` keeps the work of a run that is stopped. Each file is
named by the sha256 of its bytes and checked when read, as the cache checks its own.
``--save-carry`` copies a cache's stage outputs into ``DIR/<defense>/`` without running
anything (for a run started without ``--carry``, on a cache of its own).

A shortened recipe (``--epochs`` below the reference 25) is recorded as such in the entry
(``defense.reference`` false with the recipe difference), so leaderboards mark those rows as
not reference rows. The script ends with a timing table (seconds per defense: training,
each stage, total), also written to ``<out>/fashion_mnist/convnet/guided_backprop/quick/
timing.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

DATASET, MODEL, EXPLAINER, PROFILE, SEED = "fashion_mnist", "convnet", "guided_backprop", "quick", 0
DEFENSES = ("normal", "mat", "sep_pos", "sep_neg")


def overrides(defense: str, epochs: int | None) -> dict[str, str]:
    """The recipe overrides of a Table 15 row: SEP's regulariser explains with guided
    backprop; ``epochs`` shortens the recipe (None: the reference 25)."""
    out = {} if epochs is None else {"epochs": str(epochs)}
    if defense.startswith("sep"):
        out["explainer"] = EXPLAINER
    return out


def entry_folder(out: Path) -> Path:
    return out / DATASET / MODEL / EXPLAINER / PROFILE


def restore_checkpoint(defense: str, epochs: int | None, out: Path, cache: Path | None) -> bool:
    """Put a committed checkpoint (and its sidecar) back into the cache; True if one was."""
    from xrbench.checkpoints import sidecar_path
    from xrbench.data import dataset_card
    from xrbench.train import checkpoint_key

    pt = entry_folder(out) / f"{defense}-s{SEED}.pt"
    side = entry_folder(out) / f"{defense}-s{SEED}.sidecar"
    if not (pt.is_file() and side.is_file()):
        return False
    key, _ = checkpoint_key(dataset_card(DATASET), MODEL, defense, overrides(defense, epochs),
                            SEED)
    dest = key.path(cache)
    if json.loads(side.read_text()).get("sha256") is None:
        raise SystemExit(f"{side}: no sha256; delete it and {pt} to train again")
    if not dest.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pt, dest)
        shutil.copyfile(side, sidecar_path(dest))
    return True


def publish_checkpoint(path: Path, defense: str, out: Path) -> None:
    """Copy a cached checkpoint and its sidecar beside the entry path of ``defense``."""
    from xrbench.checkpoints import sidecar_path

    folder = entry_folder(out)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, folder / f"{defense}-s{SEED}.pt")
    shutil.copyfile(sidecar_path(path), folder / f"{defense}-s{SEED}.sidecar")


def stage_files(cache: Path | None) -> Path:
    """The folder of a cache's stage outputs (:class:`xrbench.engine.runtime.StageCache`)."""
    from xrbench.utils import cache_dir

    return (cache or cache_dir()) / "stages"


def restore_carry(carry: Path, cache: Path | None) -> int:
    """Copy the stage outputs in ``carry`` into the cache (those not there); their count."""
    dest = stage_files(cache)
    n = 0
    for f in sorted(carry.glob("*.pt")) if carry.is_dir() else []:
        if not (dest / f.name).is_file():
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dest / f".{f.name}.part")
            (dest / f".{f.name}.part").replace(dest / f.name)
            n += 1
    return n


def save_carry(cache: Path | None, carry: Path, since: float | None = None) -> int:
    """Copy the cache's stage outputs (written at or after ``since``, a time stamp; all when
    None) that ``carry`` lacks into it; their count. Each copy lands whole (a temporary name,
    then a rename)."""
    src = stage_files(cache)
    n = 0
    for f in sorted(src.glob("*.pt")) if src.is_dir() else []:
        if (carry / f.name).is_file() or (since is not None and f.stat().st_mtime < since):
            continue
        carry.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, carry / f".{f.name}.part")
        (carry / f".{f.name}.part").replace(carry / f.name)
        n += 1
    return n


#: the training state after the last finished epoch, as kept in a carry folder
PARTIAL = "train.partial.pt"


def training_partial(defense: str, epochs: int | None, cache: Path | None) -> Path:
    """Where the cache keeps ``defense``'s training state between epochs (the trainer resumes
    from it: :func:`xrbench.checkpoints.save_partial`)."""
    from xrbench.checkpoints import partial_path
    from xrbench.data import dataset_card
    from xrbench.train import checkpoint_key

    key, _ = checkpoint_key(dataset_card(DATASET), MODEL, defense, overrides(defense, epochs),
                            SEED)
    return partial_path(key.path(cache))


def _copy_whole(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part")
    shutil.copyfile(src, tmp)
    tmp.replace(dest)


def save_partial_carry(partial: Path | None, carry: Path) -> bool:
    """Copy the training state into ``carry`` when it is newer than the carried one."""
    if partial is None or not partial.is_file():
        return False
    kept = carry / PARTIAL
    if kept.is_file() and kept.stat().st_mtime >= partial.stat().st_mtime:
        return False
    _copy_whole(partial, kept)
    return True


class CarryKeeper:
    """While a run lasts, copy the stage outputs it writes into ``carry`` every ``period``
    seconds, and the training state after each finished epoch (``partial``, when given);
    once more when it ends (also when it fails or is interrupted)."""

    def __init__(self, cache: Path | None, carry: Path, period: float = 60.0,
                 partial: Path | None = None) -> None:
        import threading

        self.cache, self.carry, self.period, self.partial = cache, carry, period, partial
        self.since = time.time() - 1.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            save_carry(self.cache, self.carry, self.since)
            save_partial_carry(self.partial, self.carry)

    def __enter__(self) -> "CarryKeeper":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        n = save_carry(self.cache, self.carry, self.since)
        kept = save_partial_carry(self.partial, self.carry)
        print(f"carry: {n} more stage outputs kept in {self.carry}"
              + (", and the training state" if kept else ""), flush=True)


def run_one(defense: str, epochs: int | None, out: Path, device: str,
            cache: Path | None, train_only: bool = False, carry: Path | None = None
            ) -> dict[str, Any]:
    """Train (or reuse) and score one defense; the checkpoint and sidecar go beside the
    entry. Returns the entry's timing with the training seconds. ``train_only``: train and
    publish the checkpoint, score nothing (the subset may not be there yet)."""
    from xrbench import api

    restored = restore_checkpoint(defense, epochs, out, cache)
    if carry is None:
        return _train_and_score(defense, epochs, out, device, cache, train_only, restored)
    folder = carry / defense
    n = restore_carry(folder, cache)
    partial = None if restored else training_partial(defense, epochs, cache)
    resumed = (partial is not None and (folder / PARTIAL).is_file()
               and not partial.is_file())
    if resumed:  # a training stopped on another machine goes on from its last epoch
        _copy_whole(folder / PARTIAL, partial)
    print(f"carry: {n} stage outputs" + (" and the training state" if resumed else "")
          + f" put back into the cache from {folder}", flush=True)
    with CarryKeeper(cache, folder, partial=partial):
        row = _train_and_score(defense, epochs, out, device, cache, train_only, restored)
    (folder / PARTIAL).unlink(missing_ok=True)  # trained: the checkpoint lies beside the entry
    return row


def _train_and_score(defense: str, epochs: int | None, out: Path, device: str,
                     cache: Path | None, train_only: bool, restored: bool) -> dict[str, Any]:
    from xrbench import api

    ov = overrides(defense, epochs)
    t0 = time.perf_counter()
    trained = api.train(DATASET, MODEL, defense, seed=SEED, overrides=ov, device=device,
                        progress=True, cache_root=cache)
    train_s = time.perf_counter() - t0
    if train_only:
        publish_checkpoint(trained.path, defense, out)
        return {"defense": defense, "restored": restored, "train_s": round(train_s, 1)}
    res = api.evaluate(defense, DATASET, MODEL, EXPLAINER, PROFILE, seed=SEED, overrides=ov,
                       out=out, device=device, progress=True, cache_root=cache, replace=True)
    if res.entry["checkpoint"]["sha256"] != trained.sha256:
        raise SystemExit(f"{defense}: the entry scored {res.entry['checkpoint']['sha256'][:12]}"
                         f", not the trained checkpoint {trained.sha256[:12]}")
    publish_checkpoint(trained.path, defense, out)
    history = trained.meta.get("history") or []
    trained_s = sum(float(h.get("seconds", 0.0)) for h in history)
    return {"defense": defense, "restored": restored, "train_s": round(trained_s or train_s, 1),
            **{k: v for k, v in res.entry["timing"].items() if isinstance(v, (int, float))}}


def timing_table(rows: list[dict[str, Any]]) -> str:
    keys = sorted({k for r in rows for k in r} - {"defense", "restored"})
    head = "| defense | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys) + "\n"
    body = "".join(f"| {r['defense']} | " + " | ".join(str(r.get(k, "")) for k in keys) + " |\n"
                   for r in rows)
    return head + body


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="results folder (entries, checkpoints, timing)")
    ap.add_argument("--defenses", nargs="+", default=list(DEFENSES))
    ap.add_argument("--epochs", type=int, default=None,
                    help="shortened recipe (default: the reference 25 epochs)")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--cache", default=None, help="xrbench cache (default: $XRBENCH_CACHE)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="defenses run at once, each in its own process (a GPU is far from "
                         "busy with one 28x28 ConvNet at batch 64)")
    ap.add_argument("--train-only", action="store_true",
                    help="train and publish the checkpoints, score nothing")
    ap.add_argument("--carry", default=None, metavar="DIR",
                    help="keep each defense's stage outputs in DIR/<defense>/ as the run "
                         "writes them, and put them back into the cache first: commit DIR to "
                         "resume a stopped score on another machine")
    ap.add_argument("--save-carry", action="store_true",
                    help="with --carry: copy the cache's stage outputs into DIR/<defense>/ "
                         "(one defense) and exit; for a run started without --carry")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # a --jobs worker
    args = ap.parse_args(argv)
    out = Path(args.out)
    cache = Path(args.cache) if args.cache else None
    carry = Path(args.carry) if args.carry else None
    if args.save_carry:
        if carry is None or len(args.defenses) != 1:
            raise SystemExit("--save-carry needs --carry DIR and one defense (--defenses D)")
        n = save_carry(cache, carry / args.defenses[0])
        print(f"carry: {n} stage outputs copied into {carry / args.defenses[0]}")
        return 0
    if args.one:
        row = run_one(args.one, args.epochs, out, args.device, cache, args.train_only, carry)
        print("ROW " + json.dumps(row), flush=True)
        return 0
    rows: list[dict[str, Any]] = []
    if args.jobs <= 1:
        rows = [run_one(d, args.epochs, out, args.device, cache, args.train_only, carry)
                for d in args.defenses]
    else:
        base = [sys.executable, __file__, "--out", str(out), "--device", args.device]
        base += ["--epochs", str(args.epochs)] if args.epochs is not None else []
        base += ["--cache", str(cache)] if cache else []
        base += ["--train-only"] if args.train_only else []
        base += ["--carry", str(carry)] if carry else []
        pending = list(args.defenses)
        running: list[subprocess.Popen[str]] = []
        while pending or running:
            while pending and len(running) < args.jobs:
                running.append(subprocess.Popen([*base, "--one", pending.pop(0)],
                                                stdout=subprocess.PIPE, text=True))
            proc = running.pop(0)
            text, _ = proc.communicate()
            if proc.returncode:
                raise SystemExit(f"a worker failed (exit {proc.returncode}): {proc.args}")
            rows += [json.loads(ln[4:]) for ln in text.splitlines() if ln.startswith("ROW ")]
    table = timing_table(rows)
    folder = entry_folder(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "timing.md").write_text("Seconds per defense (`python leaderboard/runs/table15.py "
                                      + " ".join(argv or sys.argv[1:]) + "`)\n\n" + table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
