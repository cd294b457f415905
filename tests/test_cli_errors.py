"""A user's mistake prints one line naming the fix and exits with status 2, without a traceback;
a diverged fit stops the same way and leaves the run resumable. These are the README's bad-input
table."""

import json
import sys
from pathlib import Path

import pytest
import yaml

from al_lightning.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from test_resume import tiny_config  # noqa: E402


def user_error(args, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_unknown_config_key(capsys):
    err = user_error(["fit", "--config", "configs/assl_digits.yaml", "--loop.bugdet", "3"], capsys)
    assert "--loop.bugdet" in err and "--help" in err


def test_unknown_key_in_a_config_file(tmp_path, capsys):
    config = tiny_config(tmp_path, "typo")
    config.write_text(config.read_text().replace("budget:", "bugdet:"))
    assert "bugdet" in user_error(["fit", "--config", str(config)], capsys)


def test_missing_dataset_offline(tmp_path, capsys):
    err = user_error(["fit", "--config", "configs/assl_mnist.yaml", "--data.root", str(tmp_path),
                      "--data.download", "false", "--trainer.logger.init_args.save_dir", str(tmp_path)], capsys)
    assert "mnist: data not found" in err and "train-images-idx3-ubyte.gz" in err and "data.download" in err


def test_bad_index_file(tmp_path, capsys):
    ids = tmp_path / "ids.txt"
    ids.write_text("3 5 eight")
    err = user_error(["fit", "--config", str(tiny_config(tmp_path, "ids")), "--loop.initial_index_file", str(ids)],
                     capsys)
    assert f"loop.initial_index_file: {ids} must list integer ids" in err


def test_budget_larger_than_the_pool(tmp_path, capsys):
    err = user_error(["fit", "--config", str(tiny_config(tmp_path, "budget")), "--loop.budget", "1000"], capsys)
    assert "needs 2020 labels" in err and "the pool holds 1437" in err and "lower loop.budget" in err


def test_a_strategy_that_needs_online_scores_without_the_callback(tmp_path, capsys):
    """Refused before anything is written, not at the first acquisition after a whole fit."""
    config = tiny_config(tmp_path, "noscores")
    text = yaml.safe_load(config.read_text())
    text["trainer"]["callbacks"] = [cb for cb in text["trainer"]["callbacks"]
                                    if not cb["class_path"].endswith("OnlineScoring")]
    config.write_text(yaml.safe_dump(text))
    for strategy in ("ASSL", "BudgetAware", "ASSLDiv"):
        err = user_error(["fit", "--config", str(config), "--loop.strategy", strategy], capsys)
        assert f"loop.strategy: {strategy} picks by the online ASSL score" in err and "OnlineScoring" in err
    assert not (tmp_path / "noscores").exists()
    for model in ("al_lightning.methods.Supervised", "al_lightning.methods.LPSemi"):  # no strong view to score
        err = user_error(["fit", "--config", str(tiny_config(tmp_path, "weakonly")), "--model.class_path", model],
                         capsys)
        assert f"model {model.rsplit('.', 1)[1]} trains no strong view" in err
    assert not (tmp_path / "weakonly").exists()
    # a strategy that reads no scores, or a run without acquisitions, needs no callback
    main(["fit", "--config", str(config), "--loop.rounds", "0"])
    assert (tmp_path / "noscores" / "version_0" / "results.csv").exists()


def test_a_diverged_fit_stops_in_one_line_and_the_run_resumes(tmp_path, capsys):
    config = tiny_config(tmp_path, "nan", rounds=1)
    err = user_error(["fit", "--config", str(config), "--model.init_args.lr", "1e12"], capsys)
    run = tmp_path / "nan" / "version_0"
    assert "cycle 0: the training loss became NaN or infinite" in err and f"--resume {run}" in err
    state = json.loads((run / "state.json").read_text())
    assert (state["phase"], state["cycle"]) == ("fit", 0) and not list(run.glob("checkpoints/*.ckpt"))
    main(["fit", "--resume", str(run), "--model.init_args.lr", "0.03"])
    assert json.loads((run / "state.json").read_text())["phase"] == "done"


def test_resume_of_a_directory_without_a_run(tmp_path, capsys):
    assert "no run to continue there" in user_error(["fit", "--resume", str(tmp_path)], capsys)
