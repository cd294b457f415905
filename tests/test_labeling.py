"""The files people label and the import of their answers (CSV and Label Studio export)."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from al_lightning.data import ActiveDataModule
from al_lightning.loop.labeling import AnswersError, QueryBatch, contact_sheet, read_answers, write_queries

NAMES = ("cat", "dog", "bird")


def batch(cycle=2):
    images = torch.arange(5 * 3 * 8 * 8, dtype=torch.int64).reshape(5, 3, 8, 8).remainder(256).to(torch.uint8)
    return QueryBatch(cycle=cycle, pool_ids=np.array([40, 7, 13, 2, 99]),
                      sample_ids=["train/cat/a.png", "train/dog/b.png", "train/cat/c.png", "train/bird/d.png",
                                  "train/dog/e.png"],
                      scores=np.array([0.9, 0.8, np.nan, 0.5, 0.1]), predicted=np.array([0, 1, 2, -1, 1]),
                      probability=np.array([0.6, 0.55, 0.9, np.nan, 0.4]), images=images, class_names=NAMES)


def test_query_files_carry_ids_scores_predictions_and_images(tmp_path):
    paths = write_queries(tmp_path, batch())
    rows = list(csv.DictReader(open(paths["csv"])))
    assert [r["pool_index"] for r in rows] == ["40", "7", "13", "2", "99"]
    assert rows[0] == {"id": "train/cat/a.png", "pool_index": "40", "score": "0.9", "predicted_class": "cat",
                       "predicted_probability": "0.6000", "label": ""}
    assert rows[2]["score"] == "" and rows[3]["predicted_class"] == "" and rows[3]["predicted_probability"] == ""
    tasks = json.loads(paths["label_studio"].read_text())
    assert len(tasks) == 5 and tasks[0]["data"]["id"] == "train/cat/a.png" and tasks[0]["data"]["pool_index"] == 40
    prediction = tasks[0]["predictions"][0]
    assert prediction["score"] == 0.9 and prediction["result"][0]["value"] == {"choices": ["cat"]}
    assert prediction["result"][0]["from_name"] == "choice" and prediction["result"][0]["to_name"] == "image"
    assert tasks[2]["predictions"][0]["score"] is None and "predictions" not in tasks[3]
    image = tasks[1]["data"]["image"]
    assert image.startswith("/data/local-files/?d=queries/cycle_2/")
    png = tmp_path / image.split("?d=")[1]
    assert np.array_equal(np.asarray(Image.open(png)), batch().images[1].permute(1, 2, 0).numpy())
    sheet = Image.open(paths["contact_sheet"])
    assert sheet.size == contact_sheet(batch().images, [""] * 5).size


def test_contact_sheet_grid_size():
    images = torch.zeros(7, 1, 8, 8, dtype=torch.uint8)
    sheet = contact_sheet(images, ["a\nb"] * 7, columns=3, cell=20)
    assert sheet.size == (3 * 24, 3 * (20 + 28 + 4)) and sheet.mode == "RGB"


def fill(tmp_path, rows, name="answers.csv"):
    path = tmp_path / name
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "label"])
        writer.writerows(rows)
    return path


def answers(path, allow_missing=False, labeled=((2, 1),)):
    b = batch()
    ids, labels = (np.array([a for a, _ in labeled]), np.array([c for _, c in labeled])) if labeled else \
        (np.empty(0, np.int64), np.empty(0, np.int64))
    return read_answers(path, b.pool_ids, b.sample_ids, NAMES, ids, labels, allow_missing=allow_missing)


GOOD = [["train/cat/a.png", "cat"], ["train/dog/b.png", "1"], ["train/cat/c.png", " Cat "],
        ["train/bird/d.png", "dog"], ["train/dog/e.png", "BIRD"]]


def test_answers_by_name_index_and_folded_case(tmp_path):
    result = answers(fill(tmp_path, GOOD), labeled=())
    assert result.pool_ids.tolist() == [40, 7, 13, 2, 99] and result.labels.tolist() == [0, 1, 0, 1, 2]
    assert result.unanswered.size == 0


@pytest.mark.parametrize("rows, named", [
    (GOOD + [["train/dog/zzz.png", "dog"]], "'train/dog/zzz.png' is not among the queried ids"),
    (GOOD + [["train/cat/a.png", "cat"]], "'train/cat/a.png' is answered again"),
    ([["train/cat/a.png", "lion"]] + GOOD[1:], "'train/cat/a.png' has the unknown class 'lion'"),
    ([["train/cat/a.png", "3"]] + GOOD[1:], "'train/cat/a.png' has the unknown class '3'"),
    (GOOD[:4], "1 queried ids have no answer ('train/dog/e.png')"),
    (GOOD[:3] + [["train/bird/d.png", "bird"]] + GOOD[4:], "'train/bird/d.png' is already labeled 'dog'"),
])
def test_each_bad_answer_is_one_line_naming_the_id(tmp_path, rows, named):
    with pytest.raises(AnswersError) as error:
        answers(fill(tmp_path, rows))
    lines = str(error.value).split("\n")
    assert len(lines) == 1 and named in lines[0], lines


def test_all_problems_are_reported_at_once_and_missing_answers_may_return_to_the_pool(tmp_path):
    rows = [["train/cat/a.png", "lion"], ["nope", "cat"]] + GOOD[1:4]
    with pytest.raises(AnswersError) as error:
        answers(fill(tmp_path, rows))
    assert len(str(error.value).split("\n")) == 3  # unknown class, unknown id, missing answer
    result = answers(fill(tmp_path, GOOD[1:3]), allow_missing=True)
    assert result.pool_ids.tolist() == [7, 13] and sorted(result.unanswered.tolist()) == [2, 40, 99]


def test_label_studio_export_takes_the_last_annotation_that_was_not_cancelled(tmp_path):
    def task(sample, *choices, cancelled_last=False):
        annotations = [{"was_cancelled": False, "result": [{"from_name": "choice", "to_name": "image",
                                                            "type": "choices", "value": {"choices": [c]}}]}
                       for c in choices]
        if cancelled_last:
            annotations.append({"was_cancelled": True, "result": []})
        return {"id": 1, "data": {"image": "x", "id": sample}, "annotations": annotations}

    export = [task("train/cat/a.png", "dog", "cat"), task("train/dog/b.png", "dog", cancelled_last=True),
              task("train/cat/c.png", "cat"), task("train/bird/d.png", "dog"), task("train/dog/e.png", "bird")]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export))
    result = answers(path)
    assert result.labels.tolist() == [0, 1, 0, 1, 2]
    path.write_text("{not json")
    with pytest.raises(AnswersError, match="not valid JSON"):
        answers(path)


def test_unreadable_or_empty_answers_files(tmp_path):
    with pytest.raises(AnswersError, match="cannot read"):
        answers(tmp_path / "missing.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(AnswersError, match="is empty"):
        answers(tmp_path / "empty.csv")
    (tmp_path / "cols.csv").write_text("sample,class\nx,cat\n")
    with pytest.raises(AnswersError, match="needs the columns id and label"):
        answers(tmp_path / "cols.csv")


def test_class_names_and_stable_ids_flow_from_the_datasets(tmp_path):
    digits = ActiveDataModule("digits")
    digits.setup()
    assert digits.class_names == tuple(str(c) for c in range(10)) and digits.sample_ids([5, 17]) == ["5", "17"]
    for split in ("train", "test"):
        for name, value in (("dog", 200), ("cat", 30)):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((6, 6, 3), value + i, np.uint8)).save(folder / f"img{i}.png")
    images = ActiveDataModule("image_folder", root=str(tmp_path), dataset_options={"image_size": 6})
    images.setup()
    assert images.class_names == ("cat", "dog")
    assert images.sample_ids([0, 1, 2, 3]) == ["train/cat/img0.png", "train/cat/img1.png", "train/dog/img0.png",
                                               "train/dog/img1.png"]
    assert images.train_images_of([2])[0, 0, 0, 0] == 200
