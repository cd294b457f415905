"""Every registered strategy runs from the digits config in a real (tiny) cycle."""

import json

import pytest

from al_lightning.cli import ActiveLearningCLI
from al_lightning.strategies import STRATEGIES

TINY = ["--data.steps_per_epoch", "2", "--trainer.max_epochs", "1", "--loop.rounds", "1",
        "--loop.initial_size", "20", "--loop.budget", "6", "--data.batch_size", "8", "--data.uratio", "2",
        "--model.init_args.backbone_kwargs", '{"width": 4}']
SINGLE_SHOT = {"usl", "usl_t", "kmedoids", "as3l", "active_ft", "typiclust", "probcover", "budget_aware"}


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_strategy_runs_a_cycle_from_the_config(tmp_path, name):
    cls = STRATEGIES.get(name)
    path = f"{cls.__module__.rsplit('.', 1)[0]}.{cls.__name__}"
    args = ["fit", "--config", "configs/assl_digits.yaml", *TINY, "--trainer.logger.init_args.save_dir", str(tmp_path),
            "--loop.strategy.class_path", path]
    if name in SINGLE_SHOT:  # also as the run's initial selection, on pixels (no trained model yet)
        args += ["--loop.strategy.init_args.features", "pixels", "--loop.initial_strategy.class_path", path,
                 "--loop.initial_strategy.init_args.features", "pixels"]
    ActiveLearningCLI(args=args)
    run = tmp_path / "assl_digits" / "version_0"
    selections = json.loads((run / "selections.json").read_text())
    assert len(selections["0"]) == 20 and len(selections["1"]) == 6
    assert len(set(selections["0"]) | set(selections["1"])) == 26
