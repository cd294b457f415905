"""``al-lightning report RUN_DIR [RUN_DIR ...]``: the learning curves of runs, grouped by config keys
(the acquisition strategy by default), as one PNG and one markdown table.

One run's curve moves by several points with the training seed alone, so strategies are compared on
the mean over runs with their spread, and on one number per run: the normalised area under the
learning curve (AULC), which does not hinge on a single label count.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

from al_lightning.errors import UserError

RESULTS_FILE = "results.csv"
CONFIG_FILE = "config.yaml"
CURVE_COLUMNS = ("n_labeled", "test_acc")
DEFAULT_GROUP_BY = ("loop.strategy",)
DEFAULT_TITLE = "Test accuracy by number of labels"
FIGURE_SIZE_INCHES = (8.0, 5.0)
FIGURE_DPI = 100
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
BAND_NOTE = "line: mean; band: min to max over runs"
MISSING_CELL = "-"


class ReportError(UserError, ValueError):
    """A run directory or option the report cannot use; the message is one line with the fix."""


@dataclass(frozen=True)
class RunCurve:
    """One run's test accuracy by label count, with the config that produced it."""

    run_dir: Path
    labels: np.ndarray
    accuracy: np.ndarray
    config: dict[str, Any]


@dataclass(frozen=True)
class GroupSummary:
    """Statistics over the runs of a group at the label counts all of them reached."""

    name: str
    run_dirs: tuple[Path, ...]
    labels: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    low: np.ndarray
    high: np.ndarray
    aulc_mean: float
    aulc_std: float
    dropped_labels: tuple[int, ...]

    @property
    def n_runs(self) -> int:
        return len(self.run_dirs)


# ------------------------------------------------------------------ loading
def load_run(run_dir: str | Path) -> RunCurve:
    """Read ``results.csv`` (and ``config.yaml`` when there) of one run directory."""
    run_dir = Path(run_dir)
    path = run_dir / RESULTS_FILE
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            rows = list(reader)
    except FileNotFoundError:
        raise ReportError(f"{path}: missing; pass a run directory of al-lightning fit "
                          f"(it writes {RESULTS_FILE} after every cycle)") from None
    except OSError as err:
        raise ReportError(f"{path}: cannot read it ({err.strerror})") from None
    if not columns:
        raise ReportError(f"{path}: empty; the run has not finished its first cycle: wait for it or leave it out")
    missing = [c for c in CURVE_COLUMNS if c not in columns]
    if missing:
        raise ReportError(f"{path}: no column {', '.join(missing)} (has {', '.join(columns)}); "
                          f"pass the {RESULTS_FILE} al-lightning fit writes")
    if not rows:
        raise ReportError(f"{path}: no rows; the run has not finished its first cycle: wait for it or leave it out")
    labels = np.array([_number(row, "n_labeled", path, line) for line, row in enumerate(rows, start=2)])
    accuracy = np.array([_number(row, "test_acc", path, line) for line, row in enumerate(rows, start=2)])
    if np.any(np.diff(labels) <= 0):
        raise ReportError(f"{path}: n_labeled must grow from row to row (got {labels.astype(int).tolist()}); "
                          f"a learning curve needs one row per label count")
    return RunCurve(run_dir, labels.astype(np.int64), accuracy, _load_config(run_dir / CONFIG_FILE))


def _number(row: dict[str, str], column: str, path: Path, line: int) -> float:
    text = row.get(column) or ""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not np.isfinite(value):
        raise ReportError(f"{path}: line {line}: {column} is {text!r}, not a number; fix or remove that row")
    return value


def _load_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ReportError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from None
    return config if isinstance(config, dict) else {}


def expand_run_dirs(paths: Sequence[str | Path]) -> list[Path]:
    """Run directories as given, a directory without results.csv standing for its ``version_*`` runs."""
    runs: list[Path] = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise ReportError(f"{path}: no such directory; pass a run directory such as runs/assl_digits/version_0")
        if (path / RESULTS_FILE).is_file():
            runs.append(path)
            continue
        children = sorted((c for c in path.glob("version_*") if (c / RESULTS_FILE).is_file()), key=_version_key)
        if not children:
            raise ReportError(f"{path}: no {RESULTS_FILE} in it nor in a version_* folder under it; pass a run "
                              f"directory (e.g. runs/assl_digits/version_0) or the folder holding them")
        runs.extend(children)
    unique: dict[Path, Path] = {}
    for run in runs:
        unique.setdefault(run.resolve(), run)
    return list(unique.values())


def _version_key(path: Path) -> tuple[int, str]:
    suffix = path.name.removeprefix("version_")
    return (int(suffix), "") if suffix.isdigit() else (sys.maxsize, suffix)


# ----------------------------------------------------------------- grouping
def group_name(run: RunCurve, keys: Sequence[str]) -> str:
    """The label of a run's group: the values of ``keys`` in its config, joined with ", "."""
    return ", ".join(_describe_key(run, key) for key in keys)


def _describe_key(run: RunCurve, key: str) -> str:
    value: Any = run.config
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise ReportError(f"{run.run_dir / CONFIG_FILE}: no key {key} to group by; pass --group-by with keys "
                              f"the config has (e.g. loop.strategy, model, loop.budget)")
        value = value[part]
    if isinstance(value, dict) and "class_path" in value:
        return _describe_value(value)
    return f"{key}={_describe_value(value)}"


def _describe_value(value: Any) -> str:
    if isinstance(value, dict) and "class_path" in value:
        return str(value["class_path"]).rsplit(".", 1)[-1]
    if isinstance(value, list):
        return "+".join(_describe_value(v) for v in value) or "[]"
    return str(value)


def group_runs(runs: Sequence[RunCurve], keys: Sequence[str]) -> dict[str, list[RunCurve]]:
    """Runs by group name, groups in the order their first run was given."""
    groups: dict[str, list[RunCurve]] = {}
    for run in runs:
        groups.setdefault(group_name(run, keys), []).append(run)
    return groups


# ------------------------------------------------------------------- numbers
def normalised_aulc(labels: np.ndarray, accuracy: np.ndarray) -> float:
    """Trapezoid area under accuracy over label counts, divided by the label range (a mean accuracy)."""
    if len(labels) == 1:
        return float(accuracy[0])
    area = float(np.sum(np.diff(labels) * (accuracy[1:] + accuracy[:-1]) / 2.0))
    return area / float(labels[-1] - labels[0])


def _spread(values: np.ndarray, axis: int = 0) -> np.ndarray:
    if values.shape[axis] < 2:
        return np.zeros(np.delete(values.shape, axis))
    return values.std(axis=axis, ddof=1)


def summarise(groups: dict[str, Sequence[RunCurve]]) -> list[GroupSummary]:
    """Mean, std, min, max and AULC per group over the label counts all its runs share."""
    summaries = []
    for name, runs in groups.items():
        reached = sorted(set().union(*(r.labels.tolist() for r in runs)))
        shared = sorted(set.intersection(*(set(r.labels.tolist()) for r in runs)))
        if not shared:
            raise ReportError(f"group {name}: its runs share no label count "
                              f"({', '.join(str(r.run_dir) for r in runs)}); compare runs with the same "
                              f"loop.initial_size and loop.budget, or split them with --group-by")
        labels = np.array(shared, dtype=np.int64)
        table = np.stack([run.accuracy[np.isin(run.labels, labels)] for run in runs])
        aulc = np.array([normalised_aulc(labels, row) for row in table])
        summaries.append(GroupSummary(
            name=name, run_dirs=tuple(r.run_dir for r in runs), labels=labels, mean=table.mean(axis=0),
            std=_spread(table), low=table.min(axis=0), high=table.max(axis=0), aulc_mean=float(aulc.mean()),
            aulc_std=float(_spread(aulc)), dropped_labels=tuple(c for c in reached if c not in shared)))
    return summaries


# ------------------------------------------------------------------- outputs
def plot_curves(summaries: Sequence[GroupSummary], path: str | Path, title: str = DEFAULT_TITLE) -> Path:
    """Mean accuracy per group against label count, with the min..max band, as a fixed-size PNG."""
    figure = Figure(figsize=FIGURE_SIZE_INCHES, dpi=FIGURE_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for index, (summary, colour) in enumerate(zip(summaries, _colours(len(summaries)))):
        axes.fill_between(summary.labels, summary.low, summary.high, color=colour, alpha=0.18, linewidth=0)
        axes.plot(summary.labels, summary.mean, color=colour, marker=MARKERS[index % len(MARKERS)],
                  markersize=5, linewidth=1.8, label=f"{summary.name} (n={summary.n_runs})")
    every_count = sorted(set().union(*(s.labels.tolist() for s in summaries)))
    if len(every_count) <= 12:
        axes.set_xticks(every_count)
    axes.set_xlabel("labeled samples")
    axes.set_ylabel("test accuracy")
    axes.set_title(title)
    axes.grid(True, alpha=0.35)
    axes.legend(title=BAND_NOTE, loc="lower right", fontsize="small", title_fontsize="small")
    path = Path(path)
    figure.savefig(path, dpi=FIGURE_DPI, metadata={"Software": None})
    return path


def _colours(count: int) -> list[str]:
    palette = colormaps["tab10" if count <= 10 else "tab20"]
    return [to_hex(palette(i % palette.N)) for i in range(count)]


def markdown_table(summaries: Sequence[GroupSummary]) -> str:
    """Label counts as rows, one "mean ± std (n)" column per group, AULC last, then what the numbers are."""
    header = "| labels | " + " | ".join(_cell_text(s.name) for s in summaries) + " |"
    rule = "|---:|" + "---:|" * len(summaries)
    lines = [header, rule]
    for count in sorted(set().union(*(s.labels.tolist() for s in summaries))):
        cells = []
        for summary in summaries:
            hit = np.flatnonzero(summary.labels == count)
            cells.append(_stat(summary.mean[hit[0]], summary.std[hit[0]], summary.n_runs) if hit.size
                         else MISSING_CELL)
        lines.append(f"| {count} | " + " | ".join(cells) + " |")
    lines.append("| AULC | " + " | ".join(_stat(s.aulc_mean, s.aulc_std, s.n_runs) for s in summaries) + " |")
    lines.append("")
    lines.append("Test accuracy, mean ± std over the n runs of a group (sample std, 0 for a single run); "
                 "the figure's shaded band spans min to max over the runs. AULC: trapezoid area under each "
                 "run's accuracy over label counts, divided by the label range, then mean ± std over runs.")
    for summary in summaries:
        if summary.dropped_labels:
            lines.append(f"\n{summary.name}: its runs' label schedules differ; only the label counts all "
                         f"{summary.n_runs} runs share are used (left out: "
                         f"{', '.join(map(str, summary.dropped_labels))}).")
    return "\n".join(lines)


def _stat(mean: float, std: float, n: int) -> str:
    return f"{mean:.4f} ± {std:.4f} ({n})"


def _cell_text(text: str) -> str:
    return text.replace("|", "\\|")


def write_report(summaries: Sequence[GroupSummary], out_dir: Path, title: str) -> tuple[Path, Path, str]:
    """``report.png`` and ``report.md`` (which embeds the PNG and lists each group's runs)."""
    table = markdown_table(summaries)
    runs = [f"- {s.name}: " + ", ".join(_relative(d, out_dir) for d in s.run_dirs) for s in summaries]
    markdown = out_dir / "report.md"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        png = plot_curves(summaries, out_dir / "report.png", title)
        markdown.write_text(f"# {title}\n\n![{title}]({png.name})\n\n{table}\n\n## Runs\n\n"
                            + "\n".join(runs) + "\n")
    except OSError as err:
        raise ReportError(f"{out_dir}: cannot write the report there ({err.strerror}); pass --out with a "
                          f"writable folder") from None
    return png, markdown, table


def _relative(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()


def default_out_dir(run_dirs: Sequence[Path]) -> Path:
    """A ``report`` folder in the deepest folder holding every run directory."""
    return Path(os.path.commonpath([str(run.resolve().parent) for run in run_dirs])) / "report"


# ----------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="al-lightning report",
        description="Learning curves of runs, grouped by config keys: report.png and report.md "
                    "(mean ± std per label count and AULC per group).")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="a run directory holding results.csv, or a folder of version_* runs")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: a report folder beside the runs)")
    parser.add_argument("--group-by", nargs="+", default=list(DEFAULT_GROUP_BY), metavar="KEY",
                        help="dotted config keys naming a run's group (default: loop.strategy)")
    parser.add_argument("--title", default=DEFAULT_TITLE, help="title of the figure and the markdown")
    return parser


def report_main(argv: list[str]) -> int:
    """Entry point of ``al-lightning report``; 0 on success, 2 with one line on stderr for bad input."""
    args = build_parser().parse_args(argv)
    try:
        run_dirs = expand_run_dirs(args.run_dirs)
        groups = group_runs([load_run(d) for d in run_dirs], args.group_by)
        summaries = summarise(groups)
        png, markdown, table = write_report(summaries, args.out or default_out_dir(run_dirs), args.title)
    except ReportError as err:
        print(f"al-lightning report: {err}", file=sys.stderr)
        return 2
    print(f"{png}\n{markdown}\n\n{table}")
    return 0
