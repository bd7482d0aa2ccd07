"""The protocol's per-image score stages: clean and PGD accuracy (PROTOCOL.md 5.1), RPS (5.3),
Insertion and Adv-Insertion (5.4), each declared once; :data:`xrbench.stages.STAGES` lists
them in the order they run, :mod:`xrbench.engine.stage` says what a stage is.
"""

from __future__ import annotations

from typing import Any

import torch

from ..columns import TABLE_EPS, WILDCARD, Column
from ..engine.runtime import ProtocolCall, RunContext, require_differentiable
from ..engine.stage import Example, Stage, Summary, eps_key, metric_tree


# --- 5.1 clean and PGD accuracy ----------------------------------------------------------------

class Accuracy(Stage):
    """Clean and PGD accuracy on the test split (capped by the profile)."""

    name = "accuracy"
    version = 2
    summary_rank = 0

    def call(self, ctx: RunContext) -> ProtocolCall:
        from ..attacks.pgd import pgd_step_size
        from ..metrics import accuracy as acc

        eps, steps = ctx.card.eps_pgd, ctx.profile.pgd_steps
        return ProtocolCall.bind(acc.accuracy_under_pgd, eps=eps, steps=steps,
                                 step_size=pgd_step_size(eps, steps))

    def n_images(self, ctx: RunContext) -> int:
        cap, n = ctx.profile.pgd_max_images, len(ctx.dataset.test)
        return n if cap is None else min(cap, n)

    def params(self, ctx: RunContext) -> dict[str, Any]:
        return {**self.call(ctx).params(), "n_images": self.n_images(ctx)}

    def run(self, ctx: RunContext) -> dict[str, Any]:
        out = self.call(ctx)(ctx.model, ctx.dataset.test,
                             indices=torch.arange(self.n_images(ctx)),
                             generator=ctx.generator(self.name), progress=ctx.progress)
        return {"clean_correct": out["clean_correct"].cpu(),
                "pgd_correct": out["pgd_correct"].cpu()}

    def examples(self, out: dict[str, Any], grey: bool) -> dict[tuple[str, ...], Example]:
        return {("clean_acc",): Example(out["clean_correct"].float(), scale=100.0),
                ("pgd_acc",): Example(out["pgd_correct"].float(), scale=100.0)}

    def summarize(self, ctx: RunContext, out: dict[str, Any]) -> Summary:
        metrics = metric_tree(ctx, self.examples(out, ctx.card.grey))
        chance = 100.0 / ctx.card.num_classes
        return Summary(metrics,
                       {"degenerate": (metrics["clean_acc"]["value"] or 0.0) < 2 * chance})

    columns = (
        Column("clean_acc", ("clean_acc",), "clean acc (%)", "percent", "accuracy",
               digits=2, better="higher", summary="clean accuracy (%)", interval_digits=2,
               order=10, meaning="test images classified correctly"),
        Column("pgd_acc", ("pgd_acc",), "PGD acc (%)", "percent", "accuracy", digits=2,
               better="higher", summary="PGD accuracy (%)", interval_digits=2, order=20,
               meaning="still correct under an L-inf PGD attack (prediction robustness)"),
    )


# --- 5.3 RPS ----------------------------------------------------------------------------------

class RPS(Stage):
    """Random perturbation similarity of the explainer's maps."""

    name = "rps"
    version = 3  # 3: RobustAGA's SSIM (7-tap window, zero padding, whole map; protocol v3)

    def call(self, ctx: RunContext) -> ProtocolCall:
        from ..metrics import rps

        return ProtocolCall.bind(rps.rps, eps=tuple(ctx.card.rps_eps),
                                 draws=ctx.profile.rps_draws)

    def run(self, ctx: RunContext) -> dict[str, Any]:
        # the noise is drawn on the CPU: then batch size and device never change a number
        values = self.call(ctx)(ctx.model, ctx.explainer, ctx.images, ctx.labels,
                                generator=ctx.generator(self.name, device="cpu"))
        return {sim: {eps_key(e, False): v.cpu() for e, v in per.items()}
                for sim, per in values.items()}

    def examples(self, out: dict[str, Any], grey: bool) -> dict[tuple[str, ...], Example]:
        return {("rps", sim, e): Example(v) for sim, per in out.items()
                if not sim.startswith("_") for e, v in per.items()}

    columns = (
        Column("rps_cosine", ("rps", WILDCARD, WILDCARD), "RPS cos", "similarity", "rps",
               digits=3, better="higher", summary="RPS {0} @ {1}", short="RPS cos",
               pick=("cosine", TABLE_EPS), correlated=True, order=60,
               meaning="map similarity under uniform noise of radius eps"),
    )


# --- 5.4 Insertion and Adv-Insertion -----------------------------------------------------------

def merge_insertion(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Insertion outputs of consecutive shards of images, as one output."""
    return {"scores": torch.cat([p["scores"] for p in parts]),
            "curve": torch.cat([p["curve"] for p in parts], dim=1),
            "ratios": parts[0]["ratios"]}


def insertion_output(curves: torch.Tensor, ratios: Any) -> dict[str, Any]:
    """An Insertion stage's output from the per-image curves (N, R) in [0, 1]: ``scores``
    (N,) in percent, ``100 * mean_r`` (PROTOCOL 5.4; the metric), ``curve`` (R, N), the
    probability of the true label at each ratio, and ``ratios`` (R,) (for the figures)."""
    return {"scores": (100 * curves.mean(1)).cpu(), "curve": curves.t().contiguous().cpu(),
            "ratios": torch.tensor([float(r) for r in ratios], dtype=torch.float64)}


class Insertion(Stage):
    """Insertion score of the explainer's ranking of pixels."""

    name = "insertion"
    version = 3  # 2: the reference's 20 ratios (protocol v2); 3: keeps the curves
    shard_unit = "images"

    def call(self, ctx: RunContext) -> ProtocolCall:
        from ..metrics import insertion

        return ProtocolCall.bind(insertion.insertion_curves)

    def run(self, ctx: RunContext) -> dict[str, Any]:
        return self.run_shard(ctx, 0, ctx.images.shape[0])

    def run_shard(self, ctx: RunContext, lo: int, hi: int) -> dict[str, Any]:
        call = self.call(ctx)
        return insertion_output(call(ctx.model, ctx.explainer, ctx.images[lo:hi],
                                     ctx.labels[lo:hi]), call.params()["ratios"])

    def merge(self, ctx: RunContext, parts: list[dict[str, Any]]) -> dict[str, Any]:
        return merge_insertion(parts)

    def examples(self, out: dict[str, Any], grey: bool) -> dict[tuple[str, ...], Example]:
        return {("insertion",): Example(out["scores"])}

    columns = (
        Column("insertion", ("insertion",), "Insertion (%)", "percent", "insertion",
               digits=2, better="higher", short="Insertion", correlated=True,
               interval_digits=2, order=70,
               meaning="class probability as the map's top pixels are put back "
                       "(faithfulness)"),
    )


class AdvInsertion(Insertion):
    """Insertion in the order of the map of a frame-target manipulated image (runs, shards
    and merges as :class:`Insertion`; only the metric it calls differs)."""

    name = "adv_insertion"
    version = 4  # 3: the reference's 20 ratios (protocol v2); 4: keeps the curves
    differentiates = "the Adv-Insertion frame attack (PROTOCOL 5.4)"

    def call(self, ctx: RunContext) -> ProtocolCall:
        from ..attacks.frame import adv_insertion_eps, frame_lr
        from ..metrics import insertion

        eps = adv_insertion_eps(ctx.model_name)
        iterations = ctx.profile.adv_insertion_iterations
        return ProtocolCall.bind(insertion.adv_insertion_curves, eps=eps,
                                 iterations=iterations, lr=frame_lr(eps, iterations))

    def run_shard(self, ctx: RunContext, lo: int, hi: int) -> dict[str, Any]:
        require_differentiable(ctx.explainer, "Adv-Insertion frame attack")
        return super().run_shard(ctx, lo, hi)

    def examples(self, out: dict[str, Any], grey: bool) -> dict[tuple[str, ...], Example]:
        return {("adv_insertion",): Example(out["scores"])}

    columns = (
        Column("adv_insertion", ("adv_insertion",), "Adv-Ins. (%)", "percent",
               "adv_insertion", digits=2, better="higher", summary="Adv-Insertion (%)",
               short="Adv-Ins.", correlated=True, order=80,
               meaning="Insertion in the order of a map pushed to a frame by a small "
                       "attack"),
    )
