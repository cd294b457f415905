"""People in the labeling loop, walked by a scripted labeler: the run stops at the queries, bad
answers files are rejected with one line each and change nothing, good answers are imported, the run
resumes and finishes, ending where the simulated oracle ends."""

import csv
import json
import sys
from pathlib import Path

import pytest

from al_lightning.cli import main
from al_lightning.data import ActiveDataModule

sys.path.insert(0, str(Path(__file__).parent))
from test_resume import outcome, tiny_config  # noqa: E402


@pytest.fixture(scope="module")
def truth():
    digits = ActiveDataModule("digits")
    digits.setup()
    return digits.ground_truth(range(digits.pool.size)), digits.class_names


def answer(queries: Path, out: Path, truth, edit=None) -> Path:
    """The queries CSV with its label column filled with true class names (``edit`` spoils it)."""
    labels, names = truth
    rows = list(csv.DictReader(open(queries)))
    for row in rows:
        row["label"] = names[labels[int(row["pool_index"])]]
    if edit is not None:
        rows = edit(rows)
    with open(out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["id", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return out


def label_fails(run: Path, answers: Path, capsys) -> str:
    before = (run / "state.json").read_bytes(), (run / "pool.json").read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        main(["label", str(run), str(answers)])
    assert exit_info.value.code == 2
    assert ((run / "state.json").read_bytes(), (run / "pool.json").read_bytes()) == before
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err


BAD_ANSWERS = {
    "unknown id": (lambda rows: rows[:-1] + [{**rows[-1], "id": "99999"}], "99999"),
    "unknown class": (lambda rows: [{**rows[0], "label": "seven"}] + rows[1:], "seven"),
    "duplicate": (lambda rows: rows + [rows[0]], None),
    "missing answer": (lambda rows: rows[1:], None),
    "class index out of range": (lambda rows: [{**rows[0], "label": "10"}] + rows[1:], "10"),
}


def test_scripted_labeler_walks_the_people_loop_to_the_simulated_oracles_end(tmp_path, truth, capsys):
    people = tiny_config(tmp_path, "people", oracle={"class_path": "al_lightning.loop.FileOracle"}, rounds=1)
    run = tmp_path / "people" / "version_0"
    main(["fit", "--config", str(people)])
    out = capsys.readouterr().out
    assert "20 images to label for cycle 0" in out and f"al-lightning label {run}" in out
    for cycle in (0, 1):
        state = json.loads((run / "state.json").read_text())
        assert state["phase"] == "label" and state["pending"]["cycle"] == cycle
        queries = run / "queries" / f"cycle_{cycle}.csv"
        assert len(list(csv.DictReader(open(queries)))) == (20 if cycle == 0 else 10)
        for kind, (edit, named) in BAD_ANSWERS.items():
            err = label_fails(run, answer(queries, tmp_path / f"bad_{cycle}.csv", truth, edit), capsys)
            assert err.startswith("error:"), kind
            first = list(csv.DictReader(open(queries)))[0]["id"]
            assert (named or first) in err, f"{kind}: {err}"
        main(["label", str(run), str(answer(queries, tmp_path / f"answers_{cycle}.csv", truth))])
        assert "continue with: al-lightning fit --resume" in capsys.readouterr().out
        main(["fit", "--resume", str(run)])
    assert json.loads((run / "state.json").read_text())["phase"] == "done"

    simulated = tiny_config(tmp_path, "simulated", rounds=1)
    main(["fit", "--config", str(simulated)])
    assert outcome(run) == outcome(tmp_path / "simulated" / "version_0")


def test_label_refuses_a_run_that_is_not_waiting(tmp_path, capsys):
    config = tiny_config(tmp_path, "plain", rounds=0)
    main(["fit", "--config", str(config)])
    run = tmp_path / "plain" / "version_0"
    answers = tmp_path / "a.csv"
    answers.write_text("id,label\n1,3\n")
    err = label_fails(run, answers, capsys)
    assert "is not waiting for labels (phase done" in err
