"""What a user reads on the console of a run: one line per cycle and the final table, Lightning's
model summary and device lines once per run however many fits it makes, and no advertisement."""

import os
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from test_resume import tiny_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_a_three_fit_run_prints_each_banner_once_and_one_line_per_cycle(tmp_path):
    config = tiny_config(tmp_path, "console")
    executable = Path(sys.executable).with_name("al-lightning")
    done = subprocess.run([str(executable), "fit", "--config", str(config), "--trainer.enable_progress_bar", "false"],
                          cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    text = done.stdout + done.stderr
    assert text.count("Trainable params") == 1  # the model summary of the first fit only
    assert text.count("GPU available:") == 1
    assert "Tip:" not in text and "litlogger" not in text
    cycle_lines = re.findall(r"^cycle (\d+): (\d+) labels, test acc", text, flags=re.MULTILINE)
    assert cycle_lines == [("0", "20"), ("1", "30"), ("2", "40")]
    table = text[text.index("cycle  labels  test_acc"):].splitlines()
    assert [row.split()[:2] for row in table[1:4]] == [["0", "20"], ["1", "30"], ["2", "40"]]
    assert f"results, pool and selections: {tmp_path / 'console' / 'version_0'}" in text
