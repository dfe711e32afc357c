"""Test isolation for notebooks and tests alike: a throwaway LaminDB settings folder and no network."""
import os
import shutil
import tempfile

# Everything the suite writes to the temporary folder goes into one folder, deleted when the session ends: the test
# instance (its storage holds every checkpoint of the suite), the notebooks' `mkdtemp()` folders, pytest's `tmp_path`
# and whatever subprocesses make (they inherit TMPDIR). Readable by others: the PostgreSQL server's user enters it.
_root = tempfile.mkdtemp(prefix="lamin-lightning-tests-")
os.chmod(_root, 0o755)
os.environ["TMPDIR"] = tempfile.tempdir = _root
# Before anything imports lamindb: lamindb_setup reads LAMIN_SETTINGS_DIR once, at import.
_settings = os.path.join(_root, "settings")
os.mkdir(_settings)
os.environ["LAMIN_SETTINGS_DIR"] = os.environ["LAMIN_LIGHTNING_TEST"] = _settings
os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
# execnb runs notebook cells from a thread that has seen an event loop; Django then refuses synchronous queries
# unless told that this (single-threaded) use is safe, as in Jupyter.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

import pytest  # noqa: E402

from lamin_lightning.testing import NetworkGuard  # noqa: E402  (does not import lamindb)

GUARD = NetworkGuard()


def pytest_configure(config: pytest.Config) -> None:
    GUARD.install()


def pytest_unconfigure(config: pytest.Config) -> None:
    GUARD.uninstall()
    shutil.rmtree(_root, ignore_errors=True)


@pytest.fixture(autouse=True)
def no_network_calls():
    "Every test and notebook: a non-loopback connection attempt fails the test."
    before = len(GUARD.attempts)
    yield
    assert GUARD.attempts[before:] == [], f"network calls attempted: {GUARD.attempts[before:]}"
