"""A compute node that cannot reach the database: the PostgreSQL server of the instance is stopped while a fit runs.
The fit trains and journals (features by name, bytes next to the journal); the checkpoint folder is then moved, as if
mounted elsewhere on a login node, and `lamin-lightning sync` there publishes everything, with a run for the fit.

Each step is this file run as a script in its own process, with the parent's temporary LaminDB settings."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest


RESULT = "LAMIN_LIGHTNING_OFFLINE_NODE "
URL_VARIABLE = "LAMIN_LIGHTNING_TEST_PG_URL"


def init_main() -> None:
    import lamindb_setup as ln_setup

    ln_setup.init(storage=str(Path.cwd() / "storage"), db=os.environ.pop(URL_VARIABLE))
    import lamindb as ln

    import lamin_lightning as ll

    ll.save_lightning_features()
    ln.Feature(name="dataset", dtype=str).save()
    ln.Feature(name="val_loss", dtype=float).save()


def train_main() -> None:
    "The compute node: the database is down."
    from lamin_lightning.testing import NetworkGuard, TinyData, TinyModel, tiny_trainer

    guard = NetworkGuard().install()
    import lamin_lightning as ll

    folder = Path(sys.argv[2])
    callback = ll.Checkpoint(dirpath=folder, monitor="val_loss", save_top_k=2, save_last=True,
                             features={"artifact": {"dataset": "mnist", "val_loss": None}})
    started = time.monotonic()
    trainer = tiny_trainer(Path.cwd(), [callback], logger=False, max_epochs=5)
    trainer.fit(TinyModel(), TinyData())
    try:
        TinyModel.load_from_checkpoint(f"lamin://{folder}@best")
        refused = ""
    except ConnectionError as error:
        refused = str(error)
    print(RESULT + json.dumps(dict(
        epochs=trainer.current_epoch, seconds=round(time.monotonic() - started, 1), refused=refused,
        kept=sorted(p.name for p in folder.glob("*.ckpt")),
        journals=[str(p.relative_to(folder)) for p in folder.glob(".lamin_lightning/*.jsonl")],
        staged=sorted(p.name.split("-", 1)[1] for p in folder.glob(".lamin_lightning/*.ckpt")),
        network_attempts=len(guard.attempts))), flush=True)


def sync_main() -> None:
    "The login node: the folder is mounted elsewhere, and the database is up."
    from lamin_lightning.testing import NetworkGuard

    guard = NetworkGuard().install()
    import lamindb as ln

    from lamin_lightning.cli import main

    folder, trained_at = Path(sys.argv[2]), sys.argv[3]
    exit_code = main(["sync", str(folder)])
    found = ln.Artifact.filter(key__startswith=f"{trained_at}/checkpoints/")
    rows = {a.key.rsplit("/", 1)[1]: dict(
        values={k: v for k, v in a.features.get_values().items()},
        md5=hashlib.md5(Path(a.path).read_bytes()).hexdigest(), run=a.run.uid if a.run else None,
        transform=a.run.transform.key if a.run else None) for a in found}
    print(RESULT + json.dumps(dict(
        exit_code=exit_code, rows=rows, again=main(["sync", str(folder)]),
        files={p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.glob("*.ckpt")},
        left=sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if ".lamin_lightning" in str(p)),
        network_attempts=len(guard.attempts)), default=str), flush=True)


def run_step(env: dict, work: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict | None]:
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), *args], cwd=work, env=env,
                          capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    return done, json.loads(lines[0][len(RESULT):]) if lines else None


@pytest.mark.slow
def test_fit_without_database_then_sync_elsewhere(tmp_path: Path) -> None:
    from pg import child_env, postgres_or_skip, stopped

    with postgres_or_skip() as url:
        work = tmp_path / "work"
        work.mkdir()
        env = child_env(tmp_path / "settings", URL_VARIABLE, url, LAMIN_CACHE_DIR=str(tmp_path / "cache"))
        run_step(env, work, "init")
        compute = work / "scratch" / "ckpts"
        with stopped(url):
            trained, fit = run_step(env, work, "train", str(compute))
        mounted = work / "elsewhere" / "mnt" / "ckpts"
        mounted.parent.mkdir(parents=True)
        shutil.move(compute, mounted)
        synced, result = run_step(env, work, "sync", str(mounted), str(compute))
    assert urlparse(url).password not in trained.stderr + synced.stdout + synced.stderr
    # the compute node: trained to the end, warned once, journaled; only the kept checkpoints' bytes wait
    assert fit["epochs"] == 5 and fit["network_attempts"] == 0
    assert trained.stderr.count("cannot be reached from this node") == 1, trained.stderr[-3000:]
    assert "lamin-lightning sync" in trained.stderr
    assert "cannot reach" in fit["refused"] and f"lamin://{compute}@best" in fit["refused"]
    assert len(fit["journals"]) == 1 and len(fit["kept"]) == 3, fit
    assert fit["staged"] == fit["kept"], fit  # evicted and re-saved bytes were dropped at once
    # the login node: everything published from the moved folder, byte for byte, with features checked by name
    assert result["exit_code"] == 0 and result["again"] == 0 and result["network_attempts"] == 0
    rows = result["rows"]
    assert sorted(rows) == fit["kept"], rows
    assert {name: row["md5"] for name, row in rows.items()} == result["files"]
    assert result["left"] == []  # the journal and the kept bytes are gone from the folder
    best = [n for n, r in rows.items() if r["values"].get("is_best_model")]
    last = [n for n, r in rows.items() if r["values"].get("is_last_model")]
    assert len(best) == 1 and last == ["last.ckpt"], rows
    assert sorted(r["values"].get("model_rank") for n, r in rows.items() if n != "last.ckpt") == [0, 1]
    assert rows[best[0]]["values"]["model_rank"] == 0
    for row in rows.values():
        assert row["values"]["dataset"] == "mnist" and isinstance(row["values"]["val_loss"], float), row
        assert row["values"]["epoch"] in range(5)
    runs = {r["run"] for r in rows.values()}
    assert len(runs) == 1 and None not in runs  # one run for the fit, made at sync
    assert {r["transform"] for r in rows.values()} == {"test_offline_node.py"}


if __name__ == "__main__":
    {"init": init_main, "train": train_main, "sync": sync_main}[sys.argv[1]]()
