"""A person's own project: ``image_folder`` with an ``unlabeled/`` folder of images nobody has
labeled. Their class is unknown to everything (no oracle can read it), the images in
``train/<class>/`` are labels the person gave and start the run, and people label the queries."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from al_lightning.cli import main
from al_lightning.data import ActiveDataModule
from al_lightning.data.datasets import UNKNOWN, DatasetNotFound

ROOT = Path(__file__).resolve().parents[1]
CORNERS = {"circle": (0, 0), "square": (0, 5), "star": (5, 0)}


def save_image(path: Path, klass: str, rng: np.random.Generator) -> None:
    """A 10x10 image: a bright square in the class's corner over noise."""
    from PIL import Image
    r, c = CORNERS[klass]
    image = rng.integers(0, 40, size=(10, 10, 3), dtype=np.uint8)
    image[r:r + 5, c:c + 5] = 220
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def make_project(root: Path, labeled_per_class: int, unlabeled_per_class: int) -> dict[str, str]:
    """train/<class>/ (given labels), unlabeled/ in two sub-folders with class-free names, test/;
    returns the true class of every unlabeled image by its stable id, which only the test knows."""
    rng = np.random.default_rng(0)
    truth = {}
    for klass in CORNERS:
        for k in range(labeled_per_class):
            save_image(root / "train" / klass / f"{k}.png", klass, rng)
        for k in range(4):
            save_image(root / "test" / klass / f"{k}.png", klass, rng)
    for i, klass in enumerate(np.random.default_rng(1).permutation(list(CORNERS) * unlabeled_per_class)):
        sample_id = f"unlabeled/batch_{i % 2}/img_{i:03d}.png"
        save_image(root / sample_id, str(klass), rng)
        truth[sample_id] = str(klass)
    return truth


def test_unlabeled_images_join_the_pool_with_an_unknown_label(tmp_path):
    truth = make_project(tmp_path, labeled_per_class=2, unlabeled_per_class=3)
    data = ActiveDataModule("image_folder", root=str(tmp_path), dataset_options={"image_size": 10})
    data.setup()
    splits = data.splits
    assert data.class_names == ("circle", "square", "star")
    assert splits.train_targets.tolist() == [0, 0, 1, 1, 2, 2] + [UNKNOWN] * 9
    assert data.sample_ids(range(6, 15)) == sorted(truth)
    assert splits.given_labels.tolist() == list(range(6)) and splits.unknown_labels.tolist() == list(range(6, 15))
    assert data.pool.size == 15 and data.pool.num_labeled == 0


def test_a_folder_of_only_unlabeled_images_takes_its_classes_from_test(tmp_path):
    make_project(tmp_path, labeled_per_class=0, unlabeled_per_class=2)
    data = ActiveDataModule("image_folder", root=str(tmp_path), dataset_options={"image_size": 10})
    assert data.num_classes == 3
    data.setup()
    assert data.splits.given_labels.size == 0 and data.splits.unknown_labels.tolist() == list(range(6))


def test_a_benchmark_folder_gives_no_labels(tmp_path):
    """Without unlabeled/, train/<class>/ is hidden ground truth: nothing starts labeled."""
    make_project(tmp_path, labeled_per_class=2, unlabeled_per_class=0)
    assert not (tmp_path / "unlabeled").exists()
    data = ActiveDataModule("image_folder", root=str(tmp_path), dataset_options={"image_size": 10})
    data.setup()
    assert data.splits.train_targets.tolist() == [0, 0, 1, 1, 2, 2]
    assert data.splits.given_labels.size == 0 and data.splits.unknown_labels.size == 0


def test_a_folder_without_test_images_is_refused(tmp_path):
    make_project(tmp_path, labeled_per_class=1, unlabeled_per_class=1)
    for path in (tmp_path / "test").rglob("*.png"):
        path.unlink()
    data = ActiveDataModule("image_folder", root=str(tmp_path), dataset_options={"image_size": 10})
    with pytest.raises(DatasetNotFound, match="no images under .*test"):
        data.setup()


def project_config(tmp_path: Path, root: Path, **loop: object) -> Path:
    """configs/image_folder.yaml at 10x10 on a width-8 CNN, 3 FixMatch steps a fit, people answer."""
    config = yaml.safe_load((ROOT / "configs" / "image_folder.yaml").read_text())
    config["trainer"].update(max_epochs=1, enable_progress_bar=False, default_root_dir=str(tmp_path))
    config["trainer"]["logger"]["init_args"].update(save_dir=str(tmp_path / "runs"), version=0)
    config["trainer"]["callbacks"].append({"class_path": "al_lightning.scoring.PseudoLabelAccuracy"})
    config["model"]["init_args"].update(backbone="small_cnn", backbone_kwargs={"width": 8})
    config["data"].update(root=str(root), dataset_options={"image_size": 10, "channels": 3}, batch_size=4,
                          uratio=1, steps_per_epoch=3, num_workers=0, eval_batch_size=16)
    config["loop"].update({"rounds": 1, "budget": 4, "oracle": {"class_path": "al_lightning.loop.FileOracle"},
                           **loop})
    path = tmp_path / "project.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def answer(queries: Path, out: Path, truth: dict[str, str]) -> Path:
    rows = list(csv.DictReader(open(queries)))
    out.write_text("id,label\n" + "".join(f"{row['id']},{truth[row['id']]}\n" for row in rows))
    return out


def test_the_given_labels_start_the_run_and_people_label_the_unlabeled_queries(tmp_path, capsys):
    truth = make_project(tmp_path / "my_images", labeled_per_class=2, unlabeled_per_class=8)
    config = project_config(tmp_path, tmp_path / "my_images")
    run = tmp_path / "runs" / "image_folder" / "version_0"
    main(["fit", "--config", str(config)])
    assert "4 images to label for cycle 1" in capsys.readouterr().out
    state = json.loads((run / "state.json").read_text())
    # the six given labels were the first fit's whole labeled set; nobody was asked for them
    assert state["results"][0]["n_labeled"] == 6 and not (run / "queries" / "cycle_0.csv").exists()
    queries = run / "queries" / "cycle_1.csv"
    asked = [row["id"] for row in csv.DictReader(open(queries))]
    assert len(asked) == 4 and all(sample_id in truth for sample_id in asked)
    main(["label", str(run), str(answer(queries, tmp_path / "answers.csv", truth))])
    main(["fit", "--resume", str(run)])
    state = json.loads((run / "state.json").read_text())
    assert state["phase"] == "done" and [r["n_labeled"] for r in state["results"]] == [6, 10]
    pool = json.loads((run / "pool.json").read_text())
    data = ActiveDataModule("image_folder", root=str(tmp_path / "my_images"), dataset_options={"image_size": 10})
    data.setup()
    data.pool.load_state_dict(pool)
    labeled = data.pool.labeled_indices
    names = data.class_names
    labels_by_id = {data.sample_ids([i])[0]: names[c] for i, c in zip(labeled, data.pool.labels_of(labeled))}
    given = {f"train/{k}/{j}.png": k for k in CORNERS for j in range(2)}
    assert labels_by_id == {**given, **{sample_id: truth[sample_id] for sample_id in asked}}


def test_without_given_labels_people_label_the_initial_set_before_any_fit(tmp_path, capsys):
    truth = make_project(tmp_path / "my_images", labeled_per_class=0, unlabeled_per_class=6)
    config = project_config(tmp_path, tmp_path / "my_images", initial_size=6, rounds=0)
    run = tmp_path / "runs" / "image_folder" / "version_0"
    main(["fit", "--config", str(config)])
    assert "6 images to label for cycle 0" in capsys.readouterr().out
    assert json.loads((run / "state.json").read_text())["results"] == []
    main(["label", str(run), str(answer(run / "queries" / "cycle_0.csv", tmp_path / "a.csv", truth))])
    main(["fit", "--resume", str(run)])
    assert [r["n_labeled"] for r in json.loads((run / "state.json").read_text())["results"]] == [6]


def test_the_simulated_oracle_is_refused_where_nobody_knows_the_labels(tmp_path, capsys):
    make_project(tmp_path / "my_images", labeled_per_class=2, unlabeled_per_class=2)
    config = project_config(tmp_path, tmp_path / "my_images", oracle=None)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "loop.oracle: 6 pool images have no label for the simulated oracle" in err[0]
    assert "unlabeled/batch_0/img_000.png" in err[0] and "FileOracle" in err[0]
    assert not (tmp_path / "runs" / "image_folder" / "version_0").exists()


def test_pseudo_label_accuracy_counts_only_images_whose_class_is_known():
    """Of four confident pseudo-labels, one is right, one wrong, two on unlabeled/ images: 1/2."""
    from types import SimpleNamespace

    from al_lightning.scoring import PseudoLabelAccuracy

    truth = np.array([2, 0, UNKNOWN, UNKNOWN, 1])
    trainer = SimpleNamespace(datamodule=SimpleNamespace(ground_truth=lambda ids: truth[np.asarray(ids)]))
    logged = {}
    module = SimpleNamespace(log=lambda name, value, **kw: logged.update({name: float(value)}))
    probs = torch.eye(3)[[2, 1, 0, 1, 1]]  # predicts 2, 1, 0, 1, 1
    outputs = {"unlabeled": {"index": torch.arange(5), "mask": torch.tensor([1.0, 1, 1, 1, 0]),
                             "probs_weak": probs}}
    PseudoLabelAccuracy().on_train_batch_end(trainer, module, outputs, None, 0)
    assert logged == {"train/pseudo_acc": 0.5}
    outputs["unlabeled"]["mask"] = torch.tensor([0.0, 0, 1, 1, 0])  # only unknown ones: nothing to log
    logged.clear()
    PseudoLabelAccuracy().on_train_batch_end(trainer, module, outputs, None, 0)
    assert logged == {}


def test_a_setting_that_picks_another_initial_set_is_refused_beside_given_labels(tmp_path, capsys):
    make_project(tmp_path / "my_images", labeled_per_class=2, unlabeled_per_class=2)
    config = project_config(tmp_path, tmp_path / "my_images")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--loop.initial_strategy", "al_lightning.strategies.TypiClust"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: loop.initial_strategy: the data came with 6 labeled images (train/<class>/ beside "
                   "unlabeled/), which are the initial set; remove loop.initial_strategy"]
    assert not (tmp_path / "runs" / "image_folder" / "version_0").exists()
