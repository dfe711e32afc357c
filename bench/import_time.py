"""Import cost of lamin_lightning over lightning and lamindb alone (wall time of fresh interpreters, median of 7).

`import lamin_lightning` is lazy; the last row also touches `lamin_lightning.Checkpoint`, which imports every module a
fit needs. Wall times of whole interpreters vary by ±150 ms here, so the script also prints what `-X importtime` charges
to lamin_lightning's own modules (cumulative, with everything they import that lightning and lamindb did not).

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
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", CASES["+ lamin_lightning.Checkpoint"]], env=ENV,
                         capture_output=True, text=True, check=True).stderr
    charged = 0
    for line in out.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = line.split("|")
            if name.startswith(" lamin_lightning") or name.strip().startswith("__editable___lamin_lightning"):
                charged += int(cumulative)  # top level only: nested names are indented
    base = statistics.median(times["lightning + lamindb"])
    print(f"\n{'imports':<32}{'median s':>10}{'added ms':>10}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<32}{median:>10.2f}{(median - base) * 1000:>10.0f}")
    print(f"-X importtime charges lamin_lightning (all modules, Checkpoint included): {charged / 1000:.1f} ms")
