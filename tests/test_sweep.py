"""xrbench sweep: cells (grids included), what a dry run reports, skip on rerun, a failing
cell reported while the others finish, Ray missing, and the acceptance command on a local Ray
cluster (slow)."""

from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path

import pytest
from conftest import require_ray

from xrbench import api
from xrbench.cli import main
from xrbench.leaderboard.board import published_dir
from xrbench.data import DIGITS_CARD
from xrbench.errors import XRBenchError
from xrbench.leaderboard.schema import read_entry, write_entry
from xrbench.protocol import PROTOCOL_VERSION, get_profile
from xrbench.stages import STAGES
from xrbench.sweep import (CHECKPOINT, CONFLICT, DONE, INVALID, NOTHING, PARTIAL, RAN,
                           SKIPPED, Cell, CellState, SweepSpec, _submission_order, cell_state,
                           expand, parse_grid, parse_seeds, plan, run_sweep)
from xrbench.train import build_recipe, checkpoint_key

TEMPLATE = published_dir() / "digits/convnet/grad_x_input/paper/mat-s0.json"


def spec(tmp_path: Path, **kw) -> SweepSpec:
    return SweepSpec(**{"profile": "smoke", "out": str(tmp_path / "out"), **kw})


# --- cells -------------------------------------------------------------------------------

def test_grid_cells_counts_overrides_and_folders(tmp_path):
    s = spec(tmp_path, defenses=("normal", "mat", "trades"), seeds=(0, 1),
             explainers=("grad_x_input", "gradient"), grid=parse_grid(["trades.beta=1,3,6,9"]),
             sets={"epochs": "2"})
    cells = expand(s)
    # normal and mat one point each, trades four; x 2 seeds x 2 explainers
    assert len(cells) == (1 + 1 + 4) * 2 * 2 == 24
    trades = [c for c in cells if c.defense == "trades"]
    assert sorted({c.grid for c in trades}) == [(("beta", v),) for v in ("1", "3", "6", "9")]
    c3 = next(c for c in trades if c.grid == (("beta", "3"),))
    assert dict(c3.overrides) == {"epochs": "2", "beta": "3"}
    out = (tmp_path / "out").absolute()
    assert c3.out_dir == out / "grid" / "trades.beta=3"
    assert c3.entry_path == (out / "grid/trades.beta=3/digits/convnet" / c3.explainer / "smoke"
                             / f"trades-s{c3.seed}.json")
    normal = [c for c in cells if c.defense == "normal"]
    assert all(c.out_dir == out and dict(c.overrides) == {"epochs": "2"} for c in normal)
    assert len({c.entry_path for c in cells}) == 24  # no two cells share an entry


def test_two_grid_fields_of_one_defense_give_their_product(tmp_path):
    s = spec(tmp_path, defenses=("trades", "normal"),
             grid=parse_grid(["trades.beta=1,6", "trades.lr=1e-3,5e-4,2e-4"]),
             sets={"trades.epochs": "2"})
    cells = expand(s)
    assert len(cells) == 2 * 3 + 1
    assert cells[0].point == "trades.beta=1,trades.lr=1e-3"
    assert dict(cells[0].overrides) == {"epochs": "2", "beta": "1", "lr": "1e-3"}
    assert cells[-1].defense == "normal" and cells[-1].overrides == ()  # trades.epochs only
    # the recipe sees the values: the cell's recipe hash differs per point
    hashes = {build_recipe("trades", DIGITS_CARD, "convnet", dict(c.overrides)).hash()
              for c in cells[:-1]}
    assert len(hashes) == 6


def test_seeds_and_grid_parsing():
    assert parse_seeds("0-3") == (0, 1, 2, 3) and parse_seeds("5,1") == (5, 1)
    assert parse_grid(["sep_neg.lambda=-1,-3"]) == {"sep_neg.lambda": ("-1", "-3")}
    for bad in ("1,1", "x", "-1", "0,,1"):
        with pytest.raises(XRBenchError, match="--seeds"):
            parse_seeds(bad)
    for bad in (["beta=1,3"], ["trades.beta"], ["trades.beta="], ["trades.beta=1,1"],
                ["trades.beta=1", "trades.beta=3"]):
        with pytest.raises(XRBenchError, match="--grid"):
            parse_grid(bad)


@pytest.mark.parametrize("kw, needle", [
    ({"defenses": ("normal", "nosuch")}, "unknown defense 'nosuch'"),
    ({"datasets": ("nosuch",)}, "unknown dataset 'nosuch'"),
    ({"models": ("nosuch",)}, "unknown model 'nosuch'"),
    ({"explainers": ("nosuch",)}, "unknown explainer 'nosuch'"),
    ({"profile": "nosuch"}, "unknown profile"),
    ({"seeds": (-1,)}, "seed -1 is out of range"),
    ({"defenses": ("mat",), "grid": {"mat.beta": ("1",)}}, "recipe of mat has no field 'beta'"),
    ({"defenses": ("mat",), "grid": {"trades.beta": ("1",)}}, "'trades' is not among"),
    ({"defenses": ("normal", "trades"), "sets": {"beta": "1"}},
     "recipe of normal has no field 'beta'.*--set DEFENSE.beta=1"),
    ({"defenses": ("trades",), "sets": {"trades.beta": "1"}, "grid": {"trades.beta": ("3",)}},
     "both set trades's beta"),
])
def test_unknown_names_and_fields_fail_before_any_cell(tmp_path, kw, needle):
    with pytest.raises(XRBenchError, match=needle):
        expand(spec(tmp_path, **kw))


def test_cells_sharing_a_checkpoint_start_after_its_first_cell():
    ckpt = lambda kind, key: CellState(kind, checkpoint=key)  # noqa: E731
    # cells 0-1 share key a, 2-3 share b (nothing cached); 4-5 share c (cached)
    states = [ckpt(NOTHING, "a"), ckpt(NOTHING, "a"), ckpt(NOTHING, "b"), ckpt(PARTIAL, "b"),
              ckpt(CHECKPOINT, "c"), ckpt(CHECKPOINT, "c")]
    assert _submission_order([0, 1, 2, 3, 4, 5], states) == [0, 2, 4, 5, 1, 3]


# --- what is there -----------------------------------------------------------------------

def fake_entry(cell: Cell) -> dict:
    """A valid entry for ``cell``: a published entry with the cell's configuration written in
    (its recipe hash computed the way training resolves the recipe)."""
    e = copy.deepcopy(read_entry(TEMPLATE))
    e.pop("examples", None)
    overrides = dict(cell.overrides)
    epochs = get_profile(cell.profile).train_epochs
    if epochs is not None:
        overrides = {"epochs": str(epochs), **overrides}
    recipe = build_recipe(cell.defense, DIGITS_CARD, cell.model, overrides)
    e["protocol"].update(profile=cell.profile, version=PROTOCOL_VERSION)  # as a run today
    e["protocol"]["parameters"].update({s.name: {} for s in STAGES})  # every stage ran
    e["defense"].update(name=cell.defense, recipe=recipe.to_dict(), recipe_hash=recipe.hash())
    e["explainer"]["name"], e["seed"] = cell.explainer, cell.seed
    return e


class FakeEvaluate:
    """Stands in for api.evaluate in this process (local executor): records the calls,
    writes the cell's entry, or raises for the defenses in ``fail``."""

    def __init__(self, fail: tuple[str, ...] = ()) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.fail = fail

    def __call__(self, *, defense, dataset, model, explainer, profile, seed, out, overrides,
                 **kw):
        self.calls.append((defense, dict(overrides)))
        if defense in self.fail:
            raise XRBenchError(f"training {defense} failed\non purpose")
        cell = Cell(defense, dataset, model, explainer, seed, profile, str(out),
                    tuple(overrides.items()))
        done = write_entry(cell.entry_path, fake_entry(cell), overwrite=kw.get("replace"))
        return api.Result(done.entry, done.path, done.written, [], {}, {"total": 0.0})


def test_dry_run_states(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    s = spec(tmp_path, defenses=("normal", "mat", "trades"),
             grid={"trades.beta": ("1", "-1")})
    normal, mat, trades1, trades_bad = expand(s)
    assert [cell_state(c, cache_root=cache).kind for c in (normal, mat, trades1)] == [NOTHING] * 3
    bad = cell_state(trades_bad, cache_root=cache)
    assert bad.kind == INVALID and "'beta' = -1.0 is out of range" in bad.detail

    # a checkpoint (and a partial one) where training would put it
    key, _ = checkpoint_key(DIGITS_CARD, "convnet", "mat", {"epochs": "3"}, 0)
    key.path(cache).parent.mkdir(parents=True)
    key.path(cache).with_suffix(".partial.pt").write_bytes(b"")
    assert cell_state(mat, cache_root=cache).kind == PARTIAL
    key.path(cache).write_bytes(b"")
    state = cell_state(mat, cache_root=cache)
    assert state.kind == CHECKPOINT and state.checkpoint == key.digest()

    # the finished entry of the same configuration; another run's entry at normal's path
    write_entry(mat.entry_path, fake_entry(mat))
    other = Cell("normal", "digits", "convnet", "grad_x_input", 0, "smoke", normal.out,
                 (("epochs", "5"),))
    write_entry(normal.entry_path, fake_entry(other))
    done, conflict = cell_state(mat, cache_root=cache), cell_state(normal, cache_root=cache)
    assert done.kind == DONE
    assert conflict.kind == CONFLICT and "recipe hash" in conflict.detail
    # an entry lacking a stage of this xrbench (an older one wrote it) is not finished
    e = read_entry(mat.entry_path)
    del e["protocol"]["parameters"][STAGES[-1].name]
    mat.entry_path.write_text(json.dumps(e))
    assert f"lacks the stage(s) {STAGES[-1].name}" in cell_state(mat, cache_root=cache).detail
    write_entry(mat.entry_path, fake_entry(mat), overwrite=True)

    # the command prints one line per cell with its state, and computes nothing
    fake = FakeEvaluate()
    monkeypatch.setattr(api, "evaluate", fake)
    monkeypatch.setenv("XRBENCH_CACHE", str(cache))
    assert main(["sweep", "--defenses", "normal,mat,trades", "--grid", "trades.beta=1,-1",
                 "--profile", "smoke", "--out", s.out, "--dry-run"]) == 0
    lines = [re.split(r"\s{2,}", line, maxsplit=1)
             for line in capsys.readouterr().out.splitlines()]
    assert fake.calls == []
    assert lines[0][0] == "digits/convnet/grad_x_input/smoke/normal-s0"
    assert lines[0][1].startswith(f"conflict ({normal.entry_path} holds another run: its "
                                  "recipe hash is")
    assert lines[1] == ["digits/convnet/grad_x_input/smoke/mat-s0",
                        f"done (entry {mat.entry_path})"]
    assert lines[2] == ["digits/convnet/grad_x_input/smoke/trades-s0 @trades.beta=1",
                        "nothing cached"]
    assert lines[3][1].startswith("invalid (recipe field 'beta' = -1.0 is out of range")
    assert lines[4] == ["4 cells: 1 conflict, 1 done, 1 nothing cached, 1 invalid"]


# --- running -----------------------------------------------------------------------------

def test_finished_cells_are_skipped_on_rerun(tmp_path, monkeypatch):
    fake = FakeEvaluate()
    monkeypatch.setattr(api, "evaluate", fake)
    s = spec(tmp_path, defenses=("normal", "trades"), seeds=(0, 1),
             grid={"trades.beta": ("1", "3")}, sets={"epochs": "1"})
    first = run_sweep(s, progress=False, cache_root=tmp_path / "cache")
    assert [r.status for r in first.results] == [RAN] * 6 and len(fake.calls) == 6
    assert ("trades", {"epochs": "1", "beta": "3"}) in fake.calls
    paths = [r.path for r in first.results]
    assert len(set(paths)) == 6 and all(p.is_file() for p in paths)
    assert read_entry(paths[-1])["defense"]["recipe"]["beta"] == 3.0

    again = run_sweep(s, progress=False, cache_root=tmp_path / "cache")
    assert [r.status for r in again.results] == [SKIPPED] * 6
    assert len(fake.calls) == 6  # nothing ran
    assert [r.path for r in again.results] == paths

    # another grid value: only its cells run; --force runs every cell again
    more = run_sweep(spec(tmp_path, defenses=("normal", "trades"), seeds=(0, 1),
                          grid={"trades.beta": ("1", "3", "6")}, sets={"epochs": "1"}),
                     progress=False, cache_root=tmp_path / "cache")
    assert [r.status for r in more.results].count(RAN) == 2 and len(fake.calls) == 8
    forced = run_sweep(spec(tmp_path, defenses=("normal",), seeds=(0, 1), sets={"epochs": "1"},
                            force=True),
                       progress=False, cache_root=tmp_path / "cache")
    assert [r.status for r in forced.results] == [RAN, RAN] and len(fake.calls) == 10


def test_a_failing_cell_is_reported_and_the_others_finish(tmp_path, monkeypatch, capsys):
    fake = FakeEvaluate(fail=("mat",))
    monkeypatch.setattr(api, "evaluate", fake)
    out = str(tmp_path / "out")
    argv = ["sweep", "--defenses", "normal,mat,trades", "--grid", "trades.beta=1,-1",
            "--profile", "smoke", "--out", out, "--quiet"]
    assert main(argv) == 1
    text = capsys.readouterr().out
    assert [d for d, _ in fake.calls] == ["normal", "mat", "trades"]  # beta=-1 never ran
    status = {tuple(re.split(r"\s{2,}", line)[:2]) for line in text.splitlines()}
    cell = "digits/convnet/grad_x_input/smoke/"
    assert {(cell + "normal-s0", "done"), (cell + "mat-s0", "failed"),
            (cell + "trades-s0 @trades.beta=1", "done"),
            (cell + "trades-s0 @trades.beta=-1", "failed")} <= status
    assert "4 cells: 2 done, 0 skipped (finished before), 2 failed" in text
    assert ("failed: digits/convnet/grad_x_input/smoke/mat-s0: XRBenchError: training mat "
            "failed on purpose") in text  # one line
    assert ("failed: digits/convnet/grad_x_input/smoke/trades-s0 @trades.beta=-1: XRBenchError: "
            "recipe field 'beta' = -1.0 is out of range") in text
    assert Path(out, "grid/trades.beta=1/digits/convnet/grad_x_input/smoke/trades-s0.json"
                ).is_file()

    # the rerun runs only the failed cell that can run (mat); an entry of another run in a
    # cell's place fails that cell unless --replace
    fake.fail = ()
    normal = Path(out, "digits/convnet/grad_x_input/smoke/normal-s0.json")
    e = read_entry(normal)
    e["seed"] = 7
    normal.write_text(json.dumps(e))
    assert main(argv) == 1
    text = capsys.readouterr().out
    assert [d for d, _ in fake.calls[3:]] == ["mat"]
    assert "normal-s0: XRBenchError: the entry file holds another run (its seed is 7" in text
    assert main([*argv, "--replace"]) == 1  # the invalid grid value still fails
    assert [d for d, _ in fake.calls[4:]] == ["normal"]
    assert read_entry(normal)["seed"] == 0


def test_ray_missing_is_one_line_naming_the_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    fake = FakeEvaluate()
    monkeypatch.setattr(api, "evaluate", fake)
    code = main(["sweep", "--defenses", "normal", "--profile", "smoke", "--executor", "ray",
                 "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and fake.calls == []
    assert err.count("\n") == 1 and 'pip install "xrbench[ray]"' in err
    # everything else works without Ray
    assert main(["sweep", "--defenses", "normal", "--profile", "smoke", "--out",
                 str(tmp_path), "--quiet"]) == 0
    assert len(fake.calls) == 1


@pytest.mark.slow
def test_acceptance_on_a_local_ray_cluster(tmp_path, capsys):
    require_ray()
    out = str(tmp_path / "out")
    argv = ["sweep", "--defenses", "normal,mat", "--datasets", "digits", "--profile", "smoke",
            "--executor", "ray", "--set", "epochs=1", "--out", out, "--quiet"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "2 cells: 2 done, 0 skipped" in text and "ray (local cluster)" in text
    for defense in ("normal", "mat"):
        e = read_entry(Path(out, f"digits/convnet/grad_x_input/smoke/{defense}-s0.json"))
        assert e["defense"]["name"] == defense and e["defense"]["recipe"]["epochs"] == 1
        assert e["environment"]["threads"] == 1  # one CPU per cell: Ray's one thread
    assert {c.kind for _, c in plan(spec(tmp_path, defenses=("normal", "mat"),
                                         sets={"epochs": "1"}))} == {DONE}
    assert main(argv) == 0
    assert "2 cells: 0 done, 2 skipped" in capsys.readouterr().out


def test_a_local_ray_cluster_without_the_gpus_asked_is_an_error_not_a_hang(tmp_path):
    require_ray()
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(XRBenchError, match="has 0 GPUs, and a local Ray cluster would wait"):
        run_sweep(spec(tmp_path, device="cuda"), executor="ray", progress=False)
    assert not (tmp_path / "out").exists()  # checked before anything was written
