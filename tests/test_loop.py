import csv
import json

import lightning as L
import pytest
import torch

from al_lightning.cli import ActiveLearningCLI
from al_lightning.data import ActiveDataModule, PoolError
from al_lightning.loop import ActiveLoop
from al_lightning.methods import FixMatch
from al_lightning.scoring import OnlineScoring
from al_lightning.strategies import Random

TINY = ["--data.steps_per_epoch", "4", "--trainer.max_epochs", "1", "--loop.rounds", "1",
        "--loop.initial_size", "20", "--loop.budget", "10", "--data.batch_size", "8", "--data.uratio", "2"]


def test_two_cycle_run_from_the_digits_config(tmp_path):
    ActiveLearningCLI(args=["fit", "--config", "configs/assl_digits.yaml", *TINY,
                            "--trainer.logger.init_args.save_dir", str(tmp_path)])
    run = tmp_path / "assl_digits" / "version_0"
    rows = list(csv.DictReader(open(run / "results.csv")))
    assert list(rows[0]) == ["cycle", "n_labeled", "test_acc", "fit_seconds", "acquire_seconds", "class_coverage"]
    assert [int(r["n_labeled"]) for r in rows] == [20, 30]
    assert all(0.0 <= float(r["test_acc"]) <= 1.0 for r in rows)
    pool = json.loads((run / "pool.json").read_text())
    assert len(pool["labeled"]) == 30 and len(set(pool["labeled"])) == 30
    selections = json.loads((run / "selections.json").read_text())
    assert sorted(selections) == ["0", "1"] and len(selections["1"]) == 10
    assert set(selections["1"]).isdisjoint(selections["0"])
    scores = torch.load(run / "scores" / "cycle_0.pt")
    assert scores["alpha"] == 0.8 and scores["c_i"] == 2.0 and int(scores["seen"].sum()) > 0
    assert any(p.name.startswith("events.out.tfevents") for p in run.iterdir())


def test_assl_picks_the_top_scores_of_the_fit_it_follows(tmp_path):
    ActiveLearningCLI(args=["fit", "--config", "configs/assl_digits.yaml", *TINY,
                            "--trainer.logger.init_args.save_dir", str(tmp_path)])
    run = tmp_path / "assl_digits" / "version_0"
    scores = torch.load(run / "scores" / "cycle_0.pt")
    selections = json.loads((run / "selections.json").read_text())
    score = (scores["u_mean"] + 0.5 * scores["u_var"].sqrt()) * (scores["i_mean"] + 2.0 * scores["i_var"].sqrt())
    score[selections["0"]] = -1.0
    assert set(selections["1"]) == set(torch.argsort(score, descending=True)[:10].tolist())


class FirstWeights(L.Callback):
    def __init__(self):
        self.seen = []

    def on_fit_start(self, trainer, pl_module):
        self.seen.append(torch.cat([p.detach().flatten().clone() for p in pl_module.model.parameters()]))


@pytest.mark.parametrize("weights", ["random_init", "continue"])
def test_random_init_reloads_the_same_weights_every_cycle(tmp_path, weights):
    L.seed_everything(0)
    model = FixMatch(backbone="small_cnn", num_classes=10, in_channels=1, backbone_kwargs={"width": 4},
                     scheduler="none")
    dm = ActiveDataModule("digits", batch_size=4, uratio=1, steps_per_epoch=2, num_workers=0)
    probe = FirstWeights()
    make = lambda: L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False,  # noqa: E731
                             enable_progress_bar=False, default_root_dir=tmp_path, limit_val_batches=0,
                             callbacks=[probe, OnlineScoring()], use_distributed_sampler=False)
    loop = ActiveLoop(rounds=2, budget=5, initial_size=10, strategy=Random(), weights=weights)
    loop.run(model, dm, make)
    same = [torch.equal(probe.seen[0], w) for w in probe.seen[1:]]
    assert same == ([True, True] if weights == "random_init" else [False, False])
    assert [r["n_labeled"] for r in loop.results] == [10, 15, 20]


def test_initial_index_file(tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("3, 5 8\n13")
    dm = ActiveDataModule("digits")
    dm.setup()
    loop = ActiveLoop(initial_index_file=str(ids))
    assert loop._initial_ids(dm.pool, None, dm).tolist() == [3, 5, 8, 13]
    ids.write_text("[1, 99999]")
    with pytest.raises(PoolError, match="loop.initial_index_file: ids out of range"):
        loop._initial_ids(dm.pool, None, dm)


def test_print_config_shows_the_paper_values(capsys):
    with pytest.raises(SystemExit):
        ActiveLearningCLI(args=["fit", "--config", "configs/assl_cifar10.yaml", "--print_config"])
    text = capsys.readouterr().out
    for needle in ["backbone: resnet18_cifar", "lr: 0.03", "scheduler: none", "steps_per_epoch: 1024",
                   "max_epochs: 5", "rounds: 10", "budget: 100", "initial_size: 100", "alpha: 0.8",
                   "c_u: 0.5", "c_i: 2.0", "weights: random_init", "threshold: 0.95", "uratio: 7",
                   "batch_size: 64", "ema_decay: 0.999", "nesterov: true"]:
        assert needle in text, needle


def test_num_classes_and_channels_flow_from_the_data_to_the_model():
    cli = ActiveLearningCLI(args=["--config", "configs/assl_cifar100.yaml", "--trainer.logger", "false"], run=False)
    assert cli.model.model.fc.out_features == 100 and cli.model.model.stem[0].in_channels == 3
    cli = ActiveLearningCLI(args=["--config", "configs/assl_digits.yaml", "--trainer.logger", "false"], run=False)
    assert cli.model.model.fc.out_features == 10 and cli.model.model.features[0].in_channels == 1
