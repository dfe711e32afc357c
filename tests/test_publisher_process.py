"""`async_publish="process"`: a publisher process of its own follows the fit's journal. Killed mid-fit, it is started
again and replays the journal; past its restarts the fit publishes on a thread; `strict=True` still stops training;
a store failure in it is logged in the fit; killed with its fit, it does not outlive it, and `sync` publishes the rest."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import Callback

from faults import assert_consistent, run_script, stored
from lamin_lightning.testing import TinyData, TinyModel, tiny_trainer, use_test_instance

TESTS = Path(__file__).parent


def start(*faults: str, attempts: Path) -> str:
    "The publisher process's start, under the tests' network guard, with `faults` (functions of faults.py) injected."
    calls = "".join(f"faults.{f}(); " for f in faults)
    return (f"import os, sys; answers = os.dup(1); os.dup2(2, 1); sys.path.insert(0, {str(TESTS)!r}); import faults; "
            f"faults.guard_network({str(attempts)!r}); {calls}from lamin_lightning.process import main; main(answers)")


@pytest.fixture(autouse=True)
def guarded(tmp_path: Path, monkeypatch):
    "Every publisher process of these tests refuses the network, and reports what it tried."
    import lamin_lightning.process as process

    attempts = tmp_path / "publisher-network.txt"
    monkeypatch.setattr(process, "START", start(attempts=attempts))
    yield lambda *faults: monkeypatch.setattr(process, "START", start(*faults, attempts=attempts))
    assert not attempts.exists(), f"the publisher process tried the network: {attempts.read_text()}"


class KillPublisher(Callback):
    "SIGKILLs the fit's publisher process at the given steps, once it has published something (it is mid-work)."

    def __init__(self, checkpoint, steps: set[int]) -> None:
        self.checkpoint, self.steps, self.killed = checkpoint, steps, []

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step not in self.steps:
            return
        worker = self.checkpoint._fit.publisher.worker
        deadline = time.monotonic() + 60
        while (worker.process is None or self.checkpoint._fit.publisher.published <= len(self.killed)) and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(worker.process.pid, signal.SIGKILL)
        self.killed.append(worker.process.pid)
        worker.process.wait()


def fit(tmp_path: Path, steps: int = 20, kill: set[int] = frozenset(), **options):
    import lamin_lightning as ll

    checkpoint = ll.Checkpoint(dirpath=tmp_path / "ckpts", monitor="train_loss", save_top_k=3, save_last=True,
                               every_n_train_steps=1, async_publish="process", **options)
    killer = KillPublisher(checkpoint, set(kill))
    trainer = tiny_trainer(tmp_path, [checkpoint, killer], logger=False, max_epochs=1, max_steps=steps,
                           limit_train_batches=steps, limit_val_batches=0)
    trainer.fit(TinyModel(), TinyData(n=8 * steps))
    return checkpoint, killer


def assert_all_published(checkpoint, tmp_path: Path) -> None:
    dirpath = tmp_path / "ckpts"
    best_k = {os.path.basename(p): float(s) for p, s in checkpoint.best_k_models.items()}
    assert_consistent(dirpath, f"{dirpath}/checkpoints", best_k, os.path.basename(checkpoint.best_model_path))
    assert not (dirpath / ".lamin_lightning").exists()  # the journal is gone: nothing pending
    assert checkpoint._fit is None  # the fit closed


def test_process_publishes_what_inline_would(tmp_path: Path) -> None:
    use_test_instance()
    import lamindb as ln

    events, threads = [], set()

    def saved(observer, event) -> None:
        events.append(event)
        threads.add(threading.current_thread().name)

    checkpoint, _ = fit(tmp_path, artifact_observers=[type("O", (), {"on_artifact_saved": saved})()])
    assert threads == {"lamin_lightning-answers"}  # told by the process: not published inline, nor by a thread
    assert_all_published(checkpoint, tmp_path)
    assert len(stored(f"{tmp_path}/ckpts/checkpoints")) == 4  # top 3 and last.ckpt
    saved = [e for e in events if e.kind == "checkpoint"]  # saves evicted before they were published have none
    assert saved and all(isinstance(e.artifact, ln.Artifact) for e in saved)
    current = ln.Artifact.filter(key__startswith=f"{tmp_path}/ckpts/checkpoints/", suffix=".ckpt")
    assert {a.id for a in current} <= {e.artifact.id for e in saved}  # each stored checkpoint had its event
    assert checkpoint.last_checkpoint_artifact.key.endswith("/last.ckpt")


def test_killed_publisher_is_started_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    use_test_instance()
    caplog.set_level(logging.WARNING, "lamin_lightning")
    checkpoint, killer = fit(tmp_path, steps=24, kill={6, 14})
    assert len(killer.killed) == 2 and len(set(killer.killed)) == 2
    assert caplog.text.count("the publisher process exited (code -9); started again") == 2
    assert_all_published(checkpoint, tmp_path)  # nothing twice, nothing lost, flags and ranks as Lightning's


@pytest.mark.slow
def test_publisher_killed_past_its_restarts_hands_over_to_a_thread(tmp_path: Path, caplog) -> None:
    use_test_instance()
    from lamin_lightning.process import RESTARTS

    caplog.set_level(logging.WARNING, "lamin_lightning")
    checkpoint, killer = fit(tmp_path, steps=30, kill={4, 10, 16, 22})
    assert len(killer.killed) == RESTARTS + 1
    assert "publishing goes on in a thread of the training process" in caplog.text
    assert_all_published(checkpoint, tmp_path)


def test_store_failure_in_the_process_is_logged_in_the_fit(tmp_path: Path, caplog, guarded) -> None:
    "The process's warning reaches the fit's log once; the fit publishes what waits at its end, as inline would."
    use_test_instance()
    guarded("refuse_persist")
    caplog.set_level(logging.WARNING, "lamin_lightning")
    checkpoint, _ = fit(tmp_path, steps=6)
    assert caplog.text.count("Could not store") == 1 and "OperationalError: refused by the test" in caplog.text
    assert_all_published(checkpoint, tmp_path)  # retried by the fit itself at its end


def test_strict_process_failure_stops_training(tmp_path: Path, guarded) -> None:
    use_test_instance()
    from lamin_lightning.publisher import StoreError

    guarded("refuse_persist")
    with pytest.raises(StoreError, match="Training stops \\(strict=True\\)"):
        fit(tmp_path, steps=200, strict=True)
    files = list((tmp_path / "ckpts").glob("*.ckpt"))
    assert files and len(files) < 200 + 1  # stopped early; the files stay
    assert stored(f"{tmp_path}/ckpts/checkpoints") == {}


@pytest.mark.slow
def test_publisher_does_not_outlive_a_killed_fit(tmp_path: Path) -> None:
    "SIGKILL the training process: its publisher process exits (its pipe closed), and `sync` publishes the rest."
    use_test_instance()
    import lamin_lightning as ll

    dirpath = tmp_path / "ckpts"
    script = f"""
import os, signal, time
from lightning.pytorch.callbacks import Callback
import lamin_lightning as ll
from lamin_lightning.testing import TinyData, TinyModel, tiny_trainer, use_test_instance
use_test_instance()
checkpoint = ll.Checkpoint(dirpath={str(dirpath)!r}, monitor="train_loss", save_top_k=-1, every_n_train_steps=1,
                           async_publish="process")
class Die(Callback):
    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == 12:
            worker = checkpoint._fit.publisher.worker
            while checkpoint._fit.publisher.published < 2:
                time.sleep(0.05)
            open({str(tmp_path / "child")!r}, "w").write(str(worker.process.pid))
            os.kill(os.getpid(), signal.SIGKILL)
tiny_trainer({str(tmp_path)!r}, [checkpoint, Die()], logger=False, max_epochs=1, max_steps=40, limit_train_batches=40,
             limit_val_batches=0).fit(TinyModel(), TinyData(n=320))
"""
    result = run_script(script, cwd=tmp_path)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    child = int((tmp_path / "child").read_text())
    deadline = time.monotonic() + 30
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        try:  # reaped by init once it exits
            if Path(f"/proc/{child}/stat").read_text().split()[2] == "Z":
                break
        except FileNotFoundError:
            break
        time.sleep(0.1)
    assert not Path(f"/proc/{child}").exists() or Path(f"/proc/{child}/stat").read_text().split()[2] == "Z"
    before = len(stored(f"{dirpath}/checkpoints"))
    report = ll.sync(dirpath)
    files = {p.name for p in dirpath.glob("*.ckpt")}
    db = stored(f"{dirpath}/checkpoints")
    assert len(files) == 11  # killed before the 12th save: a checkpoint callback saves after the others
    assert set(db) == files and all(len(a) == 1 for a in db.values())
    assert before >= 2 and report.published == 11 - before and report.pending == 0
