"""Sharded checkpoints: `ModelParallelStrategy(save_distributed_checkpoint=True)` with FSDP2's `fully_shard` on two CPU
processes (gloo, real subprocesses, `sharded_app.py`), each checkpoint a folder of shards. Each kept folder is one
lamindb folder artifact under Lightning's file name, with the features, flags, ranks and run of a file checkpoint,
its files hard-linked into the storage; evicted folders leave nothing; the counts printed are what LaminDB holds."""
from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from faults import sync
from lamin_lightning.testing import use_test_instance

APP = Path(__file__).with_name("sharded_app.py")
SHARDS = [".metadata", "__0_0.distcp", "__1_0.distcp", "meta.pt"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_app(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    "A 2-process model-parallel fit; fails the test unless it exits 0."
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "MASTER_PORT": str(free_port())}
    result = subprocess.run([sys.executable, str(APP), *args], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "distributed_backend=gloo" in result.stderr  # really two processes
    return result


def on_disk(dirpath: Path) -> dict[str, Path]:
    return {p.name: p for p in dirpath.glob("*.ckpt")}


@pytest.fixture(scope="module")
def sharded_fit(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """One fit of 3 epochs, `save_top_k=2`, `save_last=True`, `save_best=True` (`best.ckpt`, a link to the best folder):
    epoch 0's folder is evicted at epoch 2."""
    use_test_instance()
    tmp = tmp_path_factory.mktemp("sharded")
    dirpath = tmp / "ckpts"
    return dirpath, run_app(tmp, str(dirpath), "--save-best")


def test_each_kept_folder_is_one_folder_artifact(sharded_fit) -> None:
    import lamindb as ln

    dirpath, result = sharded_fit
    folders = on_disk(dirpath)
    assert set(folders) == {"epoch=1-step=4.ckpt", "epoch=2-step=6.ckpt", "last.ckpt", "best.ckpt"}
    assert (dirpath / "best.ckpt").is_symlink() and (dirpath / "best.ckpt").resolve().name == "epoch=2-step=6.ckpt"
    assert "Could not store" not in result.stderr and "could not record" not in result.stderr, result.stderr[-3000:]
    artifacts = {a.key: a for a in ln.Artifact.filter(key__startswith=f"{dirpath}/checkpoints/")}
    assert set(artifacts) == {f"{dirpath}/checkpoints/{name}" for name in folders}  # no trailing slash, nothing evicted
    for name, folder in folders.items():
        artifact = artifacts[f"{dirpath}/checkpoints/{name}"]
        assert sorted(p.name for p in folder.iterdir()) == SHARDS
        assert (artifact.n_files, artifact.size) == (4, sum(p.stat().st_size for p in folder.iterdir()))
        assert artifact.kind == "model" and artifact.description == "model checkpoint"
        stored = Path(artifact.path)
        assert stored.is_dir() and stored.name == artifact.uid[:16]
        for shard in SHARDS:  # one copy on disk: each file hard-linked into the storage
            assert os.stat(stored / shard).st_ino == os.stat(folder / shard).st_ino, (name, shard)
    assert not (dirpath / ".lamin_lightning").exists()  # nothing pending
    assert "epoch=0-step=2" not in result.stderr  # an evicted folder is never said to be published


def test_evicted_folder_leaves_nothing_in_storage(sharded_fit) -> None:
    import lamindb as ln
    import lamindb_setup as ln_setup

    dirpath, _ = sharded_fit
    managed = Path(str(ln_setup.settings.storage.root)) / ".lamindb"
    registered = {Path(a.path).name for a in ln.Artifact.filter(key__startswith=f"{dirpath}/checkpoints/")}
    uids = {a.uid[:16] for a in ln.Artifact.filter()}
    leftovers = [p.name for p in managed.iterdir() if p.is_dir() and p.name not in uids]
    assert len(registered) == 4 and leftovers == []  # epoch 0's placed folder went with its eviction
    assert ln.Artifact.filter(key=f"{dirpath}/checkpoints/epoch=0-step=2.ckpt").count() == 0


def test_folder_flags_ranks_and_run_match_lightning(sharded_fit) -> None:
    import lamindb as ln

    import torch

    dirpath, _ = sharded_fit
    meta = torch.load(dirpath / "last.ckpt" / "meta.pt", weights_only=False)  # Lightning's own state at the last save
    state = next(v for k, v in meta["callbacks"].items() if "Checkpoint" in k)
    best_k = {Path(p).name: float(s) for p, s in state["best_k_models"].items()}
    values = {Path(a.key).name: a.features.get_values() for a in ln.Artifact.filter(key__startswith=f"{dirpath}/checkpoints/")}
    ranked = sorted(best_k, key=best_k.get)
    for rank, name in enumerate(ranked):
        assert values[name]["model_rank"] == rank and values[name]["score"] == pytest.approx(best_k[name]), values[name]
    assert [n for n, v in values.items() if v["is_best_model"]] == [Path(state["best_model_path"]).name]
    assert [n for n, v in values.items() if v["is_last_model"]] == ["last.ckpt"]
    assert values["best.ckpt"]["score"] == pytest.approx(best_k[Path(state["best_model_path"]).name])  # the best's
    assert values["epoch=2-step=6.ckpt"]["epoch"] == 2 and values["epoch=2-step=6.ckpt"]["step"] == 6
    runs = {a.run_id for a in ln.Artifact.filter(key__startswith=f"{dirpath}/checkpoints/")}
    assert len(runs) == 1 and None not in runs  # one run: only rank 0 touched LaminDB


@pytest.mark.slow
def test_refused_then_synced_counts_what_lamindb_holds(tmp_path: Path) -> None:
    """The store refuses every write from the first epoch (a fault injected): every folder waits in the journal;
    `lamin-lightning sync` then publishes the kept ones, and prints as published exactly what LaminDB holds, the
    folders evicted or re-saved meanwhile as skipped."""
    use_test_instance()
    import lamindb as ln

    dirpath = tmp_path / "ckpts"
    result = run_app(tmp_path, str(dirpath), "--refuse-from-epoch", "0")
    assert "Could not store" in result.stderr and "IsADirectoryError" not in result.stderr, result.stderr[-3000:]
    assert "published" not in re.sub(r"publication\(s\) pending", "", result.stderr)  # nothing was published
    assert ln.Artifact.filter(key__startswith=f"{dirpath}/checkpoints/").count() == 0
    synced = sync(dirpath)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    held = {Path(a.key).name for a in ln.Artifact.filter(key__startswith=f"{dirpath}/checkpoints/")}
    assert held == set(on_disk(dirpath)) == {"epoch=1-step=4.ckpt", "epoch=2-step=6.ckpt", "last.ckpt"}
    # skipped: the two last.ckpt re-saved before they were published (epoch 0's folder, evicted, was skipped by the
    # fit itself: nothing of it to store)
    assert synced.stdout.splitlines()[-1].startswith("published 3; 2 skipped (evicted or re-saved before they were published); "
                                    "0 still pending; 0 abandoned"), synced.stdout
    for artifact in ln.Artifact.filter(key__startswith=f"{dirpath}/checkpoints/"):
        assert artifact.n_files == 4 and sorted(p.name for p in Path(artifact.path).iterdir()) == SHARDS


@pytest.mark.slow
@pytest.mark.parametrize("selector", ["@last", "uid"])
def test_resume_by_reference_loads_the_folder_on_every_rank(sharded_fit, selector: str) -> None:
    """`fit(ckpt_path="lamin://…")` with the same strategy: rank 0 resolves the reference, both ranks load the same
    local folder, and training goes on from its step; the folder is an input of the resumed run."""
    import lamindb as ln

    dirpath, _ = sharded_fit
    prefix = f"{dirpath}/checkpoints"
    source = ln.Artifact.get(key=f"{prefix}/last.ckpt")
    reference = f"lamin://{prefix}@last" if selector == "@last" else f"lamin://{source.uid}"
    resumed = dirpath.parent / f"resumed-{selector.strip('@')}"
    result = run_app(dirpath.parent, str(resumed), "--ckpt-path", reference, "--epochs", "4")
    assert "global_step=8" in result.stdout, result.stdout  # step 6 restored, then one epoch of 2 steps
    assert {p.name for p in resumed.glob("*.ckpt")} == {"epoch=3-step=8.ckpt", "last.ckpt"}  # epochs 0-2 not re-run
    run = ln.Artifact.get(key=f"{resumed}/checkpoints/last.ckpt").run
    assert source in run.input_artifacts.all()


def test_folder_reference_on_a_files_strategy_fails_before_training(sharded_fit, tmp_path: Path) -> None:
    "A folder on a strategy that reads one file through its CheckpointIO: a clear error, no batch run."
    from lamin_lightning import Checkpoint
    from lamin_lightning.testing import TinyData, TinyModel, tiny_trainer

    dirpath, _ = sharded_fit
    trainer = tiny_trainer(tmp_path, [Checkpoint(dirpath=tmp_path / "ckpts")], logger=False)
    with pytest.raises(IsADirectoryError, match="is a sharded checkpoint folder .*ModelParallelStrategy.*"
                                                "consolidate_checkpoint"):
        trainer.fit(TinyModel(hidden=8), TinyData(hidden=8), ckpt_path=f"lamin://{dirpath}/checkpoints@best")
    assert trainer.global_step == 0


def test_load_from_checkpoint_of_a_folder_names_the_consolidation_tool(sharded_fit) -> None:
    from lamin_lightning.testing import TinyModel

    dirpath, _ = sharded_fit
    with pytest.raises(IsADirectoryError, match=r"python -m lightning\.pytorch\.utilities\.consolidate_checkpoint "):
        TinyModel.load_from_checkpoint(f"lamin://{dirpath}/checkpoints@best")


def test_a_users_io_that_writes_folders(tmp_path: Path) -> None:
    """A user's own `CheckpointIO` that writes each checkpoint as a folder (weights and the rest apart), on one CPU
    device: each kept folder is one folder artifact with its two files, the evicted one is retired, and a resume by
    `@last` reads the folder through the same IO."""
    use_test_instance()
    import lamindb as ln
    import torch
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    from lamin_lightning import Checkpoint
    from lamin_lightning.testing import TinyData, TinyModel, tiny_trainer

    class FolderIO(TorchCheckpointIO):
        def save_checkpoint(self, checkpoint, path, storage_options=None):
            Path(path).mkdir(parents=True, exist_ok=True)
            torch.save(checkpoint.pop("state_dict"), Path(path) / "weights.pt")
            torch.save(checkpoint, Path(path) / "rest.pt")

        def load_checkpoint(self, path, map_location=None, weights_only=None):
            return {**torch.load(Path(path) / "rest.pt", weights_only=False), "state_dict": torch.load(Path(path) / "weights.pt")}

    dirpath = tmp_path / "ckpts"
    callback = Checkpoint(dirpath=dirpath, monitor="val_loss", save_top_k=2, save_last=True)
    tiny_trainer(tmp_path, [callback], logger=False, max_epochs=3, plugins=[FolderIO()]).fit(TinyModel(), TinyData())
    artifacts = {Path(a.key).name: a for a in ln.Artifact.filter(key__startswith=f"{dirpath}/checkpoints/")}
    assert set(artifacts) == {p.name for p in dirpath.glob("*.ckpt")} == {"epoch=1-step=4.ckpt", "epoch=2-step=6.ckpt",
                                                                         "last.ckpt"}
    assert all(a.n_files == 2 and sorted(p.name for p in Path(a.path).iterdir()) == ["rest.pt", "weights.pt"]
               for a in artifacts.values())
    import lightning.pytorch as pl

    class Batches(pl.Callback):
        ran = 0

        def on_train_batch_end(self, *args, **kwargs) -> None:
            self.ran += 1

    batches = Batches()
    resumed = tiny_trainer(tmp_path, [Checkpoint(dirpath=tmp_path / "resumed"), batches], logger=False, max_epochs=4,
                           plugins=[FolderIO()])
    resumed.fit(TinyModel(), TinyData(), ckpt_path=f"lamin://{dirpath}/checkpoints@last")
    assert (resumed.global_step, batches.ran) == (8, 2)  # step 6 restored from the folder: one epoch of 2 batches


@pytest.mark.slow
@pytest.mark.parametrize(("dying", "save"), [(1, 5), (0, 5), (1, 6)], ids=["rank1", "rank0", "rank1-resaving-last"])
def test_rank_killed_mid_save_leaves_no_partial_folder(tmp_path: Path, dying: int, save: int) -> None:
    """The store refuses every write (a fault injected), and rank `dying` SIGKILLs itself right after writing its shard
    of the 5th save (`epoch=2-step=6.ckpt/`), or of the 6th (`last.ckpt/` saved again, over the folder whose earlier
    save waits in the journal): the fit dies. Nothing is in LaminDB; `lamin-lightning sync` then publishes complete
    folders only, and says so; the partial folder never becomes an artifact, even at a second sync."""
    use_test_instance()
    import hashlib

    import lamindb as ln

    dirpath = tmp_path / "ckpts"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "MASTER_PORT": str(free_port())}
    fit = subprocess.Popen([sys.executable, str(APP), str(dirpath), "--refuse-from-epoch", "0", "--die-at-save",
                            str(save), "--die-rank", str(dying)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = fit.communicate(timeout=180)
    finally:
        with contextlib.suppress(ProcessLookupError):  # a rank left in a collective goes with its group
            os.killpg(fit.pid, signal.SIGKILL)
    assert fit.returncode != 0, output[-3000:]
    partial = dirpath / ("epoch=2-step=6.ckpt" if save == 5 else "last.ckpt")
    if save == 5:  # a new folder: the dying rank's shard is there, `.metadata` is not
        names = {p.name for p in partial.iterdir()}
        assert f"__{dying}_0.distcp" in names and ".metadata" not in names, names
    prefix = f"{dirpath}/checkpoints"
    assert ln.Artifact.filter(key__startswith=f"{prefix}/").count() == 0
    complete = {"epoch=0-step=2.ckpt", "epoch=1-step=4.ckpt", "last.ckpt"} if save == 5 else \
        {"epoch=1-step=4.ckpt", "epoch=2-step=6.ckpt", "last.ckpt"}  # epoch 0's evicted after the 5th save
    for attempt in range(2):
        synced = sync(dirpath)
        held = {Path(a.key).name: a for a in ln.Artifact.filter(key__startswith=f"{prefix}/")}
        assert set(held) == complete, (held, synced.stdout)
        for artifact in held.values():
            assert artifact.n_files == 4 and sorted(p.name for p in Path(artifact.path).iterdir()) == SHARDS
        summary = synced.stdout.splitlines()[-1]
        if attempt == 0:  # the count printed is what LaminDB holds; the first last.ckpt was re-saved before
            assert synced.returncode == 0 and summary.startswith("published 3; 1 skipped"), synced.stdout + synced.stderr
        else:  # nothing left to do: the partial folder is in no journal, and stays out of LaminDB
            assert synced.returncode == 0 and summary.startswith("published 0"), synced.stdout + synced.stderr
    if save == 5:
        assert ln.Artifact.filter(key=f"{prefix}/epoch=2-step=6.ckpt").count() == 0
    else:  # last.ckpt is epoch 1's save, whole: its shards are step 4's, none from the save that died
        def md5s(folder: Path) -> dict[str, str]:
            return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.name != ".metadata"}
        assert md5s(Path(held["last.ckpt"].path)) == md5s(Path(held["epoch=1-step=4.ckpt"].path))
        assert md5s(Path(held["last.ckpt"].path)) != md5s(Path(held["epoch=2-step=6.ckpt"].path))


@pytest.mark.slow
@pytest.mark.parametrize("publishing", ["inline", "background"])
def test_folders_hashed_by_the_ranks_as_lamindb_hashes_them(tmp_path: Path, publishing: str) -> None:
    """Each folder artifact has the hash lamindb's own folder hashing gives it (`md5-d`), yet lamindb's `hash_dir` ran
    0 times on either rank. Inline, each rank read only the shards it wrote, each once per save, right after the
    collective save; in the background (`async_publish`), rank 0's publisher read each published folder once."""
    use_test_instance()
    import json
    from collections import Counter

    import lamindb as ln
    from lamindb_setup.core.hashing import hash_dir

    dirpath, counts = tmp_path / "ckpts", tmp_path / "hashing"
    run_app(tmp_path, str(dirpath), "--count-hashing", str(counts), *(["--async-publish"] if publishing == "background" else []))
    seen = {rank: json.loads(Path(f"{counts}.{rank}").read_text()) for rank in (0, 1)}
    assert [seen[rank]["hash_dir"] for rank in (0, 1)] == [0, 0]  # lamindb read no byte to hash a folder
    artifacts = list(ln.Artifact.filter(key__startswith=f"{dirpath}/checkpoints/"))
    assert {Path(a.key).name for a in artifacts} == {"epoch=1-step=4.ckpt", "epoch=2-step=6.ckpt", "last.ckpt"}
    for artifact in artifacts:
        size, digest, hash_type, n_files = hash_dir(Path(artifact.path))  # lamindb's own hashing, here in the test
        assert (artifact.hash, artifact.size, artifact.n_files) == (digest, size, n_files) and n_files == 4, artifact
    read = {rank: Counter(Path(p).name for p in seen[rank]["read"]) for rank in (0, 1)}
    if publishing == "inline":  # 6 saves (3 epochs and 3 last.ckpt), each shard read by its writer only
        assert read[1] == {"__1_0.distcp": 6}, read
        assert read[0] == {"__0_0.distcp": 6, ".metadata": 6, "meta.pt": 6}, read
    else:  # off training, on rank 0 only: each folder it published read once
        assert read[1] == {} and read[0], read
        assert max(Counter(seen[0]["read"]).values()) == 1, seen[0]["read"]
        assert set(read[0]) == set(SHARDS)
