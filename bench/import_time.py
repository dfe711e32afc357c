"""Import cost of lamin_lightning over lightning and lamindb alone (wall time of fresh interpreters, median of 7).

`import lamin_lightning` is lazy; the second row also touches `lamin_lightning.Checkpoint`, which imports every module
a fit needs. Run with `-X importtime` by hand for the per-module breakdown.

    python bench/import_time.py
"""
import os
import statistics
import subprocess
import sys
import tempfile
import time

CASES = {
    "lightning + lamindb": "import lightning.pytorch, lamindb",
    "+ import lamin_lightning": "import lightning.pytorch, lamindb, lamin_lightning",
    "+ lamin_lightning.Checkpoint": "import lightning.pytorch, lamindb, lamin_lightning; lamin_lightning.Checkpoint",
}


def wall(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=ENV)
    return time.perf_counter() - start


ENV = {**os.environ, "LAMIN_SETTINGS_DIR": tempfile.mkdtemp(), "PYTHONWARNINGS": "ignore"}
if __name__ == "__main__":
    wall(CASES["+ lamin_lightning.Checkpoint"])  # warm the file cache
    times = {name: [] for name in CASES}
    for _ in range(7):
        for name, code in CASES.items():  # interleaved, so drift hits every case alike
            times[name].append(wall(code))
    base = statistics.median(times["lightning + lamindb"])
    print(f"\n{'imports':<32}{'median s':>10}{'added ms':>10}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<32}{median:>10.2f}{(median - base) * 1000:>10.0f}")
