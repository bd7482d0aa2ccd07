"""Figures (``xrbench plot``, :mod:`xrbench.plots`) and what they read: the Insertion curves
and the saliency gallery kept in an entry's per-example file.

One smoke evaluation of the fixed checkpoint (conftest.py) feeds every test; a second entry
scores the same weights under another defense name (every stage comes from the cache), so
the figures have two entries of one table.
"""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from xrbench import api
from xrbench.attacks.manipulation import ordered_pairs
from xrbench.cli import main
from xrbench.errors import XRBenchError
from xrbench.explainers import get_explainer
from xrbench.leaderboard.examples import read_examples
from xrbench.leaderboard.schema import read_entry
from xrbench.metrics.insertion import INSERTION_RATIOS
from xrbench import plots
from xrbench.stages import GALLERY_PAIRS, STAGES, Gallery, Manipulation, gallery_pairs, pair_index

# the gallery's attack runs 4 pairs in one batch, the manipulation stage 380: the same
# per-pair trajectory up to float32 reduction order (bit-identical on the machines tried;
# tests/test_manipulation.py saw Adam amplify such rounding to ~1e-3 at a large lr)
GALLERY_RTOL = 1e-3


@pytest.fixture(scope="module")
def run(fixed_checkpoint, tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("plots")
    kw = dict(profile="smoke", checkpoint=str(fixed_checkpoint), out=root / "results",
              progress=False, cache_root=root / "cache", device="cpu")
    first = api.evaluate("normal", **kw)
    second = api.evaluate("mat", **kw)  # the same weights: every stage from the cache
    paths = [first.path, second.path]
    entries = [read_entry(p) for p in paths]
    items = [(e, read_examples(p, e)) for p, e in zip(paths, entries)]
    return {"root": root, "paths": paths, "items": items, "result": first,
            "reused": second.reused_stages}


def _png_array(png: bytes) -> np.ndarray:
    from matplotlib.image import imread

    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return imread(io.BytesIO(png), format="png")


def _assert_drawn(png: bytes, size: tuple[int, int]) -> None:
    """The PNG decodes to ``size`` (width, height) pixels and is not blank."""
    img = _png_array(png)
    assert (img.shape[1], img.shape[0]) == size
    rgb = img[..., :3].reshape(-1, 3)
    assert np.unique(rgb, axis=0).shape[0] > 20  # lines, text, images: many colours
    assert (rgb < 0.5).mean() > 0.005  # something dark on the white background


# --- the stage outputs ------------------------------------------------------------------------

def test_insertion_curves_average_to_the_scores(run, fixed_checkpoint, digits):
    ex = run["result"].examples
    entry = run["items"][0][0]
    for stage in ("insertion", "adv_insertion"):
        curve, scores = ex[f"{stage}/curve"], ex[f"{stage}/scores"]
        assert curve.shape == (20, 20) and curve.dtype == np.float32  # (R, N), smoke N = 20
        np.testing.assert_allclose(ex[f"{stage}/ratios"], INSERTION_RATIOS)
        assert ((0 <= curve) & (curve <= 1)).all()
        # PROTOCOL 5.4: the score is 100 x the mean of the curve over the ratios
        np.testing.assert_allclose(scores, 100 * curve.mean(axis=0), rtol=1e-6)
        assert entry["metrics"][stage]["value"] == pytest.approx(float(scores.mean()),
                                                                 rel=1e-6)
    # at ratio 0 nothing is put back: every image is the mean colour, so both curves start
    # at the probability the model gives each image's true label on that one blank image
    from xrbench.models import create_model

    model = create_model("convnet", digits.card).eval()
    model.load_state_dict(torch.load(fixed_checkpoint))
    manifest = json.loads((Path(__file__).parents[1] / "xrbench" / "manifests" /
                           "digits-k10-n2.json").read_text())
    _, labels = digits.test.get_batch(torch.tensor(manifest["indices"]))
    blank = torch.full((1, 1, 8, 8), float(digits.card.mean[0]))
    with torch.no_grad():
        p = torch.softmax(model(blank), dim=1)[0]
    np.testing.assert_allclose(ex["insertion/curve"][0], p[labels].numpy(), rtol=1e-5)
    np.testing.assert_allclose(ex["adv_insertion/curve"][0], p[labels].numpy(), rtol=1e-5)


def test_gallery_pairs_and_their_rows_in_the_manipulation():
    assert gallery_pairs(20).tolist() == [[0, 10], [2, 12], [4, 14], [6, 16]]
    assert gallery_pairs(150, 2).tolist() == [[0, 75], [15, 90]]
    pairs = ordered_pairs(7)
    assert torch.equal(pair_index(pairs, 7), torch.arange(len(pairs)))
    with pytest.raises(ValueError):
        gallery_pairs(20, 11)


def test_gallery_repeats_the_manipulation_on_its_pairs(run):
    ex = run["result"].examples
    pairs, idx = ex["gallery/pairs"], ex["gallery/pair_index"]
    assert pairs.shape == (GALLERY_PAIRS, 2)
    np.testing.assert_array_equal(ex["manipulation/pairs"][idx], pairs)
    # the invariant: the same attack, the same protocol arguments, the same per-pair result
    np.testing.assert_allclose(ex["gallery/expl_end"], ex["manipulation/expl_end"][idx],
                               rtol=GALLERY_RTOL)
    np.testing.assert_allclose(ex["gallery/expl_start"], ex["manipulation/expl_start"][idx],
                               rtol=1e-6)
    for f in ("pred_victim", "pred_target", "pred_adv"):
        np.testing.assert_array_equal(ex[f"gallery/{f}"], ex[f"manipulation/{f}"][idx])
    # the stored maps are the sum-normalised maps L_e compares (PROTOCOL 0)
    mv, mt, ma = (ex[f"gallery/{k}"] for k in ("map_victim", "map_target", "map_adv"))
    assert mv.shape == mt.shape == ma.shape == (GALLERY_PAIRS, 8, 8)
    np.testing.assert_allclose(mv.sum(axis=(1, 2)), 1.0, rtol=1e-5)
    np.testing.assert_allclose(((mv - mt) ** 2).mean(axis=(1, 2)), ex["gallery/expl_start"],
                               rtol=1e-4)
    np.testing.assert_allclose(((ma - mt) ** 2).mean(axis=(1, 2)), ex["gallery/expl_end"],
                               rtol=1e-4)
    # images: float16 copies of the subset images and the attack's result, in [0, 1]
    xv, xt, xa = (ex[f"gallery/{k}"] for k in ("x_victim", "x_target", "x_adv"))
    assert xv.dtype == np.float16 and xv.shape == (GALLERY_PAIRS, 1, 8, 8)
    assert not np.array_equal(xa, xv) and 0 <= xa.min() and xa.max() <= 1
    assert (pairs[:, 0] != pairs[:, 1]).all()
    # the entry records what ran: the manipulation's own parameters, four pairs
    params = run["items"][0][0]["protocol"]["parameters"]
    assert params["gallery"] == {"pairs": GALLERY_PAIRS, "attack": {
        k: params["manipulation"][k] for k in params["gallery"]["attack"]}}
    assert params["gallery"]["attack"]["iterations"] == 20
    assert "gallery" in run["items"][0][0]["timing"] and "gallery" in run["reused"]


def test_gallery_applies_exactly_where_the_manipulation_does():
    for name in ("grad_x_input", "lrp", "gradcam"):
        ctx = SimpleNamespace(explainer=get_explainer(name))
        assert ((Gallery().applicable(ctx) is None)  # type: ignore[arg-type]
                == (Manipulation().applicable(ctx) is None)), name  # type: ignore[arg-type]
    lrp: Any = SimpleNamespace(explainer=get_explainer("lrp"))
    reason = Gallery().applicable(lrp)
    assert reason is not None and "evaluation-only" in reason and "differentiates through its map" in reason
    assert STAGES[-1].name == "gallery"


# --- the figures ------------------------------------------------------------------------------

def test_landscape_has_one_line_per_entry_with_the_entry_values(run):
    items = run["items"]
    fig = plots.draw_landscape(items)
    ax_e, ax_c = fig.axes
    assert [ln.get_label() for ln in ax_e.get_lines()] == ["normal", "mat"]
    assert len(ax_c.get_lines()) == 2
    land = items[0][0]["metrics"]["landscape"]
    np.testing.assert_allclose(ax_e.get_lines()[0].get_ydata(),
                               np.array(land["explanation"]) * 1e7, rtol=1e-12)
    np.testing.assert_allclose(ax_c.get_lines()[1].get_xdata(), land["gammas"])
    _assert_drawn(plots.landscape_figure(items), (1200, 420))


def test_insertion_figure_curves_are_the_means_of_the_stored_curves(run):
    items = run["items"]
    fig = plots.draw_insertion(items)
    ins, adv = fig.axes
    ex = items[0][1]
    line = ins.get_lines()[0]
    np.testing.assert_allclose(line.get_xdata(), 100 * np.array(INSERTION_RATIOS))
    np.testing.assert_allclose(line.get_ydata(), 100 * ex["insertion/curve"].mean(axis=1),
                               rtol=1e-6)
    score = items[0][0]["metrics"]["insertion"]["value"]
    assert line.get_label() == f"normal ({score:.1f})"  # the curve's mean is the score
    assert len(adv.get_lines()) == 2
    # the legends (one line of two entries) under the axes: 0.5 in + 0.2 in a line taller
    _assert_drawn(plots.insertion_figure(items), (1100, 490))


def test_gallery_figure_rows_show_the_stored_images_and_maps(run):
    items = run["items"]
    fig = plots.draw_gallery(items, pairs=2)
    assert len(fig.axes) == 2 * 2 * len(plots.GALLERY_COLUMNS)  # 2 entries x 2 pairs
    ex = items[0][1]
    shown = fig.axes[0].get_images()[0].get_array()
    np.testing.assert_allclose(shown, ex["gallery/x_victim"][0, 0].astype(np.float32))
    np.testing.assert_allclose(fig.axes[5].get_images()[0].get_array(), ex["gallery/map_adv"][0])
    assert fig.axes[0].get_ylabel() == "normal\npair 0 -> 10"
    png = plots.gallery_figure(items)  # 3 pairs each: 6 rows
    _assert_drawn(png, (1200, round(100 * (0.6 + 2.05 * 6))))
    with pytest.raises(XRBenchError, match="at least one pair"):
        plots.gallery_figure(items, pairs=0)


def test_scatter_places_each_entry_at_its_metrics(run):
    entries = [e for e, _ in run["items"]]
    fig = plots.draw_scatter(entries, "expl_end")
    ax = fig.axes[0]
    points = [(float(np.asarray(ln.get_xdata())[0]), float(np.asarray(ln.get_ydata())[0]))
              for ln in ax.get_lines() if ln.get_marker() == "o"]
    want = (entries[0]["metrics"]["pgd_acc"]["value"],
            entries[0]["metrics"]["expl_end"]["value"] * 1e7)
    assert points == [pytest.approx(want)] * 2
    assert [t.get_text() for t in ax.texts] == ["normal", "mat"]
    assert "rps/cosine/8/255" in plots.metric_names(entries[0])
    assert plots.metric_object(entries[0], "rps/cosine/8/255") is \
        entries[0]["metrics"]["rps"]["cosine"]["8/255"]
    assert plots.metric_object(entries[0], "retrieval/relex_adv_mask/0.1")["n"] == 20
    _assert_drawn(plots.scatter_figure(entries, "retrieval/relex_adv_mask/0.2"), (640, 500))
    with pytest.raises(XRBenchError, match=r"unknown metric 'expl_mid'.*expl_end"):
        plots.scatter_figure(entries, "expl_mid")


# --- the figures' layout: legends and labels hide nothing -----------------------------------

PUBLISHED_QUICK = (Path(__file__).parents[1] / "leaderboard" / "results" / "digits" / "convnet"
                   / "grad_x_input" / "quick")


def _published_quick() -> list[tuple[dict[str, Any], dict[str, np.ndarray]]]:
    """The published digits quick table's entries (normal, l2_cosd and hessian all at PGD
    accuracy 0) with their per-example files."""
    paths = sorted(PUBLISHED_QUICK.glob("*-s0.json"))
    entries = [read_entry(p) for p in paths]
    return [(e, read_examples(p, e)) for p, e in zip(paths, entries)]


def _text_boxes(fig: Any, ax: Any) -> dict[str, Any]:
    """Each label of ``ax`` -> its text's box in pixels (the text only, not its line)."""
    from matplotlib.text import Text

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    return {t.get_text(): Text.get_window_extent(t, renderer) for t in ax.texts}


def _assert_apart(boxes: dict[str, Any], fig: Any) -> None:
    names = list(boxes)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not boxes[a].overlaps(boxes[b]), (a, b, boxes[a], boxes[b])
    whole = fig.bbox
    for name, box in boxes.items():  # every label inside the figure
        assert whole.x0 <= box.x0 and box.x1 <= whole.x1 and whole.y0 <= box.y0 \
            and box.y1 <= whole.y1, (name, box)


def test_scatter_labels_of_points_that_sit_together_do_not_overlap():
    """The published digits quick table: normal, l2_cosd and hessian all at PGD accuracy 0,
    their Expl@end 10% apart. Their labels stand in a column in the order of their points,
    apart from each other and from every other label; a pushed label has a line to its
    point. The same placement again gives the same figure (deterministic)."""
    entries = [e for e, _ in _published_quick()]
    fig = plots.draw_scatter(entries, "expl_end")
    ax = fig.axes[0]
    assert len(ax.texts) == len(entries) == 7
    boxes = _text_boxes(fig, ax)
    _assert_apart(boxes, fig)
    at_zero = sorted((e["metrics"]["expl_end"]["value"], e["defense"]["name"]) for e in entries
                     if e["metrics"]["pgd_acc"]["value"] == 0.0)
    assert [n for _, n in at_zero] == ["normal", "l2_cosd", "hessian"]  # from the lowest
    assert [boxes[n].y0 for _, n in at_zero] == sorted(boxes[n].y0 for _, n in at_zero)
    # those were drawn on top of each other before (5 pt right and up of each point)
    assert boxes["hessian"].y0 >= boxes["l2_cosd"].y1 >= boxes["normal"].y1
    lines = {t.get_text(): t.arrow_patch is not None for t in ax.texts}
    assert lines["hessian"] and lines["l2_cosd"] and not lines["sep_neg"]
    fig2 = plots.draw_scatter(entries, "expl_end")
    assert {k: tuple(v.extents) for k, v in _text_boxes(fig2, fig2.axes[0]).items()} == \
        {k: tuple(v.extents) for k, v in boxes.items()}


@pytest.mark.parametrize("where", ["same point", "top right corner"])
def test_scatter_labels_apart_however_crowded(where):
    """Eight entries at one point (or packed in the axis's top right corner, where labels
    cannot all go up or right), one far from them: every label apart from every other,
    inside the figure."""
    from test_leaderboard import make_entry_v2

    entries = []
    for i in range(8):
        e = make_entry_v2(f"defense_{i}", expl_end=5e-5 if where == "same point"
                          else 5e-5 * (1 + 0.01 * i))
        e["metrics"]["pgd_acc"]["value"] = 30.0 if where == "same point" else 40.0 + 0.05 * i
        entries.append(e)
    entries.append(make_entry_v2("far_away", expl_end=1e-5))  # PGD 12.3: bottom left
    fig = plots.draw_scatter(entries, "expl_end")
    ax = fig.axes[0]
    boxes = _text_boxes(fig, ax)
    assert len(boxes) == len(entries)
    _assert_apart(boxes, fig)


def test_pareto_labels_do_not_overlap():
    """The Pareto figure places its labels the same way (its markers grow with clean
    accuracy, and labels keep clear of them)."""
    entries = [e for e, _ in _published_quick()]
    fig = plots.draw_pareto(entries)
    _assert_apart(_text_boxes(fig, fig.axes[0]), fig)


def test_insertion_legends_sit_under_their_axes_hiding_no_curve():
    """The published digits quick table's curves (three of them rise to 100% at the top
    left, where the legend sat): each axis's legend lies under the axis, below its tick
    labels and axis label, inside the figure, and apart from the other axis's legend."""
    items = _published_quick()
    fig = plots.draw_insertion(items)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axes = fig.axes
    assert len(axes) == 2
    legends = []
    for ax in axes:
        legend = ax.get_legend()
        assert legend is not None and len(legend.get_texts()) == 7
        box = legend.get_window_extent(renderer)
        area = ax.get_window_extent(renderer)  # the axis's data area
        assert box.y1 < area.y0, (box, area)  # wholly below it: no curve under the legend
        label = ax.xaxis.label.get_window_extent(renderer)
        assert box.y1 <= label.y0 and not box.overlaps(label)
        for tick in ax.get_xticklabels():
            assert not box.overlaps(tick.get_window_extent(renderer))
        assert fig.bbox.y0 <= box.y0 and box.x0 >= fig.bbox.x0 and box.x1 <= fig.bbox.x1
        legends.append(box)
    assert not legends[0].overlaps(legends[1])
    # one entry per legend line up to three: 7 entries take 3 lines, the figure 0.6 in taller
    assert fig.get_figheight() == pytest.approx(4.2 + 0.5 + 0.2 * 3)


def test_missing_data_names_the_entry_and_what_to_do(run):
    (entry, ex), other = run["items"]
    old = {k: v for k, v in ex.items() if not k.startswith("gallery/")
           and not k.endswith("/curve")}
    with pytest.raises(XRBenchError, match=r"normal-s0 \(digits / convnet / grad_x_input / "
                                           r"smoke\) has no Insertion curves.*re-run"):
        plots.insertion_figure([(entry, old), other])
    with pytest.raises(XRBenchError, match="has no saliency gallery.*xrbench evaluate"):
        plots.gallery_figure([(entry, old)])
    na = copy.deepcopy(entry)
    na["not_applicable"] = {"gallery": "explainer 'lrp' is evaluation-only"}
    with pytest.raises(XRBenchError, match="did not run for it .explainer 'lrp'"):
        plots.gallery_figure([(na, old)])
    na["not_applicable"] = {"manipulation": "explainer 'lrp' is evaluation-only"}  # older entry
    with pytest.raises(XRBenchError, match="the manipulation stage did not run for it"):
        plots.gallery_figure([(na, old)])
    other_table = copy.deepcopy(entry)
    other_table["protocol"]["profile"] = "quick"
    with pytest.raises(XRBenchError, match="differ in profile"):
        plots.landscape_figure([(entry, ex), (other_table, ex)])
    with pytest.raises(XRBenchError, match="no entries"):
        plots.scatter_figure([], "expl_end")


def test_labels_name_the_seed_only_when_seeds_differ(run):
    e = run["items"][0][0]
    e1 = {**e, "seed": 1}
    assert plots.labels([e, e]) == ["normal", "normal"]
    assert plots.labels([e, e1]) == ["normal s0", "normal s1"]


# --- the command ------------------------------------------------------------------------------

def test_plot_command_writes_and_refuses_to_overwrite(run, tmp_path, capsys):
    out = tmp_path / "figs" / "gallery.png"
    folder = str(run["paths"][0].parent)
    assert main(["plot", "gallery", folder, "--out", str(out), "--pairs", "1"]) == 0
    _assert_drawn(out.read_bytes(), (1200, round(100 * (0.6 + 2.05 * 2))))  # 2 entries
    assert f"wrote {out} (gallery, 2 entries)" in capsys.readouterr().out
    assert main(["plot", "landscape", str(run["paths"][0]), "--out", str(out)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert main(["plot", "landscape", str(run["paths"][0]), "--out", str(out), "--force"]) == 0
    _assert_drawn(out.read_bytes(), (1200, 420))
    scatter = tmp_path / "scatter.png"
    assert main(["plot", "scatter", *map(str, run["paths"]), "--out", str(scatter),
                 "--metric", "insertion"]) == 0
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("args, message", [
    (["plot", "pie"], "argument KIND: invalid choice: 'pie'"),
    (["plot", "landscape", "{missing}"], "entry not found"),
    (["plot", "landscape", "{bad}"], "malformed JSON in"),
    (["plot", "landscape", "{entry}", "--metric", "expl_end"], "--metric applies to the "
                                                               "scatter figure only"),
    (["plot", "scatter", "{entry}", "--metric", "nope"], "unknown metric 'nope'"),
    (["plot", "landscape", "{entry}", "--out", "{tmp}/fig.jpg"], "must name a .png file"),
])
def test_plot_command_errors_are_one_line(run, tmp_path, capsys, args, message):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    fill = {"missing": str(tmp_path / "nope.json"), "bad": str(bad),
            "entry": str(run["paths"][0]), "tmp": str(tmp_path)}
    argv = [a.format(**fill) for a in args]
    if "--out" not in argv and len(argv) > 2:
        argv += ["--out", str(tmp_path / "fig.png")]
    if len(argv) == 2:
        argv += [fill["entry"], "--out", str(tmp_path / "fig.png")]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own usage errors exit instead of returning
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "fig.png").exists()


def test_plot_help_names_every_kind(capsys):
    with pytest.raises(SystemExit):
        main(["plot", "--help"])
    out = capsys.readouterr().out
    for kind in plots.KINDS:
        assert kind in out
    assert "--force" in out and "--metric" in out and "--pairs" in out
