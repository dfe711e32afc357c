"""Shared pieces of the fault-injection tests: what is on disk, what is in LaminDB, and whether the two agree."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent


def ckpt_files(dirpath: Path) -> set[str]:
    "Names of the checkpoint files Lightning left in `dirpath`."
    return {p.name for p in dirpath.glob("*.ckpt")}


def stored(prefix: str) -> dict[str, list[dict[str, Any]]]:
    "`{file name: [feature values of each artifact with that key]}` under `prefix/`."
    import lamindb as ln

    found: dict[str, list[dict[str, Any]]] = {}
    for artifact in ln.Artifact.filter(key__startswith=f"{prefix}/", suffix=".ckpt"):
        values = artifact.features.get_values()
        values["_bytes"] = Path(artifact.path).read_bytes()
        found.setdefault(artifact.key.rsplit("/", 1)[1], []).append(values)
    return found


def assert_consistent(dirpath: Path, prefix: str, best_k: dict[str, float], best_path: str, mode: str = "min") -> None:
    "Every checkpoint file on disk is in LaminDB exactly once, with the same bytes, flags and ranks as Lightning's state."
    files = ckpt_files(dirpath)
    db = stored(prefix)
    assert set(db) == files, f"on disk only: {files - set(db)}, in LaminDB only: {set(db) - files}"
    for name, artifacts in db.items():
        assert len(artifacts) == 1, f"{name} is in LaminDB {len(artifacts)} times"
        assert artifacts[0]["_bytes"] == (dirpath / name).read_bytes(), name
    ordered = sorted(best_k, key=lambda p: float(best_k[p]), reverse=mode == "max")
    for rank, path in enumerate(ordered):
        values = db[Path(path).name][0]
        assert values["model_rank"] == rank and values["score"] == float(best_k[path]), (path, values)
    best = [n for n, a in db.items() if a[0].get("is_best_model")]
    assert best == [Path(best_path).name], best
    last = [n for n, a in db.items() if a[0].get("is_last_model")]
    assert len(last) == 1, last


def run_script(code: str, *, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    "Run `code` in a fresh Python that connects to the test instance and refuses the network."
    script = cwd / "script.py"
    attempts = cwd / "network-attempts.txt"  # written at each refusal, so a SIGKILLed child still reports them
    script.write_text(textwrap.dedent(f'''\
        from lamin_lightning.testing import NetworkGuard
        guard = NetworkGuard().install()
        refuse = guard._refuse
        def record(target):
            with open({str(attempts)!r}, "a") as log:
                log.write(target + "\\n")
            refuse(target)
        guard._refuse = record
        ''') + textwrap.dedent(code))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run([sys.executable, str(script)], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert not attempts.exists(), f"network calls attempted: {attempts.read_text()}"
    return result


def sync(path: Path) -> subprocess.CompletedProcess:
    "The console command, as a user would run it."
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([str(BIN / "lamin-lightning"), "sync", str(path)], env=env, capture_output=True, text=True,
                          timeout=300)


def refuse_persist() -> None:
    "In this process, every save an entry persists fails as a database error would (for the publisher process)."
    from django.db import OperationalError

    from lamin_lightning.store import Store

    persist = Store.persist

    def refusing(self, entry):
        if entry.op == "save":
            raise OperationalError("refused by the test")
        return persist(self, entry)

    Store.persist = refusing


def guard_network(attempts: str) -> None:
    "In this process (a publisher process), refuse non-loopback connections and append each one tried to `attempts`."
    from lamin_lightning.testing import NetworkGuard

    guard = NetworkGuard().install()
    refuse = guard._refuse

    def record(target: str) -> None:
        with open(attempts, "a") as log:
            log.write(target + "\n")
        refuse(target)

    guard._refuse = record
