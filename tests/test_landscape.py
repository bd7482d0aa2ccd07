"""Loss landscapes (PROTOCOL 5.6, SEP paper eq. 5) and their plot."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from xrbench.explainers import expl_loss, get_explainer, sum_map
from xrbench.metrics.landscape import ce_landscape_per_image, explanation_landscape_pairs
from xrbench.plots import plot_landscape

GAMMAS = [0.0, 0.05, 0.2]


def _pairs(n: int) -> torch.Tensor:
    v, t = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    keep = v != t
    return torch.stack([v[keep], t[keep]], dim=1)  # all ordered pairs, (n (n - 1), 2)


def test_explanation_landscape_at_zero_is_the_unperturbed_loss(trained_convnet,
                                                               test_batch) -> None:
    model, x = trained_convnet, test_batch[0][:6]
    expl = get_explainer("grad_x_input")
    pairs = _pairs(6)
    pred = model(x).argmax(dim=1)
    maps = sum_map(expl(model, x, pred))
    expl_start = expl_loss(maps[pairs[:, 0]], maps[pairs[:, 1]])  # (30,)

    def run(seed: int, **kw) -> torch.Tensor:
        return explanation_landscape_pairs(model, expl, x, pairs, GAMMAS,
                                           generator=torch.Generator().manual_seed(seed), **kw)

    per_pair = run(0)
    assert per_pair.shape == (3, 30) and torch.isfinite(per_pair).all()
    assert torch.allclose(per_pair[0], expl_start, rtol=1e-5, atol=0)
    assert torch.equal(per_pair, run(0))  # deterministic given the seed
    assert not torch.allclose(per_pair[2], run(1)[2])  # and the seed matters
    # chunking (tiny batches) and the clamp option leave gamma = 0 untouched
    assert torch.allclose(run(0, max_batch_pixels=64 * 7), per_pair, rtol=1e-5, atol=1e-12)
    assert torch.allclose(run(0, clamp=True)[0], expl_start, rtol=1e-5, atol=0)
    # noise moves the victim's map: at gamma 0.2 the loss differs from the clean one
    assert not torch.allclose(per_pair[2], expl_start)
    mean = per_pair.mean(dim=1)  # the figure's curve (SEP paper eq. 5 averaged over pairs)
    assert abs(mean[0].item() - expl_start.mean().item()) <= 1e-5 * expl_start.mean().item()


def test_ce_landscape_at_zero_is_the_clean_cross_entropy(trained_convnet, test_batch) -> None:
    model = trained_convnet
    x, y = test_batch[0][:16], test_batch[1][:16]
    clean = F.cross_entropy(model(x), y).item()
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    per_image = ce_landscape_per_image(model, x, y, GAMMAS, generator=g(0))
    curve = per_image.mean(dim=1)  # the figure's curve, mean over images
    assert per_image.shape == (3, 16) and torch.isfinite(curve).all()
    assert abs(curve[0].item() - clean) < 1e-5
    assert torch.equal(per_image, ce_landscape_per_image(model, x, y, GAMMAS, generator=g(0)))
    chunked = ce_landscape_per_image(model, x, y, GAMMAS, generator=g(0), max_batch_pixels=8)
    assert torch.allclose(chunked, per_image, rtol=1e-5)
    # large Gaussian noise destroys the prediction: CE grows
    assert ce_landscape_per_image(model, x, y, [2.0], generator=g(0)).mean() > clean


def test_plot_landscape_writes_a_png(tmp_path) -> None:
    path = tmp_path / "sub" / "landscape.png"
    plot_landscape({"mat": ([0, 0.1, 0.2], [1.0, 2.0, 3.5]),
                    "sep_pos": ([0, 0.1, 0.2], [0.5, 0.9, 1.2])},
                   path, title="digits convnet", ylabel="L_e")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert [p.name for p in path.parent.iterdir()] == ["landscape.png"]  # no temp file left
