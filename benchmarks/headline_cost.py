"""What the headline command costs, measured on small stand-ins and scaled to the real sizes.

    python benchmarks/headline_cost.py                   # both tables, ~5 min on 1 thread
    python benchmarks/headline_cost.py --part extractor  # the subset extractor per dataset
    python benchmarks/headline_cost.py --part stages     # the headline command, stage by stage

``--part extractor``: the subset's extractor for each built-in dataset. A ResNet18 trained
with ``normal`` for one epoch on a stand-in of N training images (:mod:`xrbench.standins`,
the dataset's real size and channels) gives the seconds per training image and epoch; one
pass over its test images gives the seconds per forward. Scaled: reference extractor =
train_size x 25 epochs x s/image/epoch + 2 x test_size x s/forward (the trainer's test
accuracy, the features) + k-means on test_size x 512 features (measured at that size);
smoke's = the same with 1 epoch; ImageNet weights = test_size x s/forward at 224 x 224 +
k-means (no training).

``--part stages``: ``xrbench evaluate --defense sep_neg --dataset cifar100`` at the quick
profile. Training and the extractor are per-image costs scaled as above (sep_neg: 5 warm-up
epochs at MAT's cost, 20 with the regulariser on). The metric stages run twice through
``api.evaluate`` on a cifar-100 stand-in with quick's settings except smaller counts: 10
subset images (90 pairs) and two budgets (manipulation 4 / 8 steps, RelEx 2 / 4 iterations,
Adv-Insertion 4 / 8 steps); a stage's time is taken as affine in its budget (a + b x
steps, from the two runs) and linear in its items (subset images, pairs, test images), and
scaled to quick (50 images, 2,450 pairs, 150 / 50 / 100 steps, 1,000 PGD test images).

GPU column (an estimate: no GPU was measured). Every stage, training step and forward pass
is run once under :class:`FlopCount`, which counts its floating-point operations (torch's
``flop_registry`` formulas: convolutions and matrix products, backward and double backward
included) and its operators (about one kernel launch each); both are scaled like the time.
GPU seconds = max(FLOPs / ``--gpu-tflops``, operators x ``--gpu-op-us``): compute-bound at
an assumed sustained 20 TFLOP/s (fp32 with TF32 convolutions, PyTorch's default, on one
A100/H100-class GPU), or launch-bound at 10 us per operator (PyTorch eager). For the metric
stages the operator count is scaled with the items too, an upper bound where a stage
batches them. Read the column as good to a factor of about 3. k-means (scikit-learn) runs
on the CPU either way.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

os.environ.setdefault("XRBENCH_OFFLINE", "1")
os.environ.setdefault("XRBENCH_STANDIN_DATA", "1")  # stand-in files in the real formats

import xrbench  # noqa: E402,F401
from xrbench import standins  # noqa: E402
from xrbench.data import Dataset, load_dataset  # noqa: E402

#: (name, train size, test size, stand-in writer) of the built-in datasets
DATASETS: list[tuple[str, int, int, Callable[..., Path]]] = [
    ("mnist", 60000, 10000, standins.write_mnist),
    ("fashion_mnist", 60000, 10000, lambda r, n, t: standins.write_mnist(r, n, t, fashion=True)),
    ("cifar10", 50000, 10000, standins.write_cifar),
    ("cifar100", 50000, 10000, lambda r, n, t: standins.write_cifar(r, n, t, hundred=True)),
    ("tinyimagenet", 100000, 10000, standins.write_tinyimagenet),
]
REFERENCE_EPOCHS, SEP_WARMUP_EPOCHS = 25, 5


def _skip_cifar_md5() -> None:
    """Stand-ins are not the published files: torchvision's md5 check becomes 'exists'."""
    import torchvision.datasets.cifar as tv_cifar

    tv_cifar.check_integrity = lambda fpath, md5=None: os.path.isfile(fpath)


class FlopCount(TorchDispatchMode):
    """Counts the operators dispatched (``ops``: about one GPU kernel launch each) and the
    floating-point operations of those with a formula in torch's ``flop_registry``
    (``flops``: convolutions and their backward, matrix products). torch's own
    ``FlopCounterMode`` also tracks modules, with hooks that ``autograd.grad`` on an input
    (PGD, the explainers) does not support; this counts the same ops without them."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0
        self.ops = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None
                           ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.ops += 1
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.flops += int(formula(*args, **kwargs, out_val=out))
        return out


def _count(fn: Callable[[], Any]) -> tuple[float, float]:
    """(FLOPs, operators) of ``fn()``."""
    with FlopCount() as counter:
        fn()
    return float(counter.flops), float(counter.ops)


@dataclasses.dataclass
class GpuModel:
    """The GPU estimate: ``max(flops / tflops, ops x op_seconds)``: compute-bound work at an
    assumed sustained rate, or launch-bound work at PyTorch eager's cost per operator."""

    tflops: float = 20.0
    op_seconds: float = 10e-6

    def seconds(self, flops: float, ops: float) -> float:
        return max(flops / (self.tflops * 1e12), ops * self.op_seconds)


def _step_count(ds: Dataset, model_name: str, defense: str, overrides: dict[str, str],
                batch: int = 64) -> tuple[float, float]:
    """(FLOPs per image, operators per step) of one training step of ``defense``."""
    from xrbench.defenses.base import TrainState
    from xrbench.models import create_model
    from xrbench.registry import defenses
    from xrbench.train import build_recipe
    from xrbench.utils import generator

    model = create_model(model_name, ds.card)
    recipe = build_recipe(defense, ds.card, model_name, overrides)
    loss_obj = defenses.get(defense)(recipe, TrainState(ds.card, model_name, generator(0),
                                                        torch.device("cpu")))
    loss_obj.state.epoch = recipe.epochs - 1e-3  # past any warm-up
    opt = torch.optim.Adam(model.parameters())
    x, y = ds.train.get_batch(torch.arange(batch))

    def step() -> None:
        opt.zero_grad()
        loss_obj.loss(model, x, y).backward()
        opt.step()
    flops, ops = _count(step)
    return flops / batch, ops


def _forward(model: torch.nn.Module, x: torch.Tensor) -> tuple[float, float, float]:
    """(seconds per image, FLOPs per image, operators per batch) of a no-grad forward pass
    over ``x`` in batches of 64."""
    model.eval()
    with torch.no_grad():
        model(x[:8])  # warm-up
        t0 = time.perf_counter()
        for i in range(0, len(x), 64):
            model(x[i:i + 64])
        seconds = (time.perf_counter() - t0) / len(x)
        flops, ops = _count(lambda: model(x[:8]))
    return seconds, flops / 8, ops


def _train_epoch(ds: Dataset, model: str, defense: str, overrides: dict[str, str],
                 cache: Path) -> tuple[float, Any]:
    """(seconds per training image of one epoch of the loop itself, the trained model)."""
    from xrbench.train import get_trained_model

    trained = get_trained_model(ds, model, defense, overrides={"epochs": "1", **overrides},
                                progress=False, cache_root=cache)
    return trained.history[0]["seconds"] / len(ds.train), trained


def _kmeans_seconds(n: int, dim: int = 512) -> float:
    """k-means as the subset runs it (k 10, n_init 10) on n clustered random features."""
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (10, dim))
    feats = centres[rng.integers(0, 10, n)] + rng.normal(0, 0.7, (n, dim))
    t0 = time.perf_counter()
    KMeans(n_clusters=10, n_init=10, random_state=0).fit(feats)
    return time.perf_counter() - t0


def extractor_costs(n_train: int, n_test: int, work: Path,
                    names: tuple[str, ...] | None = None) -> dict[str, dict[str, float]]:
    """Per dataset (``names``, default all): measured per-image costs and the scaled
    extractor seconds (reference, smoke, ImageNet weights)."""
    import torchvision

    from xrbench.subset import load_imagenet_extractor

    work.mkdir(parents=True, exist_ok=True)
    weights = work / "resnet18-random.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    kmeans = _kmeans_seconds(10000)
    out: dict[str, dict[str, float]] = {}
    for name, train_size, test_size, write in DATASETS:
        if names is not None and name not in names:
            continue
        root = work / name
        write(root, n_train, n_test)
        ds = load_dataset(name, root)
        t0 = time.perf_counter()
        per_train, trained = _train_epoch(ds, "resnet18", "normal", {}, work / "cache")
        standin_seconds = time.perf_counter() - t0
        x, _ = ds.test.get_batch(torch.arange(len(ds.test)))
        fwd, fwd_flops, fwd_ops = _forward(trained.model, x)
        imnet, _ = load_imagenet_extractor(str(weights), ds.card.channels)
        fwd224, _, _ = _forward(imnet, x)
        step_flops, step_ops = _step_count(ds, "resnet18", "normal", {})
        eval_cost = 2 * test_size * fwd + kmeans  # the trainer's test accuracy, the features
        out[name] = {
            "train_size": train_size, "test_size": test_size,
            "train_s_per_image_epoch": per_train, "forward_s": fwd, "forward224_s": fwd224,
            "forward_flops": fwd_flops, "forward_ops": fwd_ops, "step_flops": step_flops,
            "step_ops": step_ops, "standin_seconds": standin_seconds, "kmeans": kmeans,
            "reference": train_size * REFERENCE_EPOCHS * per_train + eval_cost,
            "smoke": train_size * 1 * per_train + eval_cost,
            "imagenet": test_size * fwd224 + kmeans,
        }
        print(f"  {name}: {per_train * 1e3:.1f} ms/image/epoch, forward {fwd * 1e3:.2f} ms, "
              f"224 forward {fwd224 * 1e3:.1f} ms", flush=True)
    return out


def _stage_runs(ds_root: Path, work: Path) -> tuple[list[dict[str, float]],
                                                    dict[str, tuple[float, float]], list[Any]]:
    """Two timed api.evaluate runs (budgets A and B; seconds per stage) and the FLOPs and
    operators of each stage in a third run of budget A. Returns them and the two profiles."""
    from xrbench import api
    from xrbench.protocol import get_profile, with_overrides
    from xrbench.stages import STAGES

    quick = get_profile("quick")
    small = dict(per_cluster=1, train_epochs=1, extractor_epochs=1)
    budgets = [dict(manipulation_iterations=4, relex_iterations=2, adv_insertion_iterations=4),
               dict(manipulation_iterations=8, relex_iterations=4, adv_insertion_iterations=8)]
    profiles = [with_overrides(quick, **small, **b) for b in budgets]
    common = dict(defense="sep_neg", dataset="cifar100", data_dir=ds_root, progress=False,
                  device="cpu", cache_root=work / "cache")
    seconds = []
    for i, prof in enumerate(profiles):
        res = api.evaluate(profile=prof, out=work / f"out{i}", **common)
        seconds.append({k: float(v) for k, v in res.entry["timing"].items()})
    counts: dict[str, tuple[float, float]] = {}
    for stage in STAGES:  # count each stage in a third run of budget A
        def counted(*args: Any, _run: Any = stage.run, _name: str = stage.name, **kw: Any
                    ) -> Any:
            with FlopCount() as counter:
                result = _run(*args, **kw)
            counts[_name] = (float(counter.flops), float(counter.ops))
            return result
        stage.run = counted  # type: ignore[method-assign]
    try:
        api.evaluate(profile=profiles[0], out=work / "out-count", force=True, **common)
    finally:
        for stage in STAGES:
            del stage.run
    return seconds, counts, profiles


def stage_costs(work: Path, ext: dict[str, float], gpu: GpuModel
                ) -> list[tuple[str, float, float]]:
    """Rows (stage, CPU seconds at quick on the real CIFAR-100, GPU seconds estimate)."""
    from xrbench.protocol import get_profile

    name, train_size, test_size, write = DATASETS[3]
    root = work / "headline"
    write(root, 256, 100)
    ds = load_dataset(name, root)
    cache = work / "cache"
    steps = train_size / 64  # per epoch, batch 64

    # train: sep_neg is MAT during its 5 warm-up epochs, regulariser on for the other 20;
    # then the trainer's test accuracy (a forward pass over the test split, batches of 512)
    on = {"reg_warmup_fraction": "0", "reg_ramp_fraction": "0"}
    t_off, trained = _train_epoch(ds, "convnet", "mat", {}, cache)
    t_on, _ = _train_epoch(ds, "convnet", "sep_neg", on, cache)
    x, _ = ds.test.get_batch(torch.arange(len(ds.test)))
    fwd, fwd_flops, fwd_ops = _forward(trained.model, x)
    (f_off, o_off), (f_on, o_on) = (_step_count(ds, "convnet", "mat", {}),
                                    _step_count(ds, "convnet", "sep_neg", on))
    e_off, e_on = SEP_WARMUP_EPOCHS, REFERENCE_EPOCHS - SEP_WARMUP_EPOCHS
    rows = [("train (sep_neg, 25 epochs)",
             train_size * (e_off * t_off + e_on * t_on) + test_size * fwd,
             gpu.seconds(train_size * (e_off * f_off + e_on * f_on) + test_size * fwd_flops,
                         steps * (e_off * o_off + e_on * o_on) + test_size / 512 * fwd_ops))]

    # the extractor (reference recipe, once per dataset) and the subset: features of the
    # test split, k-means (scikit-learn: CPU either way), validity (in the stand-in run)
    rows.append(("extractor (ResNet18, normal, 25 epochs; once per dataset)",
                 train_size * REFERENCE_EPOCHS * ext["train_s_per_image_epoch"]
                 + test_size * ext["forward_s"],
                 gpu.seconds(train_size * REFERENCE_EPOCHS * ext["step_flops"]
                             + test_size * ext["forward_flops"],
                             steps * REFERENCE_EPOCHS * ext["step_ops"]
                             + test_size / 512 * ext["forward_ops"])))
    seconds, counts, profiles = _stage_runs(root, work)
    print("  stand-in runs (s), budget A / B: " + ", ".join(
        f"{k} {seconds[0][k]:.1f} / {seconds[1][k]:.1f}" for k in seconds[0]), flush=True)
    rows.append(("subset (features, k-means, validity)",
                 test_size * ext["forward_s"] + ext["kmeans"] + seconds[0]["subset"],
                 gpu.seconds(test_size * ext["forward_flops"], test_size / 512
                             * ext["forward_ops"]) + ext["kmeans"]))

    # the metric stages: affine in their budget, linear in their items
    quick, a_prof = get_profile("quick"), profiles[0]
    budget_of = {"manipulation": "manipulation_iterations", "retrieval": "relex_iterations",
                 "adv_insertion": "adv_insertion_iterations"}
    images = quick.n_images / a_prof.n_images
    items = {"accuracy": min(quick.pgd_max_images or test_size, test_size) / len(ds.test),
             "rps": images, "insertion": images, "adv_insertion": images,
             "retrieval": images,
             "landscape": min(quick.landscape_pairs, quick.n_pairs)
             / min(a_prof.landscape_pairs, a_prof.n_pairs),
             "manipulation": quick.n_pairs / a_prof.n_pairs}
    for stage, ratio in items.items():
        a, b = seconds[0][stage], seconds[1][stage]
        if stage in budget_of:
            key = budget_of[stage]
            u_a, u_b = getattr(a_prof, key), getattr(profiles[1], key)
            slope = max(0.0, (b - a) / (u_b - u_a))
            fixed = max(0.0, a - slope * u_a)
            grow = (fixed + slope * getattr(quick, key)) / a if a > 0 else 1.0
        else:
            grow, a = 1.0, (a + b) / 2
        flops, ops = counts.get(stage, (0.0, 0.0))
        # operators scale with the items too: an upper bound where a stage batches them
        rows.append((stage, a * grow * ratio, gpu.seconds(flops * grow * ratio,
                                                          ops * grow * ratio)))
    return rows


def _h(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s" if seconds >= 1 else "< 1 s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["extractor", "stages", "both"], default="both")
    ap.add_argument("--standin-train", type=int, default=128,
                    help="training images of each extractor stand-in (default 128)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--gpu-tflops", type=float, default=20.0,
                    help="assumed sustained GPU rate for the estimate column (TFLOP/s)")
    ap.add_argument("--gpu-op-us", type=float, default=10.0,
                    help="assumed seconds per operator launch for the estimate, in µs")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    _skip_cifar_md5()
    gpu = GpuModel(args.gpu_tflops, args.gpu_op_us * 1e-6)
    t_all = time.perf_counter()
    print(f"torch {torch.__version__}, {args.threads} thread(s), load average "
          f"{os.getloadavg()[0]:.1f} at start", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ["XRBENCH_CACHE"] = str(work / "cache")
        ext = extractor_costs(args.standin_train, 64, work / "extractor",
                              None if args.part != "stages" else ("cifar100",))
        if args.part in ("extractor", "both"):
            n = args.standin_train
            print(f"\n| dataset | measured: 1 epoch on a {n}-image stand-in | reference "
                  "extractor (25 epochs), full dataset | smoke's (1 epoch), full dataset | "
                  "ImageNet weights (no training), full test split |\n|---|---|---|---|---|")
            for name, c in ext.items():
                print(f"| {name} ({c['train_size']:,.0f} / {c['test_size']:,.0f}) | "
                      f"{c['standin_seconds']:.1f} s "
                      f"({c['train_s_per_image_epoch'] * 1e3:.0f} ms/image) | "
                      f"{_h(c['reference'])} | {_h(c['smoke'])} | {_h(c['imagenet'])} |")
        if args.part in ("stages", "both"):
            rows = stage_costs(work / "stages", ext["cifar100"], gpu)
            print("\n| stage | this CPU, scaled to quick on CIFAR-100 | one GPU (estimate) |"
                  "\n|---|---|---|")
            for stage, cpu, gpu_s in rows:
                print(f"| {stage} | {_h(cpu)} | {_h(gpu_s)} |")
            print(f"| total | {_h(sum(r[1] for r in rows))} | {_h(sum(r[2] for r in rows))} |")
    print(f"\nmeasured in {time.perf_counter() - t_all:.0f} s; load average "
          f"{os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
