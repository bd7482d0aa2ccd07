"""The command line: listings, and one-line errors with exit code 2 for user mistakes."""

from __future__ import annotations

import pytest

from xrbench.cli import main


def _run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_list_models_shows_six_kinds(capsys):
    code, out, _ = _run(capsys, "list", "models")
    names = [line.split()[0] for line in out.strip().splitlines()]
    assert code == 0
    assert names == ["convnet", "lenet", "mobilenetv2", "resnet18", "timm:NAME", "wrn28_10"]
    assert all(len(line.split(maxsplit=1)) == 2 for line in out.strip().splitlines())


def test_list_datasets_shows_seven_kinds(capsys):
    code, out, _ = _run(capsys, "list", "datasets")
    names = {line.split()[0] for line in out.strip().splitlines()}
    assert code == 0
    assert names == {"digits", "mnist", "fashion_mnist", "cifar10", "cifar100",
                     "tinyimagenet", "imagefolder:PATH"}


def test_list_explainers_shows_eight(capsys):
    code, out, _ = _run(capsys, "list", "explainers")
    names = {line.split()[0] for line in out.strip().splitlines()}
    assert names == {"gradient", "grad_x_input", "integrated_gradients", "smoothgrad",
                     "guided_backprop", "deeplift", "lrp", "gradcam"}


@pytest.mark.parametrize("argv, needle", [
    (["train", "--defense", "nosuch"], "unknown defense 'nosuch'; valid names:"),
    (["train", "--dataset", "cifar10"], "put the extracted cifar-10-batches-py folder there"),
    (["train", "--model", "nosuch"], "unknown model 'nosuch'"),
    (["train", "--set", "lambda"], "--set expects KEY=VALUE"),
    (["train", "--set", "nosuch=1"], "has no field 'nosuch'"),
    (["evaluate", "--explainer", "nosuch"], "unknown explainer 'nosuch'"),
    (["train", "--device", "tpu"], "unknown device 'tpu'"),
])
def test_user_errors_are_one_line_and_exit_2(capsys, tmp_path, monkeypatch, argv, needle):
    monkeypatch.setenv("XRBENCH_DATA", str(tmp_path))
    monkeypatch.setenv("XRBENCH_CACHE", str(tmp_path / "cache"))
    code, out, err = _run(capsys, *argv, "--quiet")
    assert code == 2
    assert needle in err
    assert err.startswith("xrbench: error: ") and err.count("\n") == 1
    assert "Traceback" not in err


def test_leaderboard_on_missing_folder_is_an_error(capsys, tmp_path):
    code, _, err = _run(capsys, "leaderboard", "--results", str(tmp_path / "none"))
    assert code == 2 and err.startswith("xrbench: error: ")


def test_no_command_prints_help(capsys):
    code, out, _ = _run(capsys)
    assert code == 2 and "evaluate" in out


def test_recipe_lists_every_field_with_value_and_note(capsys):
    from xrbench.cli import main

    assert main(["recipe", "hessian", "--model", "resnet18", "--set", "lr=5e-4"]) == 0
    out = capsys.readouterr().out
    assert "hessian on digits / resnet18" in out
    lines = {ln.split()[0]: ln for ln in out.splitlines()[3:] if ln.strip()}
    assert set(lines) == {"epochs", "batch_size", "lr", "lambda_"}
    assert "0.0005" in lines["lr"] and "Adam learning rate" in lines["lr"]
    assert "0.0001" in lines["lambda_"] and "(by dataset/model)" in lines["lambda_"]
    assert main(["recipe", "nosuch"]) == 2


def test_smoke_profile_trains_a_short_recipe():
    from xrbench.protocol import get_profile

    assert get_profile("smoke").train_epochs == 3
    assert get_profile("quick").train_epochs is None and get_profile("paper").train_epochs is None
