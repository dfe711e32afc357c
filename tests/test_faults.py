"""Faults injected into real fits: training goes on, no checkpoint file is lost, and after recovery each file is in
LaminDB exactly once with the flags and ranks Lightning's own state says. `tests/README.md` tabulates them."""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest

from faults import assert_consistent, ckpt_files, run_script, stored, sync
from lamin_lightning.testing import EventRecorder, TinyData, TinyModel, block_network, tiny_trainer, use_test_instance

EPOCHS = 5


def checkpoint(dirpath: Path, **kwargs):
    import lamin_lightning as ll

    options = dict(dirpath=dirpath, monitor="val_loss", save_top_k=2, save_last=True, every_n_epochs=1)
    return ll.Checkpoint(**(options | kwargs))


def fit(tmp_path: Path, callback, *extra: pl.Callback) -> pl.Trainer:
    trainer = tiny_trainer(tmp_path, [callback, *extra], logger=False, max_epochs=EPOCHS)
    trainer.fit(TinyModel(), TinyData())
    return trainer


def journal_files(dirpath: Path) -> list[Path]:
    return sorted((dirpath / ".lamin_lightning").glob("*.jsonl"))


class AtEpoch(pl.Callback):
    "Runs `action` when training epoch `epoch` starts: a fault switched on or off mid-fit."

    def __init__(self, epoch: int, action) -> None:
        self.epoch, self.action = epoch, action

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            self.action()


@pytest.mark.parametrize("async_publish", [False, True], ids=["inline", "async"])
def test_database_raises(tmp_path: Path, monkeypatch, caplog, async_publish: bool) -> None:
    "1. The database raises on four attempts in a row: retried, nothing lost, training goes on."
    use_test_instance()
    import lamindb as ln
    from django.db.utils import OperationalError

    calls = {"n": 0}
    save = ln.Artifact.save

    def flaky_save(self, *args, **kwargs):
        calls["n"] += 1
        if 3 <= calls["n"] <= 6:  # four attempts fail, whichever thread makes them
            raise OperationalError("disk I/O error")
        return save(self, *args, **kwargs)

    monkeypatch.setattr(ln.Artifact, "save", flaky_save)
    dirpath = tmp_path / "ckpts"
    callback = checkpoint(dirpath, async_publish=async_publish)
    with caplog.at_level(logging.WARNING, logger="lamin_lightning"):
        trainer = fit(tmp_path, callback)
    assert calls["n"] > 6
    assert trainer.current_epoch == EPOCHS  # training was never stopped
    assert "OperationalError: disk I/O error. Training goes on" in caplog.text
    assert_consistent(dirpath, f"{dirpath}/checkpoints", callback.best_k_models, callback.best_model_path)
    assert journal_files(dirpath) == []  # everything published: no journal left


def test_database_raises_strict(tmp_path: Path, monkeypatch) -> None:
    "1b. strict=True stops training with the fix in the message; the journal keeps the work; `sync` publishes it."
    use_test_instance()
    import lamindb as ln
    from django.db.utils import OperationalError

    from lamin_lightning.publisher import StoreError

    failing = {"on": False}
    save = ln.Artifact.save

    def flaky_save(self, *args, **kwargs):
        if failing["on"]:
            raise OperationalError("database is locked")
        return save(self, *args, **kwargs)

    monkeypatch.setattr(ln.Artifact, "save", flaky_save)
    dirpath = tmp_path / "ckpts"
    callback = checkpoint(dirpath, strict=True)
    with pytest.raises(StoreError, match="Training stops \\(strict=True\\).*lamin-lightning sync"):
        fit(tmp_path, callback, AtEpoch(2, lambda: failing.update(on=True)))
    files = ckpt_files(dirpath)
    assert len(files) >= 3 and len(journal_files(dirpath)) == 1  # the files Lightning wrote are all there
    failing["on"] = False
    result = sync(dirpath)
    assert result.returncode == 0, result.stderr[-2000:]
    db = stored(f"{dirpath}/checkpoints")
    assert set(db) == files and all(len(a) == 1 for a in db.values())
    assert journal_files(dirpath) == []


@pytest.mark.parametrize("io", ["sync", "async"])
@pytest.mark.parametrize("strict", [False, True], ids=["lenient", "strict"])
def test_bookkeeping_failure_never_stops_training(tmp_path: Path, monkeypatch, caplog, io: str, strict: bool) -> None:
    """1c. Building a save's entry raises (a bug, a download that fails), inline and on AsyncCheckpointIO's thread:
    logged with the file, and training goes on; with strict=True it stops."""
    use_test_instance()
    from lightning.pytorch.plugins.io import AsyncCheckpointIO

    from lamin_lightning.checkpoint import Checkpoint

    calls = {"n": 0}
    build = Checkpoint._checkpoint_entry

    def failing_build(self, trainer, filepath, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise FileNotFoundError(f"{filepath}: gone")
        return build(self, trainer, filepath, *args, **kwargs)

    monkeypatch.setattr(Checkpoint, "_checkpoint_entry", failing_build)
    callback = checkpoint(tmp_path / "ckpts", strict=strict)
    trainer = tiny_trainer(tmp_path, [callback], logger=False, max_epochs=EPOCHS,
                           plugins=[AsyncCheckpointIO()] if io == "async" else [])
    if strict:
        with pytest.raises(FileNotFoundError, match="gone"):
            trainer.fit(TinyModel(), TinyData())
        return
    with caplog.at_level(logging.ERROR, logger="lamin_lightning"):
        trainer.fit(TinyModel(), TinyData())
    assert trainer.current_epoch == EPOCHS  # training was never stopped
    assert calls["n"] > 2
    assert "could not record" in caplog.text and "FileNotFoundError" in caplog.text and "Training goes on" in caplog.text
    assert ckpt_files(tmp_path / "ckpts")  # Lightning's files are all there


def test_sqlite_locked_by_another_process(tmp_path: Path) -> None:
    "2. Another process holds the SQLite database locked for 7 s mid-fit: training goes on, everything is published."
    use_test_instance()
    import lamindb_setup as ln_setup

    db = ln_setup.settings.instance.db.removeprefix("sqlite:///")
    locker: dict[str, subprocess.Popen] = {}
    code = ("import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
            "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(7); c.execute('COMMIT')")

    def lock() -> None:
        locker["p"] = subprocess.Popen([sys.executable, "-c", code, db], stdout=subprocess.PIPE, text=True)
        assert locker["p"].stdout.readline().strip() == "locked"

    dirpath = tmp_path / "ckpts"
    callback = checkpoint(dirpath)
    started = time.monotonic()
    trainer = fit(tmp_path, callback, AtEpoch(1, lock))
    assert locker["p"].wait(timeout=30) == 0
    assert trainer.current_epoch == EPOCHS
    assert time.monotonic() - started > 5  # the lock was really in the way
    assert_consistent(dirpath, f"{dirpath}/checkpoints", callback.best_k_models, callback.best_model_path)


def test_storage_permission_denied(tmp_path: Path, monkeypatch) -> None:
    "3. Writing into the instance's storage fails with EACCES for two epochs: retried once it works again."
    root = use_test_instance()
    denied = {"on": False, "n": 0}
    link, copy = os.link, shutil.copyfile

    def guarded(real):
        def write(source, target, *args, **kwargs):
            if denied["on"] and Path(target).is_relative_to(root):
                denied["n"] += 1
                raise PermissionError(13, "Permission denied", str(target))
            return real(source, target, *args, **kwargs)
        return write

    monkeypatch.setattr(os, "link", guarded(link))
    monkeypatch.setattr(shutil, "copyfile", guarded(copy))
    dirpath = tmp_path / "ckpts"
    callback = checkpoint(dirpath)
    trainer = fit(tmp_path, callback, AtEpoch(1, lambda: denied.update(on=True)), AtEpoch(3, lambda: denied.update(on=False)))
    assert trainer.current_epoch == EPOCHS
    assert denied["n"] >= 4  # the storage really refused the saves of epochs 1 and 2
    assert_consistent(dirpath, f"{dirpath}/checkpoints", callback.best_k_models, callback.best_model_path)


def kill_script(fault: str, **checkpoint: object) -> str:
    "A child script: `fault` patches lamin_lightning to SIGKILL itself at one point, then a fit into ./ckpts runs."
    options = ", ".join(f"{k}={v!r}" for k, v in checkpoint.items())
    return f"""
import os, signal, sys
from pathlib import Path
import lamindb as ln
import lamin_lightning as ll
from lamin_lightning.features import ValueWriter
from lamin_lightning.store import Store
from lamin_lightning.testing import TinyData, TinyModel, tiny_trainer
{fault}
dirpath = Path(sys.argv[0]).parent / "ckpts"
callback = ll.Checkpoint(dirpath=dirpath, monitor="val_loss", every_n_epochs=1, {options})
tiny_trainer(dirpath.parent, [callback], logger=False, max_epochs=5).fit(TinyModel(), TinyData())
"""


KILL_BEFORE_COMMIT = kill_script("""
add, calls = ValueWriter.add, {"n": 0}
def add_then_die(self, artifact, values):
    if artifact.key.endswith(".ckpt") and not artifact.key.endswith("last.ckpt"):
        calls["n"] += 1
        if calls["n"] == 3:  # inside the transaction of the 3rd checkpoint: the file is written, nothing committed
            os.kill(os.getpid(), signal.SIGKILL)
    return add(self, artifact, values)
ValueWriter.add = add_then_die
""", save_top_k=-1)


def killed_before_commit(tmp_path: Path) -> Path:
    "Run the fit that is killed inside its third commit; returns its checkpoint folder."
    use_test_instance()
    result = run_script(KILL_BEFORE_COMMIT, cwd=tmp_path)
    assert result.returncode == -9, result.stderr[-3000:]
    return tmp_path / "ckpts"


@pytest.mark.slow
def test_sigkill_between_file_write_and_commit(tmp_path: Path) -> None:
    "4. SIGKILL between Lightning's file write and the commit: the journal has it; `sync` publishes it exactly once."
    dirpath = killed_before_commit(tmp_path)
    prefix = f"{dirpath}/checkpoints"
    files = ckpt_files(dirpath)
    assert len(files) == 3  # the killed save's file is on disk
    assert len(stored(prefix)) == 2  # ... and was not committed
    for _ in range(2):  # a second sync finds nothing to do and duplicates nothing
        done = sync(dirpath)
        assert done.returncode == 0, done.stderr[-2000:]
    db = stored(prefix)
    assert set(db) == files and all(len(a) == 1 for a in db.values())
    scores = {n: a[0]["score"] for n, a in db.items()}
    newest = max(files, key=lambda n: int(n.split("epoch=")[1].split("-")[0]))
    assert [n for n, a in db.items() if a[0]["is_last_model"]] == [newest]
    assert [n for n, a in db.items() if a[0]["is_best_model"]] == [min(scores, key=scores.get)]
    assert sorted(a[0]["model_rank"] for a in db.values()) == [0, 1, 2]
    assert journal_files(dirpath) == []


def test_sync_after_the_folder_moved(tmp_path: Path) -> None:
    "4b. The killed fit's folder moved (or mounted elsewhere) before `sync`: its journal's relative paths still replay."
    old = killed_before_commit(tmp_path)
    files = ckpt_files(old)
    moved = tmp_path / "mounted-elsewhere" / "ckpts"
    moved.parent.mkdir()
    shutil.move(old, moved)
    done = sync(moved)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    db = stored(f"{old}/checkpoints")  # keys keep the path the fit saw
    assert set(db) == files and all(len(a) == 1 for a in db.values())
    assert all(a[0]["_bytes"] == (moved / name).read_bytes() for name, a in db.items())
    assert sum(a[0]["is_last_model"] for a in db.values()) == 1
    assert journal_files(moved) == []


KILL_BETWEEN_NEW_AND_OLD = kill_script("""
retire = Store._retire
def retire_or_die(self, entry_id, keep_file):
    old = ln.Artifact.objects.filter(id=self.ids.get(entry_id)).first()
    if old is not None and old.key.endswith("/last.ckpt"):  # the new last.ckpt is committed, the old one not yet gone
        os.kill(os.getpid(), signal.SIGKILL)
    return retire(self, entry_id, keep_file)
Store._retire = retire_or_die
""", save_top_k=1, save_last=True, enable_version_counter=False)


def test_resaved_key_new_before_old(tmp_path: Path) -> None:
    "6. A re-saved key: the new artifact exists before the old is removed; a kill between the two loses neither."
    use_test_instance()
    import lamindb as ln

    result = run_script(KILL_BETWEEN_NEW_AND_OLD, cwd=tmp_path)
    assert result.returncode == -9, result.stderr[-3000:]
    dirpath = tmp_path / "ckpts"
    key = f"{dirpath}/checkpoints/last.ckpt"
    both = list(ln.Artifact.filter(key=key))
    assert len(both) == 2 and all(Path(a.path).exists() for a in both)  # neither was lost
    done = sync(dirpath)
    assert done.returncode == 0, done.stderr[-2000:]
    (last,) = ln.Artifact.filter(key=key)
    assert Path(last.path).read_bytes() == (dirpath / "last.ckpt").read_bytes()
    assert last.features.get_values()["is_last_model"] is True


@pytest.mark.parametrize("hang", [False, True], ids=["refused", "hanging"])
def test_no_network(tmp_path: Path, hang: bool) -> None:
    "5. Every non-loopback connection refused, or hanging for 30 s: none is attempted, so the fit adds nothing."
    use_test_instance()
    baseline = time.monotonic()
    fit(tmp_path / "baseline", checkpoint(tmp_path / "baseline"))  # under the suite's refusing guard
    baseline = time.monotonic() - baseline
    with block_network(hang=hang) as guard:
        started = time.monotonic()
        callback = checkpoint(tmp_path / "guarded", async_publish=True)
        fit(tmp_path / "guarded", callback)
        took = time.monotonic() - started
    assert guard.attempts == []
    assert took < baseline + 1.0, (took, baseline)
    assert len(stored(f"{tmp_path / 'guarded'}/checkpoints")) == 3  # 2 best + last.ckpt


def test_observer_raises(tmp_path: Path, caplog) -> None:
    "8. An observer raises: reported with its name, training goes on, the other observers get every event."
    use_test_instance()

    class BrokenRegistry:
        def on_artifact_saved(self, event) -> None:
            raise ConnectionError("registry down")

    recorder = EventRecorder()
    dirpath = tmp_path / "ckpts"
    with caplog.at_level(logging.WARNING, logger="lamin_lightning"):
        trainer = fit(tmp_path, checkpoint(dirpath, artifact_observers=[BrokenRegistry(), recorder]))
    assert trainer.current_epoch == EPOCHS
    assert "BrokenRegistry" in caplog.text and "registry down" in caplog.text
    saved = [e for e in recorder.summary() if e[0] == "saved" and e[1] == "checkpoint"]
    assert len(saved) == 2 * EPOCHS  # a top-k save and last.ckpt per epoch
    assert len(stored(f"{dirpath}/checkpoints")) == 3


def test_password_never_logged(tmp_path: Path, monkeypatch, caplog) -> None:
    "Bad input: a database URL with a password in a driver's error never reaches logs, events or exceptions."
    use_test_instance()
    import lamindb as ln
    from django.db.utils import OperationalError

    from lamin_lightning.publisher import StoreError

    save, calls = ln.Artifact.save, {"n": 0}

    def leaky_save(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] in (3, 4):  # two saves fail mid-fit; the rest, before and after, publish and emit events
            raise OperationalError('connection to "postgresql://lamin:hunter2@db.internal:5432/lamin" failed')
        return save(self, *args, **kwargs)

    monkeypatch.setattr(ln.Artifact, "save", leaky_save)
    recorder = EventRecorder()
    with caplog.at_level(logging.DEBUG):
        fit(tmp_path, checkpoint(tmp_path / "ckpts", artifact_observers=[recorder]))
    events = json.dumps([repr(e) for e in recorder.events] + [str(e.artifact.path) for e in recorder.events if e.artifact])
    assert calls["n"] > 4 and len(recorder.events) > 4  # the fault happened, and events were emitted around it
    assert "postgresql://lamin:***@db.internal" in caplog.text  # the error was logged, redacted
    assert "hunter2" not in caplog.text + events

    monkeypatch.setattr(ln.Artifact, "save", lambda self, *a, **k: (_ for _ in ()).throw(
        OperationalError('connection to "postgresql://lamin:hunter2@db.internal:5432/lamin" failed')))
    with pytest.raises(StoreError) as raised:
        fit(tmp_path, checkpoint(tmp_path / "strict", strict=True))
    assert "hunter2" not in str(raised.value) and "postgresql://lamin:***@db.internal" in str(raised.value)
