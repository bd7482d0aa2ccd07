"""The worst-case ensemble stage (PROTOCOL.md 5.8): Expl@end (worst) per pair over the
manipulation's attack and the ensemble's others (:mod:`xrbench.attacks.ensemble`), resumable
chunk by chunk and shardable like the manipulation; :data:`xrbench.stages.STAGES` runs it right
after the manipulation, whose output it reads (:attr:`RunContext.outputs`).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..columns import Column
from ..engine.runtime import RunContext, require_differentiable
from ..engine.stage import Example, Stage, Summary, metric_tree
from .manipulation import Manipulation

log = logging.getLogger("xrbench.stages")

#: an entry whose worst case lies below its Expl@end by more than this share, with disjoint
#: intervals, is flagged ``attack_sensitive`` (PROTOCOL 5.8)
SENSITIVE_DROP = 0.20


class Ensemble(Stage):
    """Each pair's lowest L_e over the ensemble's candidates that keep the victim's class."""

    name = "ensemble"
    version = 1
    summary_rank = 11
    differentiates = "the worst-case attack ensemble (PROTOCOL 5.8)"
    shard_unit = "pairs"

    def budget(self, ctx: RunContext) -> Any:
        from ..attacks.ensemble import Budget
        from ..engine.runtime import stage_seed

        return Budget(iterations=ctx.profile.manipulation_iterations,
                      lr=ctx.profile.lr_for(ctx.card), eps_pgd=float(ctx.card.eps_pgd),
                      seed=stage_seed(ctx.seed, self.name))

    def attacks(self, ctx: RunContext) -> list[tuple[str, Any]]:
        """(name, function) of the attacks this stage runs (all but ``dombrowski``)."""
        from ..attacks.ensemble import resolve

        return resolve(ctx.extra_attacks)

    def pair_rows(self, ctx: RunContext) -> torch.Tensor:
        """The rows of the manipulation's pairs (``ordered_pairs``) the ensemble runs on, (P,)
        int64: all of them, or (``profile.ensemble_per_cluster`` = k, the ``paper`` profile)
        the ordered pairs among the first k images of each cluster, the most central ones
        (the manifest lists its images cluster by cluster, nearest the centroid first)."""
        from ..attacks.manipulation import ordered_pairs
        from ..protocol import CLUSTERS
        from .manipulation import pair_index

        n, k = int(ctx.images.shape[0]), ctx.profile.ensemble_per_cluster
        if k is None or k >= n // CLUSTERS:
            return torch.arange(n * (n - 1))
        step = n // CLUSTERS
        chosen = torch.tensor([c * step + j for c in range(CLUSTERS) for j in range(k)])
        sub = ordered_pairs(len(chosen))
        return pair_index(chosen[sub], n)

    def params(self, ctx: RunContext) -> dict[str, Any]:
        from ..attacks import ensemble as ens

        b = self.budget(ctx)
        names = ["dombrowski"] + [n for n, _ in self.attacks(ctx)]
        extra = [n for n in names if n not in ens.BUILTIN]
        k = ctx.profile.ensemble_per_cluster
        pairs = ("all" if k is None else
                 {"per_cluster": k, "n_pairs": int(self.pair_rows(ctx).numel()),
                  "rule": "ordered pairs among the first per_cluster images of each cluster"})
        return {"attacks": names, "pairs": pairs, "iterations": b.iterations, "lr": b.lr,
                "eps_pgd": b.eps_pgd, "beta_divisor": ens.BETA_DIVISOR,
                "alpha0": ens.ALPHA0_OVER_EPS * b.eps_pgd,
                "restart_eps": ens.RESTART_OVER_EPS * b.eps_pgd,
                "extra_attacks": {n: _provenance(n) for n in extra}}

    def execute(self, ctx: RunContext, params: dict[str, Any]) -> dict[str, Any]:
        key = ctx.key(self.name, self.version, params, manipulation=Manipulation.version,
                      manipulation_params=Manipulation().params(ctx))
        if ctx.shards > 1:
            from ..engine.sharding import run_sharded

            return ctx.cached(self.name, key, lambda: run_sharded(ctx, self, params))
        return ctx.cached(self.name, key, lambda: self.run(ctx))

    def execute_sharded(self, ctx: RunContext, params: dict[str, Any]) -> dict[str, Any]:
        return self.execute(ctx, params)  # the same key; execute shards where asked

    def shard_items(self, ctx: RunContext) -> int:
        return int(self.pair_rows(ctx).numel())

    def shard_align(self, ctx: RunContext) -> int:
        return ctx.profile.pair_batch

    def run(self, ctx: RunContext) -> dict[str, Any]:
        return self.merge(ctx, [self.run_shard(ctx, 0, self.shard_items(ctx))])

    def run_shard(self, ctx: RunContext, lo: int, hi: int) -> dict[str, Any]:
        """Every attack but ``dombrowski`` on pairs ``lo .. hi - 1`` of its pairs
        (:meth:`pair_rows`; ``lo`` a multiple of ``pair_batch``): per attack, L_e and whether
        the class was kept."""
        from ..attacks.ensemble import attack_pairs
        from ..attacks.manipulation import ordered_pairs

        require_differentiable(ctx.explainer, "worst-case attack ensemble")
        size = ctx.profile.pair_batch
        if lo % size:
            raise ValueError(f"ensemble shard starts at pair {lo}, not a chunk boundary")
        pairs = ordered_pairs(ctx.images.shape[0])[self.pair_rows(ctx)]
        budget, params = self.budget(ctx), self.params(ctx)
        # a chunk depends on its own attack's code and the sizes, not on the others: adding
        # an attack to the ensemble reuses the chunks of those already run
        sizes = {k: v for k, v in params.items() if k not in ("attacks", "extra_attacks")}
        out: dict[str, Any] = {"expl_end": {}, "kept": {}}
        for name, fn in self.attacks(ctx):
            store = _CandidateCache(ctx, {**sizes, "version": _version(name)}, name, size,
                                    len(pairs))
            got = attack_pairs(ctx.model, ctx.explainer, ctx.images, pairs[lo:hi], fn, budget,
                               pair_batch=size, store=store, first_chunk=lo // size,
                               progress=ctx.progress, desc=f"ensemble: {name}")
            out["expl_end"][name], out["kept"][name] = got["expl_end"], got["kept"]
            out["pairs"] = got["pairs"]
        return out

    def merge(self, ctx: RunContext, parts: list[dict[str, Any]]) -> dict[str, Any]:
        """Shards in pair order, joined with the manipulation's own result (``dombrowski``)
        and reduced to the per-pair worst case."""
        from ..attacks.ensemble import worst_case

        manip = ctx.outputs.get("manipulation")
        if manip is None:  # run on its own: the manipulation's output (cached, or computed)
            m = Manipulation()
            manip = m.execute(ctx, m.params(ctx))
        names = [n for n, _ in self.attacks(ctx)]
        rows = self.pair_rows(ctx)
        expl = {"dombrowski": manip["expl_end"].cpu()[rows]}
        kept = {"dombrowski": ~manip["class_changed"].cpu().bool()[rows]}
        for name in names:
            expl[name] = torch.cat([p["expl_end"][name] for p in parts])
            kept[name] = torch.cat([p["kept"][name] for p in parts])
        pairs = manip["pairs"].cpu()[rows]
        if names and not torch.equal(torch.cat([p["pairs"] for p in parts]), pairs):
            raise RuntimeError("the ensemble's pairs do not line up with the manipulation's")
        order = ["dombrowski", *names]
        worst, winner = worst_case(torch.stack([expl[n] for n in order]),
                                   torch.stack([kept[n] for n in order]),
                                   manip["expl_start"].cpu()[rows])
        return {"pairs": pairs, "expl_start": manip["expl_start"].cpu()[rows],
                "expl_end_worst": worst, "expl_end": expl, "kept": kept,
                "won": {n: winner == i for i, n in enumerate(order)}}

    def examples(self, out: dict[str, Any], grey: bool) -> dict[tuple[str, ...], Example]:
        victims = out["pairs"][:, 0]
        ex = {("expl_end_worst",): Example(out["expl_end_worst"], victims, median=True)}
        for name in out["expl_end"]:
            ex[("ensemble", "attacks", name, "expl_end")] = Example(out["expl_end"][name],
                                                                    victims, median=True)
            ex[("ensemble", "attacks", name, "win_share")] = Example(
                out["won"][name].float(), victims)
            ex[("ensemble", "attacks", name, "class_kept")] = Example(
                out["kept"][name].float(), victims)
        return ex

    def summarize(self, ctx: RunContext, out: dict[str, Any]) -> Summary:
        metrics = metric_tree(ctx, self.examples(out, ctx.card.grey))
        worst = metrics["expl_end_worst"]
        end = metrics["ensemble"]["attacks"]["dombrowski"]["expl_end"]
        ratio = (worst["value"] / end["value"]
                 if worst["value"] is not None and end["value"] else None)
        no_candidate = int((~torch.stack(list(out["kept"].values())).any(dim=0)).sum())
        metrics["ensemble"].update({"worst_over_end": ratio, "no_candidate": no_candidate})
        return Summary(metrics, {"attack_sensitive": attack_sensitive(worst, end)})

    columns = (
        Column("expl_end_worst", ("expl_end_worst",), "Expl@end worst (x1e-7)", "L_e",
               "ensemble", scale=1e7, digits=1, better="higher", style="expl",
               interval_digits=0, short="Expl@end worst", correlated=True, order=41,
               optional=True,
               summary="Expl@end, worst case (x1e-7)",
               meaning="per pair the lowest L_e any attack of the ensemble left without "
                       "changing the class"),
        Column("worst_over_end", ("ensemble", "worst_over_end"), "worst / Expl@end", "share",
               "ensemble", digits=2, number=True, board=False,
               summary="Expl@end worst / Expl@end",
               meaning=f"below {1 - SENSITIVE_DROP:g} with disjoint intervals: flag "
                       f"attack_sensitive"),
        Column("expl_end_best_known", ("ensemble", "best_known", "expl_end"),
               "Expl@end best known (x1e-7)", "L_e", "ensemble", scale=1e7, digits=1,
               better="higher", style="expl", board=False,
               summary="Expl@end, best known (x1e-7)",
               meaning="the worst case lowered further by verified external attacks "
                       "(xrbench verify)"),
        Column("attack_win_share", ("ensemble", "attacks", "*", "win_share"),
               "{0} wins (%)", "share", "ensemble", scale=100.0, digits=1, board=False,
               meaning="the share of pairs whose worst case this attack gave"),
        Column("attack_expl_end", ("ensemble", "attacks", "*", "expl_end"),
               "Expl@end by {0} (x1e-7)", "L_e", "ensemble", scale=1e7, digits=1,
               style="expl", board=False,
               meaning="L_e this attack alone left (its candidates that change the class "
                       "included)"),
    )


    def rows(self, metrics: dict[str, Any]) -> list[Any]:
        """The default rows, without the best-known row of an entry nothing was verified
        against (``xrbench verify`` adds it)."""
        best = (metrics.get("ensemble") or {}).get("best_known")
        return [r for r in super().rows(metrics)
                if best or not r.label.startswith("Expl@end, best known")]


def attack_sensitive(worst: dict[str, Any], end: dict[str, Any]) -> bool:
    """PROTOCOL 5.8: the worst case lies below Expl@end by more than :data:`SENSITIVE_DROP`
    and the two 95% intervals are disjoint (the worst case's upper end below Expl@end's
    lower end). ``worst``, ``end``: metric objects (``value``, ``ci``)."""
    w, e = worst.get("value"), end.get("value")
    if w is None or not e or worst.get("ci") is None or end.get("ci") is None:
        return False
    return bool(w < (1 - SENSITIVE_DROP) * e and worst["ci"][1] < end["ci"][0])


def _version(name: str) -> str:
    from ..attacks.ensemble import attack_version

    return attack_version(name)


def _provenance(name: str) -> dict[str, Any]:
    """How an entry records an attack added with ``--attacks``: its version and where it
    comes from (``{"version", "source", "distribution"}``)."""
    from ..attacks.ensemble import attack_version
    from ..registry import attacks

    return {"version": attack_version(name), **attacks.get_entry(name).provenance()}


class _CandidateCache:
    """A :class:`~xrbench.attacks.ensemble.CandidateStore` in the stage cache: every finished
    chunk of one attack is kept, so an interrupted ensemble resumes at the next chunk."""

    def __init__(self, ctx: RunContext, params: dict[str, Any], attack: str, size: int,
                 n_pairs: int) -> None:
        self.ctx, self.params, self.attack = ctx, params, attack
        self.size, self.n_pairs = size, n_pairs

    def _key(self, chunk: int) -> dict[str, Any]:
        return self.ctx.key("ensemble-chunk", Ensemble.version, self.params, attack=self.attack,
                            chunk=chunk, size=self.size, pairs=self.n_pairs)

    def load(self, chunk: int, pairs: torch.Tensor) -> dict[str, torch.Tensor] | None:
        done = self.ctx.cache.load("ensemble-chunk", self._key(chunk))
        if done is None or not torch.equal(done.get("pairs", torch.empty(0)), pairs.cpu()):
            return None
        return done

    def save(self, chunk: int, result: dict[str, torch.Tensor]) -> None:
        self.ctx.cache.save("ensemble-chunk", self._key(chunk), result)
