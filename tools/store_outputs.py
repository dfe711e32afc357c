"""Run notebooks, each in a fresh process with a throwaway instance, and store their outputs for the docs site.

nbdev sites show the outputs stored in the notebooks. Outputs are made deterministic: temporary paths, random entry
ids and journal timestamps are masked, and stderr (Lightning's banners) is dropped. `python tools/store_outputs.py
[NOTEBOOK ...]`; with no argument, every notebook in nbs/.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

NBS = Path(__file__).resolve().parent.parent / "nbs"
MASKS = [
    (re.compile(r"/tmp/[A-Za-z0-9_.-]+"), "<tmp>"),  # mkdtemp folders
    (re.compile(r"\b\d{8}-\d{6}-[0-9a-f]{8}\b"), "<journal>"),  # journal file names
    (re.compile(r"\b(?=[0-9]*[a-f])[0-9a-f]{16}(?=0000\b|\b)"), "<entry id>"),  # random entry ids, alone or in uids
    (re.compile(r"\b(?!(?:[A-Z][a-z]+)+\b)(?=[0-9a-z]*[A-Z])(?=[0-9A-Z]*[a-z])[A-Za-z0-9]{16}\b"), "<run uid>"),  # run uids (mixed case, not a CamelCase word)
]


def mask(text: str) -> str:
    for pattern, replacement in MASKS:
        text = pattern.sub(replacement, text)
    return text


def _masked(value):
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, list):
        return [_masked(v) for v in value]
    return value


def run(path: Path) -> None:
    "Execute `path` here (a fresh process) and write it back with masked outputs."
    settings = tempfile.mkdtemp(prefix="lamin-lightning-docs-")
    os.environ["LAMIN_SETTINGS_DIR"] = os.environ["LAMIN_LIGHTNING_TEST"] = settings
    os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from execnb.shell import CaptureShell
    from fastcore.nbio import read_nb, write_nb

    from lamin_lightning.testing import NetworkGuard

    guard = NetworkGuard().install()
    nb = read_nb(path)
    cwd = os.getcwd()
    os.chdir(path.parent)
    try:
        CaptureShell(path).run_all(nb, exc_stop=True)
    finally:
        os.chdir(cwd)
        shutil.rmtree(settings, ignore_errors=True)  # the throwaway instance and settings of this run
    assert not guard.attempts, guard.attempts
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        outputs = [o for o in cell.get("outputs", []) if not (o.get("output_type") == "stream" and o.get("name") == "stderr")]
        for output in outputs:
            for field in ("text",):
                if field in output:
                    output[field] = _masked(output[field])
            for kind, value in output.get("data", {}).items():
                if not kind.startswith("image/"):  # base64 images hold strings that look like uids
                    output["data"][kind] = _masked(value)
        cell["outputs"] = outputs
    write_nb(nb, path)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        run(Path(sys.argv[2]))
        sys.exit(0)
    names = sys.argv[1:] or sorted(str(p) for p in NBS.rglob("*.ipynb") if not p.name.startswith("_"))
    failed = [n for n in names if subprocess.run([sys.executable, __file__, "--one", n]).returncode != 0]
    sys.exit(f"failed: {failed}" if failed else 0)
