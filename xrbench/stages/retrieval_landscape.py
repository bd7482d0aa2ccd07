"""The protocol's class retrieval (PROTOCOL.md 5.5) and loss landscape (5.6) stages, each
declared once; :data:`xrbench.stages.STAGES` lists them in the order they run,
:mod:`xrbench.engine.stage` says what a stage is.
"""

from __future__ import annotations

from typing import Any

import torch

from ..columns import MIDDLE, WILDCARD, Column
from ..engine.runtime import ProtocolCall, RunContext, stage_seed
from ..engine.stage import Example, Stage, Summary, eps_key


# --- 5.5 class retrieval -----------------------------------------------------------------------

RETRIEVAL_KINDS = ("relex_adv_mask", "relex_clean_mask", "explainer_adv_mask",
                   "explainer_clean_mask")
RETRIEVAL_MEANINGS = {
    "relex_adv_mask": "clean class recovered from x_adv through the RelEx mask of x_adv "
                      "(explaining the clean class)",
    "relex_clean_mask": "clean class recovered from x_adv through the RelEx mask of x",
    "explainer_adv_mask": "the same with the explainer's own map of x_adv as the mask",
    "explainer_clean_mask": "the same with the explainer's own map of x as the mask",
}


class Retrieval(Stage):
    """Class retrieval through RelEx masks and the explainer's own masks."""

    name = "retrieval"
    shard_unit = "images"
    version = 4  # 3: masks of x_adv explain the clean prediction (protocol v2); 4: keyed
    # random numbers per image (batched RelEx, shards), so other PGD starts and RelEx noise

    def calls(self, ctx: RunContext) -> tuple[ProtocolCall, ProtocolCall]:
        from ..metrics import retrieval

        p = ctx.profile
        relex = ProtocolCall.bind(retrieval.relex_mask, iterations=p.relex_iterations,
                                  samples=p.relex_samples)
        return (ProtocolCall.bind(retrieval.retrieval, eps_list=tuple(ctx.card.retrieval_eps),
                                  pgd_steps=p.retrieval_pgd_steps, relex=dict(relex.kwargs)),
                relex)

    def params(self, ctx: RunContext) -> dict[str, Any]:
        from ..attacks.pgd import pgd_step_size

        call, relex = self.calls(ctx)
        p = call.params()
        p["pgd_step_size"] = [pgd_step_size(e, p["pgd_steps"]) for e in p["eps_list"]]
        p["relex"] = relex.params()  # every RelEx setting, not only the overridden ones
        return p

    def run(self, ctx: RunContext) -> dict[str, Any]:
        return self.run_shard(ctx, 0, ctx.images.shape[0])

    def run_shard(self, ctx: RunContext, lo: int, hi: int) -> dict[str, Any]:
        # random numbers keyed by (stage seed, subset index): a shard's hits are the
        # whole run's hits of its images
        call, _ = self.calls(ctx)
        out = call(ctx.model, ctx.explainer, ctx.images[lo:hi], card=ctx.card,
                   seed=stage_seed(ctx.seed, self.name), image_ids=torch.arange(lo, hi),
                   progress=ctx.progress)
        return {"eps": [float(e) for e in out["eps"]],
                "hits": {k: out["hits"][k].cpu() for k in RETRIEVAL_KINDS}}

    def merge(self, ctx: RunContext, parts: list[dict[str, Any]]) -> dict[str, Any]:
        return {"eps": parts[0]["eps"],
                "hits": {k: torch.cat([p["hits"][k] for p in parts], dim=-1)
                         for k in RETRIEVAL_KINDS}}

    def examples(self, out: dict[str, Any], grey: bool) -> dict[tuple[str, ...], Example]:
        return {("retrieval", kind, eps_key(float(e), grey)):
                Example(out["hits"][kind][i].float())
                for kind in RETRIEVAL_KINDS for i, e in enumerate(out["eps"])}

    columns = (
        Column("retrieval", ("retrieval", WILDCARD, WILDCARD), "Retrieval (%)", "share",
               "retrieval", scale=100.0, digits=1, better="higher",
               summary="retrieval {0} @ {1} (%)", short="Retrieval",
               pick=("relex_adv_mask", MIDDLE), correlated=True, order=90,
               meaning=RETRIEVAL_MEANINGS),
    )


# --- 5.6 loss landscape ------------------------------------------------------------------------

class Landscape(Stage):
    """Explanation-loss and cross-entropy landscapes along random directions (SEP eq. 5)."""

    name = "landscape"
    version = 2

    def gammas(self, ctx: RunContext) -> torch.Tensor:
        p = ctx.profile
        return torch.linspace(0, p.landscape_gamma_max_eps * ctx.card.eps_pgd,
                              p.landscape_points)

    def calls(self, ctx: RunContext) -> tuple[ProtocolCall, ProtocolCall]:
        from ..metrics import landscape

        gammas = self.gammas(ctx)
        return (ProtocolCall.bind(landscape.explanation_landscape_pairs, gammas=gammas),
                ProtocolCall.bind(landscape.ce_landscape_per_image, gammas=gammas))

    def params(self, ctx: RunContext) -> dict[str, Any]:
        expl, ce = self.calls(ctx)
        return {"pairs": ctx.profile.landscape_pairs,
                "explanation": expl.params(), "cross_entropy": ce.params()}

    def run(self, ctx: RunContext) -> dict[str, Any]:
        from ..attacks.manipulation import ordered_pairs

        # only evaluates maps at points (no create_graph): evaluation-only explainers run it
        expl, ce = self.calls(ctx)
        pairs = ordered_pairs(ctx.images.shape[0])
        g = ctx.generator(self.name)  # one stream: the pair sample, then both directions
        order = torch.randperm(len(pairs), generator=g, device=g.device).cpu()
        pick = pairs[order[:ctx.profile.landscape_pairs]]
        return {"gammas": self.gammas(ctx), "pairs": pick,
                "explanation": expl(ctx.model, ctx.explainer, ctx.images, pick,
                                    generator=g).cpu(),
                "cross_entropy": ce(ctx.model, ctx.images, ctx.labels, generator=g).cpu()}

    def summarize(self, ctx: RunContext, out: dict[str, Any]) -> Summary:
        # L_e is undefined (NaN) for a pair whose map is all zero (sum_map divides by its
        # sum; Grad-CAM's ReLU gives such maps): each gamma's mean is over the pairs where it
        # is defined (null where none is), and the entry counts the others
        expl = out["explanation"]
        defined = torch.isfinite(expl)
        n = defined.sum(dim=1)
        mean = (expl.mean(dim=1) if bool(defined.all()) else
                torch.where(defined, expl, torch.zeros_like(expl)).sum(dim=1) / n.clamp_min(1))
        land: dict[str, Any] = {
            "gammas": [float(v) for v in out["gammas"]],
            "explanation": [float(m) if k > 0 else None for m, k in zip(mean, n)],
            "cross_entropy": [float(v) for v in out["cross_entropy"].mean(dim=1)]}
        if not bool(defined.all()):
            land["explanation_undefined_pairs"] = [int(v) for v in (~defined).sum(dim=1)]
        return Summary({"landscape": land})
