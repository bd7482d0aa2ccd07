"""``xrbench evaluate``: score one defense with the fixed protocol, write its entry and
print its summary table (:func:`summary_table`)."""

from __future__ import annotations

import argparse
from typing import Any

from .common import (EXTRACTOR_HELP, Handler, add_common_options, add_executor_options, int_in,
                     parse_sets, progress_bars)


def add_commands(sub: Any) -> dict[str, Handler]:
    """Add the ``evaluate`` subparser to ``sub``; return ``{"evaluate": handler}``."""
    from ..protocol import PROFILES

    p = sub.add_parser(
        "evaluate", help="score one defense with the fixed protocol and write its JSON entry",
        description="Get or train the checkpoint, get the frozen subset, run every metric "
                    "(PGD accuracy, explanation manipulation, RPS, Insertion, Adv-Insertion, "
                    "RelEx retrieval, loss landscape), print a summary and write one entry to "
                    "OUT/<dataset>/<model>/<explainer>/<profile>/<defense>-s<seed>.json. Each "
                    "stage is cached: an interrupted run resumes where it stopped.")
    add_common_options(p)
    p.add_argument("--explainer", default="grad_x_input",
                   help="explainer used for scoring (default: grad_x_input); independent of "
                        "any explainer a defense trains with (--set explainer=...)")
    p.add_argument("--profile", default="quick", choices=list(PROFILES),
                   help="protocol sizes: quick (default; 50 images, the published digits table), "
                        "paper (150 images, the papers' sizes), smoke (tests and CI)")
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
    p.add_argument("--shards", type=int_in(1, 100_000, "--shards"), default=None, metavar="N",
                   help="split the manipulation (pairs), RelEx retrieval, Insertion and "
                        "Adv-Insertion (images) into N deterministic shards run on the "
                        "executor; the merged entry equals an unsharded run's (default: 1 with "
                        "--executor local, one per CPU of the Ray cluster with ray)")
    p.add_argument("--attacks", default="", metavar="NAMES",
                   help="comma-separated registered attacks (`xrbench list attacks`, plugins "
                        "of the entry-point group xrbench.attacks) added to the worst-case "
                        "ensemble of PROTOCOL 5.8 (dombrowski, smoothed, signed, restart); "
                        "the entry records them and is then not a reference row")
    return {"evaluate": _cmd_evaluate}


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

    from ..stages import STAGES

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
        from ..leaderboard.render import reference_note

        notes.append(f"note: not a reference row: {reference_note(entry)}")
    return "\n".join([head, tabulate(rows, headers=["metric", "value", "95% CI", "better",
                                                    "meaning"], tablefmt="simple",
                                 disable_numparse=True,
                                 colalign=("left", "right", "left", "left", "left")), *notes])


FLAG_NOTES = {
    "not_converged": "note: not_converged: the manipulation's loss was still falling at the end "
                     "of its fixed budget; expected at the protocol's budget (Expl@end is a "
                     "fixed-budget number, docs/protocol.md)",
    "attack_sensitive": "note: attack_sensitive: the ensemble's worst case lies more than 20% "
                        "below Expl@end with disjoint intervals; the fixed-budget Expl@end "
                        "overstates this model's explanation robustness (PROTOCOL 5.8)",
    "degenerate": "note: degenerate: clean accuracy is below twice chance; the explanation "
                  "metrics of such a model say little",
}


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .. import api

    overrides = parse_sets(args.sets)
    if args.epochs is not None:
        overrides["epochs"] = str(args.epochs)
    res = api.evaluate(defense=args.defense, dataset=args.dataset, model=args.model,
                       explainer=args.explainer, profile=args.profile, seed=args.seed,
                       out=args.out, checkpoint=args.checkpoint,
                       checkpoint_sha256=args.checkpoint_sha256, overrides=overrides,
                       device=args.device, data_dir=args.data_dir, retrain=args.retrain,
                       force=args.force, replace=args.replace, progress=progress_bars(args),
                       extractor_weights=args.extractor_weights, shards=args.shards,
                       executor=args.executor, ray_address=args.ray_address,
                       attacks=[a.strip() for a in args.attacks.split(",") if a.strip()])
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
