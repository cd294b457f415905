"""The tool's default acquisition is the budget-aware strategy; the paper-independent config names
it, and the paper configs keep their paper's strategy."""

import csv
import logging
from pathlib import Path

import numpy as np
import pytest
import yaml

from al_lightning.cli import ActiveLearningCLI
from al_lightning.loop import ActiveLoop
from al_lightning.strategies import BudgetAware

ROOT = Path(__file__).resolve().parents[1]


def test_a_loop_without_a_strategy_acquires_budget_aware_with_its_defaults():
    strategy = ActiveLoop().strategy
    assert type(strategy) is BudgetAware
    assert (strategy.min_per_class, strategy.threshold, strategy.switch, strategy.features) == (10.0, 0.95, 0.5, "auto")


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "configs").glob("assl_*.yaml")))
def test_the_assl_paper_configs_keep_the_assl_score(config):
    loop = yaml.safe_load((ROOT / "configs" / config).read_text())["loop"]
    assert loop["strategy"]["class_path"] == "al_lightning.strategies.ASSL"


def make_image_folder(root: Path, per_class: int = 12) -> None:
    """Three classes of 10x10 images: a bright square in a different corner per class, with noise."""
    from PIL import Image
    rng = np.random.default_rng(0)
    corners = {"circle": (0, 0), "square": (0, 5), "star": (5, 0)}
    for split, count in (("train", per_class), ("test", 4)):
        for name, (r, c) in corners.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for k in range(count):
                image = rng.integers(0, 40, size=(10, 10, 3), dtype=np.uint8)
                image[r:r + 5, c:c + 5] = 220
                Image.fromarray(image).save(folder / f"{k}.png")


def test_the_image_folder_config_runs_budget_aware_on_a_users_folder(tmp_path, caplog):
    make_image_folder(tmp_path / "my_images")
    caplog.set_level(logging.INFO)
    ActiveLearningCLI(args=[
        "fit", "--config", str(ROOT / "configs" / "image_folder.yaml"), "--data.root", str(tmp_path / "my_images"),
        "--data.dataset_options", '{"image_size": 10, "channels": 3}', "--model.init_args.backbone", "small_cnn",
        "--model.init_args.backbone_kwargs", '{"width": 8}', "--data.batch_size", "4", "--data.uratio", "1",
        "--data.steps_per_epoch", "3", "--trainer.max_epochs", "1", "--data.num_workers", "0",
        "--data.eval_batch_size", "16", "--loop.rounds", "1", "--loop.initial_size", "6", "--loop.budget", "3",
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), "--trainer.enable_progress_bar", "false"])
    out = caplog.text
    # 6 labels of 3 classes are 2 per class, below min_per_class 10: typicality, whatever the confidence
    assert "cycle 0: 6 labels" in out and "typicality, 2.0 labels per class" in out
    run = tmp_path / "runs" / "image_folder" / "version_0"
    assert [int(r["n_labeled"]) for r in csv.DictReader(open(run / "results.csv"))] == [6, 9]
    assert yaml.safe_load((run / "config.yaml").read_text())["loop"]["strategy"]["class_path"] == \
        "al_lightning.strategies.BudgetAware"
