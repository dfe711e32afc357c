"""Faults and trust II: a replay acts only on what its own fit could have written, and re-saves of a key that the store
refused leave one current artifact after `sync`. `tests/README.md` tabulates them."""
from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl

from faults import sync
from lamin_lightning.testing import TinyData, TinyModel, tiny_trainer, use_test_instance


class FailFrom(pl.Callback):
    "From training epoch `epoch` on, every `Artifact.save` raises: the store refuses writes to the end of the fit."

    def __init__(self, epoch: int, failing: dict) -> None:
        self.epoch, self.failing = epoch, failing

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            self.failing["on"] = True


def test_resaves_refused_then_synced_leave_one_current(tmp_path: Path, monkeypatch) -> None:
    "A refused store over three re-saves of `last.ckpt`: after `sync`, one artifact under the key, the newest bytes."
    use_test_instance()
    import lamindb as ln
    from django.db.utils import OperationalError

    import lamin_lightning as ll

    failing = {"on": False}
    save = ln.Artifact.save

    def refusing_save(self, *args, **kwargs):
        if failing["on"]:
            raise OperationalError("database or disk is full")
        return save(self, *args, **kwargs)

    monkeypatch.setattr(ln.Artifact, "save", refusing_save)
    dirpath = tmp_path / "ckpts"
    callback = ll.Checkpoint(dirpath=dirpath, monitor="val_loss", save_top_k=1, save_last=True,
                             enable_version_counter=False)
    trainer = tiny_trainer(tmp_path, [callback, FailFrom(1, failing)], logger=False, max_epochs=4)
    trainer.fit(TinyModel(), TinyData())
    key = f"{dirpath}/checkpoints/last.ckpt"
    assert ln.Artifact.filter(key=key).count() == 1  # epoch 0's, published before the store refused
    failing["on"] = False
    done = sync(dirpath)
    assert done.returncode == 0, done.stderr[-2000:]
    artifacts = list(ln.Artifact.filter(key=key))
    assert len(artifacts) == 1, [(a.uid, a.is_latest) for a in artifacts]
    assert Path(artifacts[0].path).read_bytes() == (dirpath / "last.ckpt").read_bytes()
    assert artifacts[0].is_latest
