import csv

import numpy as np
import pytest
import yaml
from PIL import Image

from al_lightning.loop.figures import (class_histogram_figure, confusion_counts, confusion_matrix_figure,
                                       figure_to_array)
from al_lightning.report import (ReportError, expand_run_dirs, group_runs, load_run, markdown_table,
                                 normalised_aulc, plot_curves, report_main, summarise)

LABELS = [40, 60, 80]
# accuracy per seed; means, sample stds and AULCs below are worked out by hand
CURVES = {
    "ASSL": [[0.5, 0.6, 0.7], [0.6, 0.7, 0.9], [0.7, 0.8, 0.8]],
    "Random": [[0.4, 0.4, 0.4], [0.4, 0.5, 0.6], [0.4, 0.6, 0.8]],
}
EXPECTED = {
    "ASSL": {"mean": [0.6, 0.7, 0.8], "std": [0.1, 0.1, 0.1], "low": [0.5, 0.6, 0.7], "high": [0.7, 0.8, 0.9],
             # per run: (11 + 13) / 40 = 0.6, (13 + 16) / 40 = 0.725, (15 + 16) / 40 = 0.775
             "aulc": 0.7, "aulc_std": np.sqrt((0.1 ** 2 + 0.025 ** 2 + 0.075 ** 2) / 2)},
    "Random": {"mean": [0.4, 0.5, 0.6], "std": [0.0, 0.1, 0.2], "low": [0.4, 0.4, 0.4], "high": [0.4, 0.6, 0.8],
               # per run: 0.4, (9 + 11) / 40 = 0.5, (10 + 14) / 40 = 0.6
               "aulc": 0.5, "aulc_std": 0.1},
}


def write_run(run_dir, accuracy, strategy="ASSL", seed=0, labels=LABELS, budget=20):
    run_dir.mkdir(parents=True)
    with open(run_dir / "results.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["cycle", "n_labeled", "test_acc", "fit_seconds", "acquire_seconds", "class_coverage"])
        for cycle, (count, acc) in enumerate(zip(labels, accuracy)):
            writer.writerow([cycle, count, acc, 1.5, "nan" if cycle == len(labels) - 1 else 0.01, 1.0])
    config = {"seed_everything": seed, "trainer": {"max_epochs": 1},
              "model": {"class_path": "al_lightning.methods.FixMatch", "init_args": {"lr": 0.03}},
              "data": {"dataset": "digits"},
              "loop": {"rounds": len(labels) - 1, "budget": budget, "initial_size": labels[0], "seed": seed,
                       "strategy": {"class_path": f"al_lightning.strategies.{strategy}", "init_args": {}}}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    return run_dir


@pytest.fixture
def runs(tmp_path):
    """runs/assl/version_{0,1,2} and runs/random/version_{0,1,2}, one seed each."""
    for strategy, curves in CURVES.items():
        for seed, accuracy in enumerate(curves):
            write_run(tmp_path / "runs" / strategy.lower() / f"version_{seed}", accuracy, strategy, seed)
    return tmp_path / "runs"


def all_runs(root):
    return [load_run(d) for d in expand_run_dirs([root / "assl", root / "random"])]


def test_grouping_by_strategy_gives_hand_computed_statistics(runs):
    summaries = summarise(group_runs(all_runs(runs), ["loop.strategy"]))
    assert [s.name for s in summaries] == ["ASSL", "Random"]
    for summary in summaries:
        expected = EXPECTED[summary.name]
        assert summary.n_runs == 3 and summary.labels.tolist() == LABELS and summary.dropped_labels == ()
        for field in ("mean", "std", "low", "high"):
            assert getattr(summary, field) == pytest.approx(expected[field], abs=1e-12), field
        assert summary.aulc_mean == pytest.approx(expected["aulc"])
        assert summary.aulc_std == pytest.approx(expected["aulc_std"])


def test_group_names_from_other_keys(runs):
    loaded = all_runs(runs)
    assert list(group_runs(loaded, ["model"])) == ["FixMatch"]
    assert list(group_runs(loaded, ["loop.strategy", "loop.budget"])) == ["ASSL, loop.budget=20",
                                                                         "Random, loop.budget=20"]
    assert len(group_runs(loaded, ["seed_everything"])) == 3


def test_a_single_run_has_zero_std_and_aulc_of_its_curve(tmp_path):
    run = load_run(write_run(tmp_path / "v", [0.5, 0.6, 0.7]))
    (summary,) = summarise({"one": [run]})
    assert summary.std.tolist() == [0.0, 0.0, 0.0] and summary.aulc_std == 0.0
    assert summary.aulc_mean == pytest.approx(0.6)
    assert normalised_aulc(np.array([100]), np.array([0.9])) == pytest.approx(0.9)


def test_different_label_schedules_use_the_shared_counts_and_say_so(tmp_path):
    full = load_run(write_run(tmp_path / "a", [0.5, 0.6, 0.7]))
    short = load_run(write_run(tmp_path / "b", [0.7, 0.8], labels=[40, 60]))
    (summary,) = summarise({"ASSL": [full, short]})
    assert summary.labels.tolist() == [40, 60] and summary.dropped_labels == (80,)
    assert summary.mean == pytest.approx([0.6, 0.7])
    # per run over 40..60: 0.55 and 0.75
    assert summary.aulc_mean == pytest.approx(0.65)
    table = markdown_table([summary])
    assert "| 80 |" not in table
    assert "label schedules differ" in table and "left out: 80" in table
    apart = load_run(write_run(tmp_path / "c", [0.9], labels=[500]))
    with pytest.raises(ReportError, match="share no label count"):
        summarise({"ASSL": [full, apart]})


def test_a_folder_of_runs_expands_to_its_version_children_in_order(tmp_path):
    root = tmp_path / "assl_digits"
    for version in (10, 2, 0):
        write_run(root / f"version_{version}", [0.5, 0.6, 0.7])
    (root / "version_3").mkdir()  # a run that has not written results yet
    (root / "report").mkdir()
    expanded = expand_run_dirs([root, root / "version_2"])
    assert [d.name for d in expanded] == ["version_0", "version_2", "version_10"]
    assert expand_run_dirs([root / "version_10"]) == [root / "version_10"]


def test_report_main_writes_png_and_markdown_beside_the_runs(runs, capsys):
    assert report_main([str(runs / "assl"), str(runs / "random"), "--title", "digits"]) == 0
    out_dir = runs / "report"
    png, markdown = out_dir / "report.png", out_dir / "report.md"
    printed = capsys.readouterr().out
    assert str(png) in printed and str(markdown) in printed and "| AULC |" in printed
    text = markdown.read_text()
    assert "![digits](report.png)" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and line.split("|")[1].strip().isdigit()]
    assert [int(r.split("|")[1]) for r in rows] == LABELS
    assert rows[0] == "| 40 | 0.6000 ± 0.1000 (3) | 0.4000 ± 0.0000 (3) |"
    assert rows[2] == "| 80 | 0.8000 ± 0.1000 (3) | 0.6000 ± 0.2000 (3) |"
    assert "| AULC | 0.7000 ± 0.0901 (3) | 0.5000 ± 0.1000 (3) |" in text
    assert "band spans min to max over the runs" in text
    assert "../assl/version_0" in text


def test_report_main_honours_out_and_group_by(runs, tmp_path, capsys):
    out_dir = tmp_path / "elsewhere"
    assert report_main([str(runs / "assl"), str(runs / "random"), "--out", str(out_dir), "--group-by", "model"]) == 0
    assert "| labels | FixMatch |" in (out_dir / "report.md").read_text()
    assert "(6)" in capsys.readouterr().out


def test_the_png_has_a_fixed_size_and_the_group_colours(runs, tmp_path):
    summaries = summarise(group_runs(all_runs(runs), ["loop.strategy"]))
    path = plot_curves(summaries, tmp_path / "curves.png")
    with Image.open(path) as image:
        assert image.size == (800, 500)
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    colours = {tuple(p) for p in pixels}
    assert len(colours) > 20
    for line_colour in ((0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)):  # tab10's first two: one line per group
        assert line_colour in colours
    assert plot_curves(summaries, tmp_path / "again.png").read_bytes() == path.read_bytes()


def write_results(run_dir, text):
    run_dir.mkdir(parents=True)
    (run_dir / "results.csv").write_text(text)
    return run_dir


@pytest.mark.parametrize("text, message", [
    ("cycle,n_labeled,fit_seconds\n0,40,1.0\n", "no column test_acc"),
    ("", "empty"),
    ("cycle,n_labeled,test_acc\n", "no rows"),
    ("cycle,n_labeled,test_acc\n0,40,high\n", "line 2: test_acc is 'high'"),
    ("cycle,n_labeled,test_acc\n0,40,0.5\n1,40,0.6\n", "n_labeled must grow"),
])
def test_bad_results_give_one_line_and_exit_code_2(tmp_path, capsys, text, message):
    run_dir = write_results(tmp_path / "version_0", text)
    assert report_main([str(run_dir)]) == 2
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1 and "Traceback" not in error
    assert str(run_dir / "results.csv") in error and message in error


def test_missing_inputs_give_one_line_and_exit_code_2(tmp_path, capsys):
    with pytest.raises(ReportError, match="results.csv: missing"):
        load_run(tmp_path)
    (tmp_path / "empty_runs").mkdir()
    write_run(tmp_path / "ok", [0.5, 0.6, 0.7])
    cases = [([str(tmp_path / "nowhere")], "no such directory"),
             ([str(tmp_path / "empty_runs")], "no results.csv in it nor in a version_* folder"),
             ([str(tmp_path / "ok"), "--group-by", "loop.stratgy"], "no key loop.stratgy")]
    for argv, message in cases:
        assert report_main(argv) == 2
        error = capsys.readouterr().err
        assert len(error.strip().splitlines()) == 1 and message in error, error


def test_confusion_matrix_figure_counts_and_accuracy():
    targets = np.array([0, 0, 1, 1, 2, 2, 2, 2])
    predictions = np.array([0, 1, 1, 1, 2, 0, 2, 2])
    assert confusion_counts(targets, predictions, 3).tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 3]]
    figure = confusion_matrix_figure(targets, predictions, ["zero", "one", "two"])
    axes = figure.axes[0]
    assert axes.get_title() == "accuracy 0.7500 (6/8)"
    assert sorted(t.get_text() for t in axes.texts) == ["1", "1", "1", "2", "3"]
    assert [t.get_text() for t in axes.get_xticklabels()] == ["zero", "one", "two"]
    array = figure_to_array(figure)
    assert array.shape == (400, 500, 3) and array.dtype == np.uint8
    assert len(np.unique(array.reshape(-1, 3), axis=0)) > 10


def test_confusion_matrix_of_many_classes_drops_cell_numbers_and_thins_names():
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 100, size=2000)
    figure = confusion_matrix_figure(targets, targets, [f"class_{i}" for i in range(100)])
    axes = figure.axes[0]
    assert len(axes.texts) == 0 and axes.get_title() == "accuracy 1.0000 (2000/2000)"
    assert len(axes.get_xticklabels()) <= 30
    assert figure_to_array(figure).shape == (1200, 1300, 3)


def test_class_histogram_bar_heights_are_the_counts():
    counts = np.array([3, 0, 5, 2])
    figure = class_histogram_figure(counts, ["a", "b", "c", "d"], "queried at cycle 1")
    axes = figure.axes[0]
    assert [p.get_height() for p in axes.patches] == [3, 0, 5, 2]
    assert axes.get_title() == "queried at cycle 1"
    assert figure_to_array(figure).ndim == 3
