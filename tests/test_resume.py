"""Resume anywhere: a SLURM job preempted (a real SIGUSR1 to a real training process, then SIGKILL as the scheduler
sends it), its scratch disk wiped, the same command run again: it resumes at the step of the newest checkpoint LaminDB
holds. SLURM is simulated by its environment variables and a stand-in `scontrol` on PATH (`test_slurm.py` runs the
real one)."""
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest

from lamin_lightning.testing import TinyData, TinyModel, tiny_trainer, use_test_instance

# The user's command: the same on every attempt. It logs the step it started at, and the step of each batch.
TRAIN = '''
import sys, time
from pathlib import Path
from lamin_lightning.testing import NetworkGuard
NetworkGuard().install()
import lightning.pytorch as pl
from lamin_lightning import Checkpoint
from lamin_lightning.testing import TinyData, TinyModel, tiny_trainer, use_test_instance
use_test_instance()
scratch, log = Path(sys.argv[1]), Path(sys.argv[2])

class Progress(pl.Callback):
    def on_train_start(self, trainer, pl_module):
        with log.open("a") as f:
            f.write(f"start {trainer.global_step}\\n")
    def on_train_batch_end(self, trainer, *args):
        with log.open("a") as f:
            f.write(f"step {trainer.global_step}\\n")
        time.sleep(0.05)

on_exception = sys.argv[4:] == ["save_on_exception"]  # off SLURM: a SIGTERM raises, and the callback saves
trainer = tiny_trainer(scratch, [Checkpoint(dirpath=scratch / "ckpts", every_n_train_steps=5, save_last=True,
                                            save_on_exception=on_exception), Progress()], max_steps=int(sys.argv[3]), max_epochs=-1, logger=False)
trainer.fit(TinyModel(), datamodule=TinyData(), ckpt_path="last")
with log.open("a") as f:
    f.write("done\\n")
'''


def slurm_env(tmp: Path, job: str) -> dict[str, str]:
    """What SLURM sets for a one-task batch job, and a stand-in `scontrol` first on PATH that records its arguments
    and the journals of the job's checkpoint folder, and, as `scontrol requeue` does, ends the job: SIGTERM to it (the
    test sends the SIGKILL that follows)."""
    bin_ = tmp / "bin"
    bin_.mkdir(exist_ok=True)
    scontrol = bin_ / "scontrol"
    journals = tmp / "scratch" / "ckpts" / ".lamin_lightning"  # what is journaled when the requeue is asked for
    scontrol.write_text(f'#!/bin/sh\ncat {journals}/*.jsonl > {tmp / "journaled.txt"} 2>/dev/null\n'
                        f'echo "$@" >> {tmp / "scontrol.txt"}\nkill -TERM $PPID\n')
    scontrol.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}", "PYTHONWARNINGS": "ignore", "SLURM_JOB_ID": job,
            "SLURM_JOB_NAME": "train", "SLURM_NTASKS": "1", "SLURM_NODEID": "0", "SLURM_PROCID": "0",
            "SLURM_LOCALID": "0", "SLURM_NNODES": "1"}


def steps(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def attempt(tmp: Path, scratch: Path, log: Path, job: str | None, max_steps: int, *args: str) -> subprocess.Popen:
    "The user's command, on SLURM as `job`, or off SLURM (`None`)."
    script = tmp / "train.py"
    script.write_text(TRAIN)
    env = slurm_env(tmp, job) if job is not None else {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, str(script), str(scratch), str(log), str(max_steps), *args], cwd=tmp,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_preempted_job_resumes_on_a_new_node_at_the_newest_checkpoint(tmp_path: Path) -> None:
    use_test_instance()
    import lamindb as ln

    scratch, log = tmp_path / "scratch", tmp_path / "attempt1.log"
    prefix = f"{scratch / 'ckpts'}/checkpoints"
    first = attempt(tmp_path, scratch, log, "777", 400)
    wait_for(lambda: "step 12" in steps(log), 120, "step 12 of the first attempt")
    first.send_signal(signal.SIGUSR1)  # SLURM's --signal=USR1@N
    signalled = time.monotonic()
    wait_for(lambda: (tmp_path / "scontrol.txt").exists(), 30, "`scontrol requeue`")
    requeued = time.monotonic()
    hpc_key = f"{prefix}/hpc_ckpt_1.ckpt"
    wait_for(lambda: ln.Artifact.filter(key=hpc_key).exists(), 3, "the hpc checkpoint in LaminDB")
    published = time.monotonic()
    time.sleep(max(0.0, 3 - (published - requeued)))
    first.kill()  # the scheduler's SIGKILL, 3 s after the requeue
    output = first.communicate(timeout=30)[0]
    print(f"signal -> scontrol {requeued - signalled:.3f} s, signal -> published {published - signalled:.3f} s")
    assert (tmp_path / "scontrol.txt").read_text().split() == ["requeue", "777"], output[-3000:]
    assert "hpc_ckpt_1.ckpt" in (tmp_path / "journaled.txt").read_text()  # journaled before the requeue was asked for
    hpc = ln.Artifact.get(key=hpc_key)
    hpc_step = hpc.features.get_values()["step"]
    newest = max(int(line.split()[1]) for line in steps(log) if line.startswith("step"))
    assert 12 <= hpc_step <= newest and hpc.description == "preemption checkpoint"
    assert not {"is_best_model", "is_last_model", "model_rank", "score"} & set(hpc.features.get_values())
    assert hpc.run.reference == "777" and hpc.run.reference_type == "slurm_job"
    last = ln.Artifact.filter(key=f"{prefix}/last.ckpt", run=hpc.run).order_by("-created_at").first()
    assert last.features.get_values()["step"] < hpc_step  # the hpc checkpoint is the newest: saved at the signal

    # another job with the same command and folder never resumes from job 777's checkpoints
    import shutil
    shutil.rmtree(scratch)
    other_log = tmp_path / "other.log"
    other = attempt(tmp_path, scratch, other_log, "778", 2)
    assert other.wait(180) == 0, other.communicate()[0][-3000:]
    assert steps(other_log)[0] == "start 0"

    # the requeued attempt on a new node: empty scratch, the same command
    shutil.rmtree(scratch)
    log2 = tmp_path / "attempt2.log"
    second = attempt(tmp_path, scratch, log2, "777", hpc_step + 3)
    output = second.communicate(timeout=180)[0]
    assert second.returncode == 0, output[-3000:]
    assert steps(log2)[0] == f"start {hpc_step}", (steps(log2)[:3], output[-3000:])
    assert steps(log2)[-1] == "done"
    resumed = ln.Artifact.filter(key=f"{prefix}/last.ckpt").order_by("-created_at").first()
    assert resumed.features.get_values()["step"] == hpc_step + 3
    assert resumed.run != hpc.run and resumed.run.reference == "777"
    assert list(resumed.run.input_artifacts.values_list("uid", flat=True)) == [hpc.uid]  # the chain of attempts


@pytest.mark.slow
def test_sigterm_checkpoint_is_published_and_a_new_node_resumes_from_it(tmp_path: Path) -> None:
    """Off SLURM, a real SIGTERM to a real training process makes Lightning raise; `save_on_exception=True` saves a
    checkpoint, published as a preemption checkpoint before the process exits; the same command on a new node (the
    scratch wiped) resumes at its step."""
    use_test_instance()
    import lamindb as ln

    import shutil

    scratch, log = tmp_path / "scratch", tmp_path / "attempt1.log"
    prefix = f"{scratch / 'ckpts'}/checkpoints/"
    first = attempt(tmp_path, scratch, log, None, 400, "save_on_exception")
    wait_for(lambda: "step 12" in steps(log), 120, "step 12 of the first attempt")
    first.send_signal(signal.SIGTERM)
    output = first.communicate(timeout=60)[0]
    assert "SIGTERMException" in output and "done" not in steps(log), output[-3000:]  # a SystemExit: training stopped
    saved = ln.Artifact.filter(key__startswith=prefix, description="preemption checkpoint").one()
    step = saved.features.get_values()["step"]
    newest = max(int(line.split()[1]) for line in steps(log) if line.startswith("step"))
    assert 12 <= step <= newest and step % 5 != 0  # saved at the signal, not one of the every-5-steps saves
    assert saved.run.status == "errored"
    shutil.rmtree(scratch)
    log2 = tmp_path / "attempt2.log"
    second = attempt(tmp_path, scratch, log2, None, step + 3)
    output = second.communicate(timeout=180)[0]
    assert second.returncode == 0, output[-3000:]
    assert steps(log2)[0] == f"start {step}", (steps(log2)[:3], output[-3000:])
    resumed = ln.Artifact.filter(key=f"{prefix}last.ckpt").order_by("-created_at").first()
    assert resumed.features.get_values()["step"] == step + 3
    (came_from,) = resumed.run.input_artifacts.all()  # the exception's checkpoint, or the last.ckpt saved beside it
    assert came_from.run == saved.run and came_from.features.get_values()["step"] == step


def test_unreachable_database_resumes_as_plain_lightning_with_one_warning(tmp_path: Path, monkeypatch) -> None:
    "A node that cannot reach the database: `ckpt_path='last'` looks only at the folder, and says so once."
    use_test_instance()
    import lamindb as ln

    import lamin_lightning as ll
    import lamin_lightning.resume as resume

    def fit(max_steps: int) -> None:
        trainer = tiny_trainer(tmp_path, [ll.Checkpoint(dirpath=tmp_path / "c", every_n_train_steps=2, save_last=True)],
                               max_steps=max_steps, max_epochs=-1, logger=False)
        trainer.fit(TinyModel(), TinyData(), ckpt_path="last")

    fit(4)
    assert ln.Artifact.filter(key=f"{tmp_path}/c/checkpoints/last.ckpt").exists()
    (tmp_path / "c" / "last.ckpt").unlink()  # the disk has no last checkpoint; LaminDB has one
    monkeypatch.setattr(resume, "database_reachable", lambda: False)  # the fault: the database cannot be reached
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = tiny_trainer(tmp_path, [ll.Checkpoint(dirpath=tmp_path / "c", every_n_train_steps=2)],
                               max_steps=2, max_epochs=-1, logger=False)
        trainer.fit(TinyModel(), TinyData(), ckpt_path="last")
    messages = [str(w.message) for w in caught]
    assert sum("LaminDB was not asked" in m for m in messages) == 1, messages
    assert any("there is no last checkpoint available" in m for m in messages), messages  # plain Lightning's
    assert trainer.ckpt_path is None  # started fresh from the folder's (empty) answer


class FailsAt(TinyModel):
    "Training raises at global step `step`, as a crash or an out-of-memory error would."

    def __init__(self, step: int) -> None:
        super().__init__()
        self.fail_at = step

    def training_step(self, batch, batch_idx):
        if self.trainer.global_step == self.fail_at:
            raise RuntimeError("the node fails")
        return super().training_step(batch, batch_idx)


class Start(pl.Callback):
    "The step a fit started at."

    def on_train_start(self, trainer, pl_module):
        self.step = trainer.global_step


@pytest.mark.parametrize("order", ["before ours", "after ours"])
def test_on_exception_checkpoint_is_published_and_resumed_from(tmp_path: Path, order: str) -> None:
    """`OnExceptionCheckpoint`'s file, written by the trainer when training raises, is a preemption checkpoint in
    LaminDB, wherever it is listed (callbacks' `on_exception` run in order: listed after ours, its file is published
    when the strategy tears down); with the folder gone, `ckpt_path='last'` resumes from it, at its step."""
    use_test_instance()
    import lamindb as ln
    from lightning.pytorch.callbacks import OnExceptionCheckpoint

    import lamin_lightning as ll

    import shutil

    folder = tmp_path / "c"

    def trainer(*callbacks, max_steps: int = 20):
        ours = ll.Checkpoint(dirpath=folder, every_n_train_steps=2, save_last=True)
        listed = [*callbacks, ours] if order == "before ours" else [ours, *callbacks]
        return tiny_trainer(tmp_path, listed, max_steps=max_steps, max_epochs=-1, logger=False)

    with pytest.raises(RuntimeError, match="the node fails"):
        trainer(OnExceptionCheckpoint(folder)).fit(FailsAt(5), TinyData(), ckpt_path="last")
    saved = ln.Artifact.get(key=f"{folder}/checkpoints/on_exception.ckpt")
    assert saved.description == "preemption checkpoint" and saved.features.get_values()["step"] == 5
    assert saved.path.read_bytes() == (folder / "on_exception.ckpt").read_bytes()
    assert saved.run.status == "errored"  # published before the failed run ended
    shutil.rmtree(folder)  # a new node: the folder is gone, LaminDB has the checkpoints
    start = Start()
    resumed = trainer(start, max_steps=7)
    resumed.fit(TinyModel(), TinyData(), ckpt_path="last")
    assert resumed.ckpt_path is not None and not str(resumed.ckpt_path).startswith(str(folder))  # LaminDB's copy
    assert start.step == 5 and resumed.global_step == 7  # at the on-exception checkpoint's step, not last.ckpt's 4
    run = ln.Artifact.filter(key=f"{folder}/checkpoints/last.ckpt").order_by("-created_at").first().run
    assert saved in run.input_artifacts.all()  # the lineage of the attempts


def test_save_on_exception_checkpoint_is_a_preemption_checkpoint_and_resumed_from(tmp_path: Path) -> None:
    """The checkpoint `save_on_exception=True` writes when training raises is named like any other; it is published
    as a preemption checkpoint, outside top-k, and `ckpt_path='last'` on a new node resumes from it, although no
    last.ckpt was ever saved."""
    use_test_instance()
    import lamindb as ln

    import lamin_lightning as ll

    import shutil

    folder = tmp_path / "c"

    def trainer(*callbacks, max_steps: int = 20):
        return tiny_trainer(tmp_path, [*callbacks, ll.Checkpoint(dirpath=folder, every_n_train_steps=2, save_top_k=-1,
                                                                  save_on_exception=True)],
                            max_steps=max_steps, max_epochs=-1, logger=False)

    with pytest.raises(RuntimeError, match="the node fails"):
        trainer().fit(FailsAt(5), TinyData())
    saved = ln.Artifact.filter(key__startswith=f"{folder}/checkpoints/", description="preemption checkpoint").one()
    assert saved.key.endswith("step=5.ckpt") and saved.features.get_values()["step"] == 5
    assert saved.path.read_bytes() == (folder / Path(saved.key).name).read_bytes()
    kept = ln.Artifact.filter(key__startswith=f"{folder}/checkpoints/", description="model checkpoint", is_latest=True)
    assert sorted(a.features.get_values()["step"] for a in kept) == [2, 4]  # the regular saves stay as they were
    shutil.rmtree(folder)  # a new node
    start = Start()
    resumed = trainer(start, max_steps=7)
    resumed.fit(TinyModel(), TinyData(), ckpt_path="last")
    assert start.step == 5 and resumed.global_step == 7  # the exception's checkpoint, not the step-4 one
    run = ln.Artifact.filter(key__startswith=f"{folder}/checkpoints/").order_by("-created_at").first().run
    assert saved in run.input_artifacts.all()  # the lineage of the attempts
