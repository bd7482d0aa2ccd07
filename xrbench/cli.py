"""The ``xrbench`` command line. It parses, calls :mod:`xrbench.api`, and prints.

Every error a user can cause becomes one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import time
from typing import Callable, Sequence

from .errors import XRBenchError

EXIT_USAGE = 2

Handler = Callable[[argparse.Namespace], int]

MAIN_HELP = """\
xrbench trains any registered defense with its reference recipe, scores it with one fixed
protocol (explanation manipulation, RPS, insertion, RelEx retrieval, PGD accuracy), and
writes standardized JSON entries and markdown leaderboards.

The main job:  xrbench evaluate --defense sep_neg --dataset digits
"""


def _parse_sets(items: Sequence[str] | None) -> dict[str, str]:
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


def _add_common(p: argparse.ArgumentParser, *, defense_default: str | None = "normal") -> None:
    p.add_argument("--dataset", default="digits",
                   help="dataset name (default: digits, embedded and offline); see `xrbench list "
                        "datasets`")
    p.add_argument("--model", default="convnet", help="model name (default: convnet)")
    p.add_argument("--defense", default=defense_default,
                   help=f"defense name (default: {defense_default}); see `xrbench list defenses`")
    p.add_argument("--seed", type=int, default=0, help="seed for initialisation, data order and "
                                                       "the defense's randomness (default: 0)")
    p.add_argument("--epochs", type=int, default=None,
                   help="override the recipe's epochs (the recipe hash changes accordingly)")
    p.add_argument("--set", dest="sets", action="append", metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set lambda_=-1000 (repeatable)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    p.add_argument("--data-dir", default=None,
                   help="where datasets live (default: $XRBENCH_DATA or ~/.cache/xrbench/data)")
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


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line on stderr (and exit 2), like every other
    error of the command line; ``--help`` shows the usage."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"xrbench: error: {message} (see `{self.prog} --help`)\n")


#: modules adding commands that read and write entries; each has ``add_commands(sub)``,
#: which adds its subparsers and returns ``{command: handler}``
COMMAND_MODULES = ("xrbench.cli_results", "xrbench.cli_plot", "xrbench.cli_regress",
                   "xrbench.cli_sweep")


def build_parser(handlers: dict[str, Handler] | None = None) -> argparse.ArgumentParser:
    """The ``xrbench`` parser; the result commands' handlers are added to ``handlers``."""
    from .protocol import PROFILES

    handlers = {} if handlers is None else handlers

    parser = _Parser(
        prog="xrbench", description=MAIN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("list", help="list registered datasets, models, explainers or defenses",
                       description="List the registered components of one kind, with a "
                                   "one-line description each (plugins included).")
    p.add_argument("kind", choices=["datasets", "models", "explainers", "defenses"])
    p.add_argument("--load", action="store_true",
                   help="import every component and plugin to list them (slower; reports a "
                        "plugin that fails to load or clashes with another name)")

    p = sub.add_parser("recipe", help="show a defense's recipe: every field, its value, unit "
                                      "and source",
                       description="Print the recipe a defense trains with on a dataset and "
                                   "model: each field with the value it resolves to, its "
                                   "default, and the note beside it in the code (unit, rule, "
                                   "source). Change a field with --set KEY=VALUE on train or "
                                   "evaluate.")
    p.add_argument("defense", help="defense name (see `xrbench list defenses`)")
    p.add_argument("--dataset", default="digits", help="dataset (default: digits)")
    p.add_argument("--model", default="convnet", help="model (default: convnet)")
    p.add_argument("--set", dest="sets", action="append", metavar="KEY=VALUE",
                   help="show the recipe with this override (repeatable)")
    p.add_argument("--data-dir", default=None, help="where datasets live")

    p = sub.add_parser("train", help="train (or fetch from the cache) one defense's checkpoint",
                       description="Train a model with a defense's reference recipe. The "
                                   "checkpoint is cached by (dataset, model, defense, recipe, "
                                   "seed); an identical second run reuses it.")
    _add_common(p)

    p = sub.add_parser(
        "evaluate", help="score one defense with the fixed protocol and write its JSON entry",
        description="Get or train the checkpoint, get the frozen subset, run every metric "
                    "(PGD accuracy, explanation manipulation, RPS, Insertion, Adv-Insertion, "
                    "RelEx retrieval, loss landscape), print a summary and write one entry to "
                    "OUT/<dataset>/<model>/<explainer>/<profile>/<defense>-s<seed>.json. Each "
                    "stage is cached: an interrupted run resumes where it stopped.")
    _add_common(p)
    p.add_argument("--explainer", default="grad_x_input",
                   help="explainer used for scoring (default: grad_x_input); independent of "
                        "any explainer a defense trains with (--set explainer=...)")
    p.add_argument("--profile", default="quick", choices=list(PROFILES),
                   help="protocol sizes (default: quick; paper = published leaderboards)")
    p.add_argument("--out", default=None,
                   help="results folder (default: $XRBENCH_RESULTS or ~/.cache/xrbench/results)")
    p.add_argument("--checkpoint", default=None, metavar="PATH",
                   help="score these weights (a state dict for --model) instead of training")
    p.add_argument("--checkpoint-sha256", default=None,
                   help="expected sha256 of --checkpoint (else its sidecar JSON, if any)")
    p.add_argument("--force", action="store_true",
                   help="recompute every stage and replace an existing entry")
    p.add_argument("--replace", action="store_true",
                   help="replace an existing entry of a different run (say, one written by an "
                        "older xrbench without a newer stage), reusing the cached stages")
    p.add_argument("--extractor-weights", default=None, metavar="PATH", help=EXTRACTOR_HELP)
    add_executor_options(p, "shards")
    p.add_argument("--shards", type=int, default=None, metavar="N",
                   help="split the manipulation (pairs), RelEx retrieval, Insertion and "
                        "Adv-Insertion (images) into N deterministic shards run on the "
                        "executor; the merged entry equals an unsharded run's (default: 1 with "
                        "--executor local, one per CPU of the Ray cluster with ray)")

    p = sub.add_parser(
        "calibrate", help="choose SEP's lambda for a dataset the paper did not use",
        description="PROTOCOL 7: train MAT and SEP (sep_pos or sep_neg) for every |lambda| of "
                    "a grid with a short recipe (10 epochs unless --epochs), score clean and "
                    "PGD accuracy on up to 1000 test images, and choose the largest |lambda| "
                    "whose PGD accuracy stays within 3 points of MAT's and clean accuracy "
                    "within 10. Every grid point is a cached checkpoint (an interrupted run "
                    "resumes). The record (every point, the rule, the choice) goes to "
                    "~/.cache/xrbench/calibrations/, where train and evaluate find it.")
    p.add_argument("--defense", required=True, choices=["sep_pos", "sep_neg"],
                   help="which SEP variant's lambda to choose (the sign of the grid)")
    p.add_argument("--dataset", default="digits", help="dataset (default: digits)")
    p.add_argument("--model", default="convnet", help="model (default: convnet)")
    p.add_argument("--grid", nargs="+", type=float, default=None, metavar="LAMBDA",
                   help="|lambda| values to try; the defense's sign is applied (default: 10 30 "
                        "100 300 1000 3000 10000 30000 100000)")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs of the short recipe (default: 10)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of every training and of the PGD scoring (default: 0)")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="write the record here instead of the cache (train/evaluate then do "
                        "not find it)")
    p.add_argument("--force", action="store_true",
                   help="replace an existing record that holds a different calibration")
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--quiet", action="store_true")

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

    for module in COMMAND_MODULES:  # the result commands live in their own modules
        handlers.update(importlib.import_module(module).add_commands(sub))
    return parser


def _bars(args: argparse.Namespace) -> bool:
    """Progress bars only on a terminal: piped to a file, a bar is hundreds of lines of
    frames; there the log gets one line per finished stage instead (see ``main``)."""
    return not args.quiet and sys.stderr.isatty()


def _cmd_list(args: argparse.Namespace) -> int:
    if args.load:
        from . import registry

        rows = [(e.display_name,
                 e.description + ("" if e.source == "xrbench" else f" [{e.source}]"))
                for e in getattr(registry, args.kind).entries()]
    else:
        from .catalogue import listing

        rows = listing(args.kind)
    width = max(len(r[0]) for r in rows) if rows else 0
    for name, desc in rows:
        print(f"{name:<{width}}  {desc}")
    return 0


def _cmd_recipe(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from . import api

    rows = api.recipe(args.defense, args.dataset, args.model, overrides=_parse_sets(args.sets),
                      data_dir=args.data_dir)
    print(f"{args.defense} on {args.dataset} / {args.model}:")
    print(tabulate([(r["field"], r["value"],
                     "(by dataset/model)" if r["default"] is None else r["default"], r["note"])
                    for r in rows],
                   headers=["field", "value", "default", "note"], tablefmt="simple",
                   disable_numparse=True))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from . import api

    overrides = _parse_sets(args.sets)
    if args.epochs is not None:
        overrides["epochs"] = str(args.epochs)
    t0 = time.perf_counter()
    trained = api.train(dataset=args.dataset, model=args.model, defense=args.defense,
                        seed=args.seed, overrides=overrides, device=args.device,
                        data_dir=args.data_dir, retrain=args.retrain, progress=_bars(args))
    meta = trained.meta
    state = "reused cached checkpoint" if trained.reused else "trained"
    print(f"{state}: {trained.path}")
    print(f"  dataset {meta['dataset']}  model {meta['model']['name']}  defense "
          f"{meta['defense']}  seed {meta['seed']}  recipe {meta['recipe_hash']}")
    print(f"  test accuracy {meta['test_acc']:.2f}%  sha256 {trained.sha256[:16]}...  "
          f"wall {time.perf_counter() - t0:.1f} s")
    return 0


def _fmt(m: dict | None, scale: float = 1.0, digits: int = 2) -> tuple[str, str]:
    if not m or m.get("value") is None:
        return "-", ""
    ci = m.get("ci")
    ci_s = f"[{ci[0] * scale:.{digits}f}, {ci[1] * scale:.{digits}f}]" if ci else ""
    return f"{m['value'] * scale:.{digits}f}", ci_s


def summary_table(entry: dict) -> str:
    """A readable summary of one entry's metrics (value and 95% bootstrap interval), one
    row per number each stage prints (:meth:`xrbench.stages.Stage.rows`)."""
    from tabulate import tabulate

    from .stages import STAGES

    m = entry["metrics"]
    na = entry.get("not_applicable") or {}  # stages that did not run, with the reason
    rows, last = [], None
    for stage in sorted(STAGES, key=lambda s: s.summary_rank):
        for r in stage.rows(m):
            value = ("n/a", "") if stage.name in na else _fmt(r.metric, r.scale, r.digits)
            rows.append((r.label, *value, r.better, "" if r.meaning == last else r.meaning))
            last = r.meaning
    flags = [k for k, v in entry.get("flags", {}).items() if v]
    head = (f"{entry['defense']['name']} on {entry['dataset']['name']} / {entry['model']['name']}"
            f" / {entry['explainer']['name']} / profile {entry['protocol']['profile']} / seed "
            f"{entry['seed']}" + (f"   flags: {', '.join(flags)}" if flags else ""))
    notes = [FLAG_NOTES[f] for f in flags if f in FLAG_NOTES]
    notes += [f"note: n/a: {stage} not applicable: {reason}" for stage, reason in na.items()]
    if entry["defense"].get("reference") is False:
        from .leaderboard.render import reference_note

        notes.append(f"note: not a reference row: {reference_note(entry)}")
    return "\n".join([head, tabulate(rows, headers=["metric", "value", "95% CI", "better",
                                                    "meaning"], tablefmt="simple",
                                 disable_numparse=True,
                                 colalign=("left", "right", "left", "left", "left")), *notes])


FLAG_NOTES = {
    "not_converged": "note: not_converged: the manipulation's loss was still falling at the end "
                     "of its fixed budget; expected at the protocol's budget (Expl@end is a "
                     "fixed-budget number, docs/protocol.md)",
    "degenerate": "note: degenerate: clean accuracy is below twice chance; the explanation "
                  "metrics of such a model say little",
}


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from . import api

    overrides = _parse_sets(args.sets)
    if args.epochs is not None:
        overrides["epochs"] = str(args.epochs)
    res = api.evaluate(defense=args.defense, dataset=args.dataset, model=args.model,
                       explainer=args.explainer, profile=args.profile, seed=args.seed,
                       out=args.out, checkpoint=args.checkpoint,
                       checkpoint_sha256=args.checkpoint_sha256, overrides=overrides,
                       device=args.device, data_dir=args.data_dir, retrain=args.retrain,
                       force=args.force, replace=args.replace, progress=_bars(args),
                       extractor_weights=args.extractor_weights, shards=args.shards,
                       executor=args.executor, ray_address=args.ray_address)
    print(summary_table(res.entry))
    timing = ", ".join(f"{k} {v:.1f}s" + (" (cached)" if k in res.reused_stages else "")
                       for k, v in res.seconds.items())
    print(f"wall time of this run: {timing}")
    if res.reused_stages:
        print(f"reused cached stages: {', '.join(res.reused_stages)} (the entry's timing "
              "keeps the time each took when computed)")
    state = "wrote" if res.written else "unchanged (same run)"
    print(f"{state}: {res.path}")
    return 0


def _cmd_subset(args: argparse.Namespace) -> int:
    from . import api

    manifest, where = api.subset(args.dataset, args.profile, device=args.device,
                                 data_dir=args.data_dir, out=args.out, rebuild=args.rebuild,
                                 force=args.force, progress=_bars(args),
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


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from . import api
    from .calibrate import SHORT_EPOCHS

    def row(point: dict) -> str:
        if point.get("clean") is None:
            return f"{point['lambda']:>10g}  {'-':>8}  {'-':>8}  {point['status']}"
        mark = "" if "passes" not in point else ("yes" if point["passes"] else "no")
        return (f"{point['lambda']:>10g}  {point['clean']:8.2f}  {point['pgd']:8.2f}  "
                f"{'(MAT, the reference)' if point['lambda'] == 0 else mark}")

    print(f"{'lambda':>10}  {'clean %':>8}  {'PGD %':>8}  passes the rule", flush=True)
    record, path = api.calibrate(args.defense, args.dataset, args.model, grid=args.grid,
                                 epochs=args.epochs or SHORT_EPOCHS, seed=args.seed,
                                 device=args.device, data_dir=args.data_dir, out=args.out,
                                 force=args.force, progress=_bars(args),
                                 on_point=lambda p: print(row(p), flush=True))
    chosen = record["chosen"]
    print(f"rule: {record['rule']['text']}")
    if chosen is None:
        print(f"no lambda of the grid passed the rule; try smaller values (--grid ...). "
              f"Record: {path}")
        return 1
    print(f"chosen lambda for {args.defense} on {record['dataset']}/{record['model']}: "
          f"{chosen:g}\nrecord: {path}")
    return 0


COMMANDS = {"list": _cmd_list, "recipe": _cmd_recipe, "train": _cmd_train, "evaluate": _cmd_evaluate,
            "subset": _cmd_subset, "calibrate": _cmd_calibrate}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``xrbench`` console script; returns the exit code."""
    try:
        handlers = dict(COMMANDS)
        parser = build_parser(handlers)
        args = parser.parse_args(argv)
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                            format="%(levelname)s %(name)s: %(message)s")
        if not getattr(args, "quiet", True):  # the subset extractor's step, bar or not
            logging.getLogger("xrbench.subset").setLevel(logging.INFO)
        if not getattr(args, "quiet", True) and not sys.stderr.isatty():
            for name in ("xrbench.api", "xrbench.train"):  # a line per stage and per epoch
                logging.getLogger(name).setLevel(logging.INFO)
        if args.version:
            from . import __version__

            print(f"xrbench {__version__}")
            return 0
        if not args.command:
            parser.print_help()
            return EXIT_USAGE
        return int(handlers[args.command](args) or 0)
    except XRBenchError as exc:
        print(f"xrbench: error: {' '.join(str(exc).split())}", file=sys.stderr)  # one line
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("xrbench: interrupted; finished stages are cached, run the same command again "
              "to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
