"""The files people label between fits, and the import of their answers.

Queries of cycle k (``write_queries``), each file written atomically:

* ``queries/cycle_<k>.csv``: ``id,pool_index,score,predicted_class,predicted_probability,label``
  in the strategy's pick order; a person fills in ``label`` (a class name or index);
* ``queries/cycle_<k>.png``: a contact sheet of the queried images with the model's prediction;
* ``queries/cycle_<k>/<n>.png`` and ``queries/cycle_<k>_label_studio.json``: Label Studio tasks
  for its image-classification template (``<Image name="image" value="$image"/>`` and
  ``<Choices name="choice" toName="image">``), one per image, whose prediction carries the
  acquisition score so a labeler can sort by it. The images are referenced as Label Studio local
  files (``/data/local-files/?d=queries/cycle_<k>/<n>.png``: serve the run directory as the local
  files document root).

Answers (``read_answers``): the query CSV with its label column filled in (or any CSV with ``id``
and ``label`` columns), or Label Studio's JSON export (tasks with ``data`` and ``annotations``, each
annotation's ``result`` holding ``value.choices``). Everything is validated before anything is
returned; every problem is one line naming the id and the fix.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from al_lightning.data.pool import PoolError, write_atomic, write_json_atomic

QUERY_COLUMNS = ("id", "pool_index", "score", "predicted_class", "predicted_probability", "label")


class AnswersError(PoolError):
    """An answers file the pool cannot take; one line per problem, and the pool is unchanged."""


@dataclass
class QueryBatch:
    """What a person sees of one cycle's queries, in the strategy's pick order. ``predicted`` is
    -1 (and ``probability`` NaN) where the model has no prediction worth showing."""

    cycle: int
    pool_ids: np.ndarray
    sample_ids: list[str]
    scores: np.ndarray
    predicted: np.ndarray
    probability: np.ndarray
    images: torch.Tensor
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        n = len(self.pool_ids)
        sizes = {len(self.sample_ids), len(self.scores), len(self.predicted), len(self.probability), len(self.images)}
        if sizes != {n}:
            raise ValueError(f"a query batch of {n} ids needs as many sample ids, scores, predictions and images")

    def predicted_name(self, i: int) -> str:
        return "" if self.predicted[i] < 0 else self.class_names[int(self.predicted[i])]

    def caption(self, i: int) -> str:
        """Sample id, then the predicted class and its probability when there is one."""
        if self.predicted[i] < 0:
            return self.sample_ids[i]
        return f"{self.sample_ids[i]}\n{self.predicted_name(i)} ({self.probability[i]:.2f})"


def contact_sheet(images: torch.Tensor, captions: list[str], columns: int | None = None,
                  cell: int = 96) -> Image.Image:
    """A grid of uint8 ``(N, C, H, W)`` images, each upscaled (nearest) to ``cell`` pixels with
    its caption (up to two lines) below it."""
    count = len(images)
    columns = columns or max(1, min(count, math.ceil(math.sqrt(count))))
    rows = max(1, math.ceil(count / columns))
    font = ImageFont.load_default()
    line = 12
    caption_height = 2 * line + 4
    sheet = Image.new("RGB", (columns * (cell + 4), rows * (cell + caption_height + 4)), "white")
    draw = ImageDraw.Draw(sheet)
    for i in range(count):
        array = images[i].permute(1, 2, 0).cpu().numpy()
        picture = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).convert("RGB")
        picture = picture.resize((cell, cell), Image.NEAREST)
        x, y = (i % columns) * (cell + 4) + 2, (i // columns) * (cell + caption_height + 4) + 2
        sheet.paste(picture, (x, y))
        for k, text in enumerate(captions[i].split("\n")[:2]):
            draw.text((x, y + cell + 2 + k * line), _fit(draw, text, font, cell), fill="black", font=font)
    return sheet


def _fit(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> str:
    """``text`` shortened from the left (ids differ at their end) to fit ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength("..." + text, font=font) > width:
        text = text[1:]
    return "..." + text


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_queries(run_dir: Path, batch: QueryBatch) -> dict[str, Path]:
    """Write cycle ``batch.cycle``'s query files (see the module docstring); returns their paths."""
    folder = Path(run_dir) / "queries"
    k = batch.cycle
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(QUERY_COLUMNS)
    tasks = []
    for i, pool_id in enumerate(batch.pool_ids.tolist()):
        score = None if not np.isfinite(batch.scores[i]) else float(batch.scores[i])
        probability = None if not np.isfinite(batch.probability[i]) else float(batch.probability[i])
        writer.writerow([batch.sample_ids[i], pool_id, "" if score is None else f"{score:.6g}",
                         batch.predicted_name(i), "" if probability is None else f"{probability:.4f}", ""])
        image_path = folder / f"cycle_{k}" / f"{i:05d}_{pool_id}.png"
        array = batch.images[i].permute(1, 2, 0).cpu().numpy()
        picture = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
        write_atomic(image_path, lambda handle, p=picture: handle.write(_png(p)))
        task: dict[str, Any] = {"data": {"image": f"/data/local-files/?d={image_path.relative_to(run_dir).as_posix()}",
                                         "id": batch.sample_ids[i], "pool_index": pool_id}}
        if batch.predicted[i] >= 0:
            task["predictions"] = [{"model_version": f"cycle_{k}", "score": score, "result": [
                {"from_name": "choice", "to_name": "image", "type": "choices",
                 "value": {"choices": [batch.predicted_name(i)]}}]}]
        tasks.append(task)
    paths = {"csv": folder / f"cycle_{k}.csv", "contact_sheet": folder / f"cycle_{k}.png",
             "label_studio": folder / f"cycle_{k}_label_studio.json"}
    write_atomic(paths["csv"], lambda handle: handle.write(rows.getvalue().encode()))
    sheet = contact_sheet(batch.images, [batch.caption(i) for i in range(len(batch.pool_ids))])
    write_atomic(paths["contact_sheet"], lambda handle: handle.write(_png(sheet)))
    write_json_atomic(paths["label_studio"], tasks)
    return paths


@dataclass
class Answers:
    """Validated answers: labels of ``pool_ids``; ``unanswered`` queried ids go back to the pool."""

    pool_ids: np.ndarray
    labels: np.ndarray
    unanswered: np.ndarray


def _csv_answers(path: Path, text: str) -> list[tuple[str, str, str]]:
    """``(where, id, label)`` per row of a CSV with ``id`` and ``label`` columns."""
    reader = csv.DictReader(io.StringIO(text))
    columns = set(reader.fieldnames or ())
    if not {"id", "label"} <= columns:
        raise AnswersError(f"{path.name}: needs the columns id and label (found {sorted(columns) or 'none'}); "
                           f"fill the label column of the queries CSV")
    return [(f"{path.name} line {n}", (row["id"] or "").strip(), (row["label"] or "").strip())
            for n, row in enumerate(reader, start=2)]


def _label_studio_answers(path: Path, tasks: Any) -> list[tuple[str, str, str]]:
    """``(where, id, label)`` per task of a Label Studio JSON export: the last annotation that was
    not cancelled, its first ``choices`` value."""
    if not isinstance(tasks, list):
        raise AnswersError(f"{path.name}: a Label Studio export is a JSON list of tasks; export JSON, not JSON-MIN")
    answers = []
    for n, task in enumerate(tasks, start=1):
        data = task.get("data", {}) if isinstance(task, dict) else {}
        sample = str(data.get("id", data.get("pool_index", "")))
        label = ""
        for annotation in reversed(task.get("annotations", []) if isinstance(task, dict) else []):
            if annotation.get("was_cancelled"):
                continue
            choices = [r.get("value", {}).get("choices") for r in annotation.get("result", [])]
            choices = [c for c in choices if c]
            label = str(choices[0][0]) if choices else ""
            break
        answers.append((f"{path.name} task {n}", sample, label))
    return answers


def _class_index(label: str, class_names: tuple[str, ...]) -> int | None:
    if label in class_names:
        return class_names.index(label)
    folded = [i for i, name in enumerate(class_names) if name.strip().casefold() == label.casefold()]
    if len(folded) == 1:
        return folded[0]
    if label.isdigit() and int(label) < len(class_names):
        return int(label)
    return None


def read_answers(path: Path, queried_pool_ids: np.ndarray, queried_sample_ids: list[str],
                 class_names: tuple[str, ...], labeled_ids: np.ndarray, labeled_labels: np.ndarray,
                 allow_missing: bool = False) -> Answers:
    """Validate an answers file against the queries (see the module docstring)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise AnswersError(f"cannot read {path} ({err}); give the CSV or Label Studio JSON export") from None
    if not text.strip():
        raise AnswersError(f"{path} is empty; fill the label column of the queries CSV")
    stripped = text.lstrip()
    if stripped.startswith("[") or stripped.startswith("{"):
        try:
            rows = _label_studio_answers(path, json.loads(text))
        except json.JSONDecodeError as err:
            raise AnswersError(f"{path.name} is not valid JSON ({err}); export it again from Label Studio") from None
    else:
        rows = _csv_answers(path, text)
    position = {sample: i for i, sample in enumerate(queried_sample_ids)}
    existing = dict(zip(np.asarray(labeled_ids).tolist(), np.asarray(labeled_labels).tolist()))
    shown_names = ", ".join(class_names[:20]) + (", ..." if len(class_names) > 20 else "")
    errors: list[str] = []
    seen: dict[str, str] = {}
    ids, labels = [], []
    counts = Counter(sample for _, sample, label in rows if label)
    for where, sample, label in rows:
        if not label:
            continue
        if sample not in position:
            errors.append(f"{where}: id {sample!r} is not among the queried ids; remove the row or check the "
                          f"run directory")
            continue
        if counts[sample] > 1:
            if sample in seen:
                errors.append(f"{where}: id {sample!r} is answered again (first at {seen[sample]}); keep one row")
            seen.setdefault(sample, where)
            continue
        seen[sample] = where
        index = _class_index(label, class_names)
        if index is None:
            errors.append(f"{where}: id {sample!r} has the unknown class {label!r}; use one of {shown_names} "
                          f"(or an index 0..{len(class_names) - 1})")
            continue
        pool_id = int(queried_pool_ids[position[sample]])
        if pool_id in existing and existing[pool_id] != index:
            errors.append(f"{where}: id {sample!r} is already labeled {class_names[existing[pool_id]]!r}; "
                          f"remove the row")
            continue
        ids.append(pool_id)
        labels.append(index)
    unanswered = [s for s in queried_sample_ids if s not in seen]
    if unanswered and not allow_missing:
        shown = ", ".join(repr(s) for s in unanswered[:10]) + (", ..." if len(unanswered) > 10 else "")
        errors.append(f"{path.name}: {len(unanswered)} queried ids have no answer ({shown}); answer them, or pass "
                      f"--allow-missing to return them to the pool")
    if errors:
        raise AnswersError("\n".join(errors))
    return Answers(np.asarray(ids, dtype=np.int64), np.asarray(labels, dtype=np.int64),
                   np.asarray([int(queried_pool_ids[position[s]]) for s in unanswered], dtype=np.int64))
