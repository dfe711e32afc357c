"""Drop-in for both: what `ModelCheckpoint` users and lamindb users already rely on, with a real Trainer and instance."""
from __future__ import annotations

import argparse
import builtins
import copy
import inspect
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Literal

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.io import AsyncCheckpointIO

from faults import sync
from lamin_lightning.testing import TinyData, TinyModel, tiny_trainer, use_test_instance


def listing(folder: Path) -> list[str]:
    "Every entry under `folder`, hidden ones included, relative to it."
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def ckpt_kwargs(dirpath: Path) -> dict:
    return dict(dirpath=dirpath, monitor="val_loss", save_top_k=2, save_last=True, every_n_epochs=1)


@pytest.mark.parametrize("async_publish", [False, True, "process"], ids=["inline", "async", "process"])
def test_folder_holds_what_plain_modelcheckpoint_leaves(tmp_path: Path, async_publish: bool) -> None:
    use_test_instance()
    import lamin_lightning as ll

    plain = tmp_path / "plain"
    tiny_trainer(tmp_path, [ModelCheckpoint(**ckpt_kwargs(plain))], logger=False, max_epochs=4).fit(TinyModel(), TinyData())
    ours = tmp_path / "ours"
    callback = ll.Checkpoint(**ckpt_kwargs(ours), async_publish=async_publish)
    tiny_trainer(tmp_path, [callback], logger=False, max_epochs=4).fit(TinyModel(), TinyData())
    assert listing(ours) == listing(plain)  # no .lamin_lightning/, nothing else
    assert len(listing(ours)) == 3


def test_setup_without_fit_and_direct_saves_leave_no_journal(tmp_path: Path, monkeypatch) -> None:
    use_test_instance()
    import lamindb as ln

    import lamin_lightning as ll

    monkeypatch.chdir(tmp_path)  # as reported: `Trainer()` writes under the working directory
    trainer = pl.Trainer(logger=CSVLogger(tmp_path, name="lone"), enable_progress_bar=False)
    callback = ll.Checkpoint()
    callback.setup(trainer, TinyModel(), stage="fit")
    assert not list(tmp_path.rglob(".lamin_lightning"))
    assert not (tmp_path / "lightning_logs").exists()

    class Direct(ll.Checkpoint):
        "A subclass that saves last.ckpt itself, outside a fit."

    dirpath = tmp_path / "direct"
    direct = Direct(dirpath=dirpath, save_last=True)
    trainer = tiny_trainer(tmp_path, [direct], logger=False, max_epochs=1)
    trainer.fit(TinyModel(), TinyData())
    trainer.strategy.connect(TinyModel())
    direct._save_last_checkpoint(trainer, {"epoch": torch.tensor(5), "step": torch.tensor(9)})
    assert listing(dirpath) == ["epoch=0-step=2.ckpt", "last.ckpt"]  # published, and no journal left
    newest = ln.Artifact.filter(key=f"{dirpath}/checkpoints/last.ckpt").order_by("-id").first()
    assert Path(newest.path).read_bytes() == (dirpath / "last.ckpt").read_bytes()


def write_with(source: str, tmp_path: Path, dirpath: Path, ckpt_path: str | None = None) -> pl.Callback:
    "Train 3 epochs with `source`'s checkpoint callback into `dirpath`; returns the callback."
    kwargs = dict(dirpath=dirpath, monitor="val_loss", save_top_k=2, save_last=True, every_n_epochs=1)
    if source == "plain":
        callback = ModelCheckpoint(**kwargs)
    elif source == "lamindb":
        import lamindb_setup as ln_setup
        from lamindb.integrations.lightning import Checkpoint as LaminCheckpoint

        ln_setup.settings.instance._is_on_hub = False  # test only: lamindb's integration asks the hub otherwise
        callback = LaminCheckpoint(**kwargs)
    else:
        import lamin_lightning as ll

        callback = ll.Checkpoint(**kwargs)
    tiny_trainer(tmp_path, [callback], logger=False, max_epochs=3).fit(TinyModel(), TinyData(), ckpt_path=ckpt_path)
    return callback


class Capture(pl.Callback):
    "Records a checkpoint callback's restored state when training starts."

    def __init__(self, target: ModelCheckpoint) -> None:
        self.target, self.state = target, None

    def on_train_start(self, trainer, pl_module) -> None:
        self.state = restorable(self.target)


def restorable(callback: ModelCheckpoint) -> dict:
    "What `ModelCheckpoint.load_state_dict` restores with an unchanged dirpath, copied."
    return copy.deepcopy({k: v for k, v in callback.state_dict().items() if k not in ("dirpath", "current_score")})


@pytest.mark.parametrize("source", ["plain", "lamindb", "ours"])
def test_resume_restores_state_written_by_each(tmp_path: Path, source: str) -> None:
    use_test_instance()
    import lamindb as ln

    import lamin_lightning as ll

    dirpath = tmp_path / "ckpts"
    writer = write_with(source, tmp_path, dirpath)
    written = restorable(writer)
    assert written["best_model_path"] and len(written["best_k_models"]) == 2

    resumed = ll.Checkpoint(dirpath=dirpath, monitor="val_loss", save_top_k=2, save_last=True, every_n_epochs=1)
    capture = Capture(resumed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tiny_trainer(tmp_path, [resumed, capture], logger=False, max_epochs=4).fit(
            TinyModel(), TinyData(), ckpt_path=str(dirpath / "last.ckpt"))
    assert capture.state == written  # best_model_path, best_model_score, best_k_models, kth_*, last_model_path
    assert not [w for w in caught if "callbacks used to create the checkpoint" in str(w.message)]
    prefix = f"{dirpath}/checkpoints/"
    kept = {Path(p).name for p in resumed.best_k_models} | {"last.ckpt"}
    published = {a.key.removeprefix(prefix) for a in ln.Artifact.filter(key__startswith=prefix, suffix=".ckpt")}
    assert kept <= published  # files the restored state named are in LaminDB, with their scores
    if source == "plain":  # nothing of the first run was in LaminDB: published once at the resume, with scores
        for path, score in written["best_k_models"].items():
            if Path(path).exists():
                (artifact,) = ln.Artifact.filter(key=prefix + Path(path).name)
                assert artifact.features.get_values()["score"] == pytest.approx(float(score))


def test_plain_modelcheckpoint_resumes_from_ours(tmp_path: Path) -> None:
    use_test_instance()
    dirpath = tmp_path / "ckpts"
    ours = write_with("ours", tmp_path, dirpath)
    written = restorable(ours)
    plain = ModelCheckpoint(dirpath=dirpath, monitor="val_loss", save_top_k=2, save_last=True, every_n_epochs=1)
    capture = Capture(plain)
    tiny_trainer(tmp_path, [plain, capture], logger=False, max_epochs=4).fit(
        TinyModel(), TinyData(), ckpt_path=str(dirpath / "last.ckpt"))
    assert capture.state == written


def test_signatures_hold_types(tmp_path: Path) -> None:
    import lamin_lightning as ll
    from lamin_lightning.publishing import ArtifactPublishingModelCheckpoint

    for cls in (ll.Checkpoint, ArtifactPublishingModelCheckpoint, ll.SaveConfigCallback):
        for name, param in inspect.signature(cls).parameters.items():
            assert not isinstance(param.annotation, str), (cls.__name__, name, param.annotation)
    parser = argparse.ArgumentParser()
    top_k = inspect.signature(ll.Checkpoint).parameters["save_top_k"]
    parser.add_argument("--save_top_k", type=top_k.annotation, default=top_k.default)
    assert parser.parse_args(["--save_top_k", "3"]).save_top_k == 3
    assert inspect.signature(ll.Checkpoint).parameters["save_last"].annotation == bool | Literal["link"] | None


def test_lightning_calling_conventions() -> None:
    import lamin_lightning as ll

    assert isinstance(inspect.getattr_static(ll.Checkpoint, "_link_checkpoint"), staticmethod)
    for name, member in vars(ModelCheckpoint).items():
        ours = inspect.getattr_static(ll.Checkpoint, name)
        if ours is member or not callable(getattr(ModelCheckpoint, name, None)) or name.startswith("__"):
            continue
        assert type(ours) is type(member), name  # static stays static, instance stays instance
        if inspect.isfunction(member):
            theirs = [(p.name, p.kind) for p in inspect.signature(member).parameters.values()]
            mine = [(p.name, p.kind) for p in inspect.signature(ours).parameters.values()]
            assert mine == theirs, name
    positional = ll.Checkpoint("ckpts", "{epoch}", "val_loss", False, True, 3)
    assert (positional.dirpath.endswith("ckpts"), positional.filename, positional.monitor, positional.save_last,
            positional.save_top_k) == (True, "{epoch}", "val_loss", True, 3)


def test_keyword_only_hooks_work(tmp_path: Path) -> None:
    "A subclass written for lamindb's calling convention: every hook takes keyword-only parameters."
    use_test_instance()
    import lamin_lightning as ll

    calls: list[str] = []

    class KeywordOnly(ll.Checkpoint):
        def resolve_artifact_key(self, *, trainer, filepath, kind):
            calls.append("key")
            return super().resolve_artifact_key(trainer=trainer, filepath=filepath, kind=kind)

        def resolve_artifact_storage_uri(self, *, artifact):
            calls.append("uri")
            return super().resolve_artifact_storage_uri(artifact=artifact)

        def save_checkpoint_artifact(self, *, trainer, filepath, feature_values=None):
            calls.append("save")
            return super().save_checkpoint_artifact(trainer=trainer, filepath=filepath, feature_values=feature_values)

        def save_hparams_artifact(self, *, trainer, hparams_path):
            calls.append("hparams")
            return super().save_hparams_artifact(trainer=trainer, hparams_path=hparams_path)

        def remove_checkpoint_artifact(self, *, trainer, filepath):
            calls.append("remove")
            return super().remove_checkpoint_artifact(trainer=trainer, filepath=filepath)

        def on_artifact_saved(self, *, event):
            calls.append("saved")

        def on_artifact_removed(self, *, event):
            calls.append("removed")

    callback = KeywordOnly(monitor="val_loss", save_top_k=1, save_last="link", every_n_epochs=1)
    tiny_trainer(tmp_path, [callback], logger=CSVLogger(tmp_path, name="kw"), max_epochs=3).fit(TinyModel(), TinyData())
    assert {"key", "uri", "save", "hparams", "remove", "saved", "removed"} <= set(calls)
    assert (Path(callback.dirpath) / "last.ckpt").is_symlink()


def other_filesystem() -> Path | None:
    "A writable folder on another filesystem than the temporary folder (and so the test instance), if there is one."
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and os.stat(shm).st_dev != os.stat(tempfile.gettempdir()).st_dev:
        return shm
    return None


@pytest.mark.parametrize("layout", ["virtual", "virtual-other-fs", "real-key", "real-key-other-fs"])
def test_delete_asks_nothing_and_takes_the_bytes(tmp_path: Path, monkeypatch, request, layout: str) -> None:
    """No question for virtual keys (lamindb's integration asks none either); for `key_is_virtual=False` lamindb asks
    of every artifact with a real key, its own included, so `storage=True` answers. One copy on one filesystem."""
    root = use_test_instance()
    import lamindb as ln

    import lamin_lightning as ll

    def no_prompt(*args, **kwargs):
        raise AssertionError(f"prompted: {args}")

    monkeypatch.setattr(builtins, "input", no_prompt)
    base = tmp_path
    if layout.endswith("other-fs"):
        if (other := other_filesystem()) is None:
            pytest.skip("no second filesystem here")
        base = Path(tempfile.mkdtemp(dir=other))
        request.addfinalizer(lambda: shutil.rmtree(base, ignore_errors=True))
    monkeypatch.chdir(base)  # a real key needs a relative dirpath: it is a path under the storage root
    virtual = layout.startswith("virtual")
    dirpath = f"del-{layout}"
    callback = ll.Checkpoint(dirpath=dirpath, monitor="val_loss", save_top_k=2, save_last=True, every_n_epochs=1,
                             key_is_virtual=virtual)
    tiny_trainer(base, [callback], logger=CSVLogger(base, name="del"), max_epochs=3).fit(TinyModel(), TinyData())
    artifacts = list(ln.Artifact.filter(key__startswith=callback.checkpoint_key_prefix))
    assert {Path(a.key).suffix for a in artifacts} == {".ckpt", ".yaml"}  # checkpoints and hparams.yaml
    same_fs = os.stat(base).st_dev == os.stat(root).st_dev
    for artifact in artifacts:
        stored = Path(artifact.path)
        local = base / dirpath / Path(artifact.key).name
        assert stored.is_relative_to(root / ".lamindb") if virtual else stored == root / artifact.key
        if local.exists():
            assert (os.stat(stored).st_ino == os.stat(local).st_ino) == same_fs  # one copy on one filesystem
        artifact.delete(permanent=True, **({} if virtual else {"storage": True}))
        assert not stored.exists()  # the bytes went with the record
    assert not ln.Artifact.filter(key__startswith=callback.checkpoint_key_prefix).exists()
    assert (base / dirpath / "last.ckpt").exists()  # Lightning's own files stay


def test_real_keys_need_a_relative_dirpath(tmp_path: Path) -> None:
    import lamin_lightning as ll

    with pytest.raises(ValueError, match="key_is_virtual=False.*relative dirpath"):
        ll.Checkpoint(dirpath=tmp_path / "ckpts", key_is_virtual=False)


def test_async_checkpoint_io_loses_nothing_silently(tmp_path: Path) -> None:
    "Each checkpoint is published, or kept in the journal and listed by `sync`; `sync` then publishes the rest."
    use_test_instance()
    import lamindb as ln

    import lamin_lightning as ll

    dirpath = tmp_path / "ckpts"
    callback = ll.Checkpoint(**ckpt_kwargs(dirpath))
    tiny_trainer(tmp_path, [callback], logger=False, max_epochs=4, plugins=[AsyncCheckpointIO()]).fit(TinyModel(), TinyData())
    prefix = f"{dirpath}/checkpoints/"
    on_disk = {p.name for p in dirpath.glob("*.ckpt")}
    result = sync(dirpath)
    assert result.returncode in (0, 2), result.stdout + result.stderr
    published = {a.key.removeprefix(prefix) for a in ln.Artifact.filter(key__startswith=prefix, suffix=".ckpt")}
    assert on_disk <= published, (published, on_disk, result.stdout)  # nothing marked done that is not in LaminDB
    # Whether each artifact holds the final bytes of an asynchronously written file is the way-back issue's CheckpointIO.


def test_wrong_value_type_never_stops_training(tmp_path: Path, caplog) -> None:
    use_test_instance()
    import lamindb as ln

    import lamin_lightning as ll

    ln.Feature(name="epoch_count", dtype=int).save()
    ln.Feature(name="loss_label", dtype=str).save()

    class Counting(TinyModel):
        def validation_step(self, batch, batch_idx):
            super().validation_step(batch, batch_idx)
            self.log("epoch_count", float(self.current_epoch + 1))  # a float with an integral value
            self.log("loss_label", 0.5)  # a float where the feature wants a str

    dirpath = tmp_path / "ckpts"
    callback = ll.Checkpoint(**ckpt_kwargs(dirpath), features={"artifact": {"epoch_count": None, "loss_label": None}})
    with caplog.at_level(logging.WARNING), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = tiny_trainer(tmp_path, [callback], logger=False, max_epochs=3)
        trainer.fit(Counting(), TinyData())
    assert trainer.current_epoch == 3
    setup_warnings = [str(w.message) for w in caught if "but takes the logged metric" in str(w.message)]
    assert len(setup_warnings) == 2 and all("dtype=float" in w for w in setup_warnings)  # one per non-float feature
    save_warnings = [r for r in caplog.records if "Feature 'loss_label'" in r.getMessage()]
    assert len(save_warnings) == 1 and "published without it" in save_warnings[0].getMessage()
    last = ln.Artifact.get(key=f"{dirpath}/checkpoints/last.ckpt")
    values = last.features.get_values()
    assert values["epoch_count"] == 3 and "loss_label" not in values and values["is_last_model"] is True


COUNTING = '''
import os, sys
from pathlib import Path

import torch
from lightning.pytorch.callbacks import ModelCheckpoint

import lamin_lightning as ll
from lamin_lightning.testing import TinyData, TinyModel, tiny_trainer, use_test_instance

kind, dirpath, counts = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
base = ModelCheckpoint if kind == "plain" else ll.Checkpoint


class Counting(base):
    "Counts its `state_dict()` calls, one file per process, as Lightning's own tests count them."

    def state_dict(self):
        with open(counts / f"{kind}-{os.getpid()}", "a") as f:
            f.write("x")
        return super().state_dict()


if __name__ == "__main__":
    use_test_instance()
    callback = Counting(dirpath=dirpath, monitor="val_loss", save_top_k=-1, every_n_epochs=1)
    trainer = tiny_trainer(dirpath.parent, [callback], logger=False, max_epochs=4, strategy="ddp_spawn", devices=2)
    trainer.fit(TinyModel(), TinyData())
'''


@pytest.mark.slow
def test_one_state_dict_per_save_as_plain_modelcheckpoint(tmp_path: Path) -> None:
    "A subclass counting `state_dict()` under `ddp_spawn` on 2 CPU processes, 4 epochs: as many calls as plain's."
    import subprocess
    import sys

    use_test_instance()
    script, counts = tmp_path / "counting.py", tmp_path / "counts"
    script.write_text(COUNTING)
    counts.mkdir()
    for kind in ("plain", "ours"):
        result = subprocess.run([sys.executable, str(script), kind, str(tmp_path / kind / "ckpts"), str(counts)],
                                cwd=tmp_path, env={**os.environ, "PYTHONWARNINGS": "ignore"}, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    per_process = {kind: sorted(len(p.read_text()) for p in counts.glob(f"{kind}-*")) for kind in ("plain", "ours")}
    assert per_process["plain"] == [4, 4]  # measured: one call per save on each of the 2 processes
    assert per_process["ours"] == per_process["plain"]
    saved = torch.load(tmp_path / "ours" / "ckpts" / "epoch=3-step=8.ckpt", weights_only=False)["callbacks"]
    keys = [k for k in saved if k.startswith(("Counting{", "ModelCheckpoint{"))]
    assert len(keys) == 2, list(saved)  # both state keys written ...
    assert saved[keys[0]] is saved[keys[1]]  # ... as the same object, computed once
    assert saved[keys[0]]["best_model_path"].endswith(".ckpt")
