"""What the commands of the ``xrbench`` command line share: the options train and evaluate
both take (:func:`add_common_options`), the executor options of evaluate and sweep, ``--set``
parsing, the parser whose usage errors are one line, and when to draw progress bars.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from ..errors import XRBenchError

EXIT_USAGE = 2

Handler = Callable[[argparse.Namespace], int]


def parse_sets(items: Sequence[str] | None) -> dict[str, str]:
    """``--set KEY=VALUE`` items (repeatable) as ``{key: value}``; an item without ``=`` is an
    :class:`XRBenchError`."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise XRBenchError(f"--set expects KEY=VALUE (e.g. --set lambda_=-1000), got {item!r}")
        out[key.strip()] = value.strip()
    return out


EXTRACTOR_HELP = ("build the subset with torchvision's ImageNet ResNet18 from this weights file "
                  "(resnet18-f37072fd.pth; never downloaded) instead of training the reference "
                  "ResNet18 on the dataset; its sha256 goes into the manifest")


def add_common_options(p: argparse.ArgumentParser, *,
                       defense_default: str | None = "normal") -> None:
    """The options of ``train`` and ``evaluate``: what to train, with which recipe, where."""
    p.add_argument("--dataset", default="digits",
                   help="dataset name (default: digits, embedded and offline); see `xrbench list "
                        "datasets`")
    p.add_argument("--model", default="convnet", help="model name (default: convnet)")
    p.add_argument("--defense", default=defense_default,
                   help=f"defense name (default: {defense_default}); see `xrbench list defenses`")
    p.add_argument("--seed", type=SEED, default=0, help="seed for initialisation, data order and "
                                                       "the defense's randomness (default: 0)")
    p.add_argument("--epochs", type=EPOCHS, default=None,
                   help="override the recipe's epochs (the recipe hash changes accordingly)")
    p.add_argument("--set", dest="sets", action="append", metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set lambda_=-1000 (repeatable)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    p.add_argument("--data-dir", default=None,
                   help="where datasets live (default: $XRBENCH_DATA or ~/.cache/xrbench/data): "
                        "MNIST-like idx files flat or as <root>/FashionMNIST/raw/, "
                        "cifar-10-batches-py/ or cifar-100-python/ as torchvision unpacks them, "
                        "tiny-imagenet-200/; fashion_mnist is also found in "
                        "/usr/share/datasets/fashion-mnist (apt-get install "
                        "dataset-fashion-mnist); imagefolder:PATH takes its own path")
    p.add_argument("--retrain", action="store_true",
                   help="train again even when a cached checkpoint exists")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_executor_options(p: argparse.ArgumentParser, tasks: str = "tasks") -> None:
    """--executor and --ray-address; ``tasks`` says what runs on the executor (evaluate's
    "shards", sweep's "cells")."""
    p.add_argument("--executor", default="local", choices=["local", "ray"],
                   help=f"where the {tasks} run: local (default; in this process, one after "
                        f"another) or ray (each a Ray task; needs pip install "
                        f"\"xrbench[ray]\")")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="with --executor ray: a running Ray cluster (ray://host:10001, "
                        "host:6379 or auto); default: start a local cluster with this "
                        "machine's CPUs and GPUs for the run, and stop it after")


#: the largest seed: torch generators take 64-bit seeds and a run derives ``seed + k`` from
#: its seed, so seeds stay well below 2**63
MAX_SEED = 2 ** 62


def int_in(lo: int, hi: int, what: str) -> Callable[[str], int]:
    """An argparse ``type``: an integer in ``[lo, hi]``, else a one-line usage error saying
    the range (``--epochs 0`` is an error, never a silent default)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be an integer, got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{what} must be between {lo} and {hi}, got "
                                             f"{value}")
        return value

    parse.__name__ = what  # argparse names the type in its messages
    return parse


#: the integer options, typed once
EPOCHS = int_in(1, 10_000, "epochs")
SEED = int_in(0, MAX_SEED, "seed")


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line on stderr (and exit 2), like every other
    error of the command line; ``--help`` shows the usage."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"xrbench: error: {message} (see `{self.prog} --help`)\n")


def progress_bars(args: argparse.Namespace) -> bool:
    """Progress bars only on a terminal: piped to a file, a bar is hundreds of lines of
    frames; there the log gets one line per finished stage instead (see ``main``)."""
    return not args.quiet and sys.stderr.isatty()
