"""``make bench``: every benchmark, one after the other. Not part of the test suite."""

import runpy
import sys
from pathlib import Path

HERE = Path(__file__).parent
BENCHMARKS = ["kernels.py", "scoring_overhead.py", "throughput.py", "fixmatch_vs_supervised.py"]

if __name__ == "__main__":
    for name in BENCHMARKS:
        print(f"\n===== {name}", flush=True)
        sys.argv = [str(HERE / name)]
        runpy.run_path(str(HERE / name), run_name="__main__")
