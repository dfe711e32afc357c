"""Run every notebook in nbs/ (slow cells too) as a pytest test, in this process."""
from pathlib import Path

import pytest
from nbdev.test import test_nb as run_notebook

NBS = Path(__file__).parent.parent / "nbs"
NOTEBOOKS = sorted(p for p in NBS.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts and not p.name.startswith("_"))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: str(p.relative_to(NBS)))
def test_notebook(notebook: Path) -> None:
    ok, _ = run_notebook(notebook, skip_flags=["notest"], force_flags=["slow"], basepath=NBS.parent)
    assert ok, f"{notebook.name} failed; its traceback is printed above"
