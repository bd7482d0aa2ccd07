"""One epoch of a defense on real Fashion-MNIST, with PyTorch's NCHW max pooling ("before")
and with xrbench's channels-last pooling ("after", :mod:`xrbench.pooling`), one after the
other in one process, each in a fresh temporary cache (issue 22: per-epoch time before and
after). Prints each epoch's seconds, the ratio and both checkpoints' sha256, which must be
equal: the pooling changes no bit of the weights.

    OMP_NUM_THREADS=1 python benchmarks/epoch_time.py --defense mat

The recipe is Table 15's (``leaderboard/runs/table15.py``) shortened to one epoch (the
seconds of one epoch, not the 25-epoch schedule's weights). Needs the real data (Debian's
``dataset-fashion-mnist``); one ``mat`` epoch is about 20 minutes on one thread.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "leaderboard" / "runs"))

import table15  # noqa: E402
import xrbench.models  # noqa: E402
from xrbench import api  # noqa: E402


def one_epoch(defense: str, channels_last_pooling: bool) -> tuple[float, str]:
    """(seconds, checkpoint sha256) of one epoch of ``defense``'s Table 15 recipe."""
    swap = xrbench.models.use_channels_last_pooling
    if not channels_last_pooling:  # models keep nn.MaxPool2d
        xrbench.models.use_channels_last_pooling = lambda net, enabled=True: 0  # type: ignore
    try:
        with tempfile.TemporaryDirectory(prefix="xrbench-epoch-") as cache:
            t0 = time.perf_counter()
            trained = api.train(table15.DATASET, table15.MODEL, defense, seed=table15.SEED,
                                overrides=table15.overrides(defense, 1), progress=True,
                                cache_root=cache, device="cpu")
            return time.perf_counter() - t0, trained.sha256
    finally:
        xrbench.models.use_channels_last_pooling = swap


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--defense", default="mat")
    args = ap.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    before = one_epoch(args.defense, channels_last_pooling=False)
    after = one_epoch(args.defense, channels_last_pooling=True)
    print(f"{args.defense}, one epoch of real Fashion-MNIST: before {before[0]:.0f} s, "
          f"after {after[0]:.0f} s ({before[0] / after[0]:.2f}x)")
    print(f"sha256 before {before[1]}\nsha256 after  {after[1]}")
    if before[1] != after[1]:
        print("the checkpoints differ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
