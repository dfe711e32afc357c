"""The way back: `lamin://` references, lineage without `ln.track()`, what a run resumed from, `best.ckpt`, and
AsyncCheckpointIO, each with a real Trainer and a real instance."""
import os
import re
import threading
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import AsyncCheckpointIO, TorchCheckpointIO

from lamin_lightning.testing import TinyData, TinyModel, tiny_trainer, use_test_instance


def fit(tmp_path: Path, dirpath: Path, max_epochs: int, ckpt_path: str | None = None, model=None, **kwargs):
    import lamin_lightning as ll

    options = dict(dirpath=dirpath, monitor="val_loss", save_top_k=2, save_last=True, every_n_epochs=1) | kwargs
    callback = ll.Checkpoint(**options)
    trainer = tiny_trainer(tmp_path, [callback], logger=False, max_epochs=max_epochs)
    trainer.fit(model or TinyModel(), TinyData(), ckpt_path=ckpt_path)
    return trainer, callback


def runs_of(prefix: str) -> set:
    import lamindb as ln

    return set(ln.Artifact.filter(key__startswith=prefix).values_list("run__uid", flat=True))


def test_resume_by_reference_records_lineage_without_track(tmp_path: Path) -> None:
    use_test_instance()
    import lamindb as ln

    dirpath = tmp_path / "ckpts"
    first, _ = fit(tmp_path, dirpath, max_epochs=2)
    prefix = f"{dirpath}/checkpoints"
    last = ln.Artifact.get(key=f"{prefix}/last.ckpt")
    run1 = last.run
    assert ln.context.run is None and run1 is not None  # lineage without ln.track()
    assert (run1.status, run1.transform.key, run1.transform.kind) == ("completed", "test_way_back.py", "script")
    assert runs_of(prefix) == {run1.uid}  # every checkpoint is an output of that run

    second, callback = fit(tmp_path, dirpath, max_epochs=4, ckpt_path=f"lamin://{dirpath}@last")
    assert second.global_step == 8 and second.current_epoch == 4  # resumed at step 4, trained 2 more epochs
    new_last = ln.Artifact.filter(key=f"{prefix}/last.ckpt").order_by("-created_at", "-id").first()  # each fit's stays
    run2 = new_last.run
    assert run2 != run1 and run2.status == "completed"
    assert list(run2.input_artifacts.all()) == [last]  # the artifact it resumed from
    assert callback.best_model_path and Path(callback.best_model_path).exists()


@pytest.mark.parametrize("form", ["uid20", "uid16", "key", "best"])
def test_references_work_wherever_lightning_takes_a_path(tmp_path: Path, form: str) -> None:
    use_test_instance()
    import lamindb as ln

    import lamin_lightning as ll

    dirpath = tmp_path / "ckpts"
    model = TinyModel(lr=0.123)
    trainer, callback = fit(tmp_path, dirpath, max_epochs=2, model=model)
    best = ln.Artifact.filter(key__startswith=f"{dirpath}/").filter(is_best_model=True).one()
    reference = {"uid20": best.uid, "uid16": best.uid[:16], "key": best.key, "best": f"{dirpath}@best"}[form]
    reference = f"lamin://{reference}"
    assert Path(callback.best_model_path).name == Path(best.key).name

    loaded = TinyModel.load_from_checkpoint(reference)  # the fsspec protocol, no trainer
    assert loaded.hparams.lr == 0.123
    expected = torch.load(callback.best_model_path, weights_only=True)["state_dict"]
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in expected.items())
    assert TinyData.load_from_checkpoint(reference) is not None

    class Evaluated(TinyModel):
        def test_step(self, batch, batch_idx):
            self.log("test_loss", self._loss(batch))

        def predict_step(self, batch, batch_idx):
            return self._loss(batch)

    evaluator = tiny_trainer(tmp_path, [ll.Checkpoint(dirpath=tmp_path / "eval")], logger=False)
    batches = TinyData().val_dataloader()
    for run_stage in (evaluator.validate, evaluator.test, evaluator.predict):
        assert run_stage(Evaluated(lr=1.0), batches, ckpt_path=reference)
        assert evaluator.strategy.checkpoint_io.loaded.artifact == best  # read through our CheckpointIO
        assert evaluator.lightning_module.hparams.lr == 1.0  # the module's own; the weights come from the checkpoint
        assert torch.equal(evaluator.lightning_module.layer.weight, loaded.layer.weight)


def test_a_reference_that_matches_nothing_fails_before_training(tmp_path: Path) -> None:
    use_test_instance()
    from lamin_lightning.references import ReferenceNotFound

    import lamindb as ln

    steps = []

    class Counting(TinyModel):
        def training_step(self, batch, batch_idx):
            steps.append(batch_idx)
            return super().training_step(batch, batch_idx)

    runs = set(ln.Run.filter().values_list("id", flat=True))
    with pytest.raises(ReferenceNotFound, match=r"lamin://nowhere@best: no artifact with is_best_model=True under "
                                                r"the key prefix 'nowhere/'"):
        fit(tmp_path, tmp_path / "ckpts", max_epochs=1, ckpt_path="lamin://nowhere@best", model=Counting())
    assert steps == []
    assert set(ln.Run.filter().values_list("id", flat=True)) == runs  # no errored run of a fit that never trained
    assert not (tmp_path / "ckpts").exists()  # nor a folder of ours
    with pytest.raises(RuntimeError, match="boom"):  # a fit that trained, then failed: its run is kept, errored
        fit(tmp_path, tmp_path / "ckpts", max_epochs=1, model=type("Failing", (TinyModel,), {
            "training_step": lambda self, batch, batch_idx: (_ for _ in ()).throw(RuntimeError("boom"))})())
    errored = ln.Run.filter().exclude(id__in=runs)
    assert [r.status for r in errored] == ["errored"], [r.status for r in errored]
    with pytest.raises(ReferenceNotFound, match="no artifact with uid or key 'missing/x.ckpt'"):
        TinyModel.load_from_checkpoint("lamin://missing/x.ckpt")


class Stepping(TinyModel):
    "Counts every batch it sees, in any stage."

    def __init__(self, steps: list, **kwargs) -> None:
        super().__init__(**kwargs)
        self.steps = steps

    def training_step(self, batch, batch_idx):
        self.steps.append(("train", batch_idx))
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        self.steps.append(("validate", batch_idx))
        return super().validation_step(batch, batch_idx)

    def test_step(self, batch, batch_idx):
        self.steps.append(("test", batch_idx))

    def predict_step(self, batch, batch_idx):
        self.steps.append(("predict", batch_idx))
        return self._loss(batch)


@pytest.mark.parametrize("io", ["ours", "lightning", "async"])
@pytest.mark.parametrize("stage", ["fit", "validate", "test", "predict"])
@pytest.mark.parametrize("reference, looked_up", [
    ("lamin://nowhere@best", r"is_best_model=True under the key prefix 'nowhere/'"),
    ("lamin://nowhere/x.ckpt", r"uid or key 'nowhere/x.ckpt'"),
])
def test_a_bad_reference_fails_with_its_reason_whichever_io_opens_it(tmp_path: Path, io: str, stage: str,
                                                                     reference: str, looked_up: str) -> None:
    """Our `CheckpointIO` (a `Checkpoint` in the trainer), Lightning's own `TorchCheckpointIO` (which asks fsspec's
    `exists` first), and `AsyncCheckpointIO` around it: each stage fails before its first batch with what was looked up."""
    use_test_instance()
    import lamindb_setup as ln_setup

    import lamin_lightning as ll
    from lamin_lightning.references import ReferenceNotFound

    callbacks = [ll.Checkpoint(dirpath=tmp_path / "ckpts")] if io == "ours" else []
    plugins = [AsyncCheckpointIO()] if io == "async" else []
    trainer = tiny_trainer(tmp_path, callbacks, logger=False, max_epochs=1, plugins=plugins)
    steps: list = []
    batches = TinyData().val_dataloader()
    with pytest.raises(ReferenceNotFound) as caught:
        if stage == "fit":
            trainer.fit(Stepping(steps), TinyData(), ckpt_path=reference)
        else:
            getattr(trainer, stage)(Stepping(steps), batches, ckpt_path=reference)
    instance = ln_setup.settings.instance.slug
    assert str(caught.value).startswith(f"{reference}: no artifact with ")  # names the reference, ...
    assert re.search(looked_up, str(caught.value)) and repr(instance) in str(caught.value)  # ... what was looked up
    assert "Checkpoint file not found" not in str(caught.value)  # not Lightning's text, which drops both
    assert steps == []  # not one batch, in any stage


@pytest.mark.parametrize("how", ["reference", "local"])
def test_rotation_keeps_what_a_run_resumed_from(tmp_path: Path, how: str) -> None:
    "Resume into the same folder; the resumed-from checkpoint falls out of the top 1 and is kept, file and artifact."
    use_test_instance()
    import lamindb as ln

    class Worsening(TinyModel):  # later epochs score worse, then better than everything: rotation must act
        def validation_step(self, batch, batch_idx):
            self.log("val_loss", float({0: 3.0, 1: 1.0, 2: 2.0, 3: 0.5}[self.current_epoch]))

    dirpath = tmp_path / "ckpts"
    fit(tmp_path, dirpath, max_epochs=2, model=Worsening(), save_top_k=1, save_last=False)
    resumed = dirpath / "epoch=1-step=4.ckpt"
    artifact = ln.Artifact.get(key=f"{dirpath}/checkpoints/{resumed.name}")
    # a local path: Lightning's own protection; a reference: ours
    source = f"lamin://{artifact.uid}" if how == "reference" else str(resumed)
    _, callback = fit(tmp_path, dirpath, max_epochs=4, ckpt_path=source, model=Worsening(), save_top_k=1, save_last=False)
    assert Path(callback.best_model_path).name == "epoch=3-step=8.ckpt"  # epoch 1 fell out of the top 1
    assert resumed.exists()
    assert ln.Artifact.filter(uid=artifact.uid).exists()


def test_save_best_keeps_a_stable_best(tmp_path: Path) -> None:
    use_test_instance()
    import lamindb as ln

    dirpath = tmp_path / "ckpts"
    trainer, callback = fit(tmp_path, dirpath, max_epochs=3, save_best=True)
    link = dirpath / "best.ckpt"
    assert link.is_symlink() and os.path.realpath(link) == os.path.realpath(callback.best_model_path)
    prefix = f"{dirpath}/checkpoints"
    best = ln.Artifact.get(key=f"{prefix}/best.ckpt")  # published like last.ckpt: one artifact for the key
    assert best.hash == ln.Artifact.get(key=f"{prefix}/{Path(callback.best_model_path).name}").hash
    values = best.features.get_values()
    assert values["is_best_model"] is False and values["is_last_model"] is False  # the flags stay with the files
    assert values["score"] == pytest.approx(float(callback.best_model_score))
    flagged = ln.Artifact.filter(key__startswith=prefix).filter(is_best_model=True).one()
    assert Path(flagged.key).name == Path(callback.best_model_path).name  # @best resolves without best.ckpt
    from lamin_lightning.references import resolve

    assert resolve(f"lamin://{dirpath}@best") == flagged


class SlowIO(TorchCheckpointIO):
    "Writes late (a fault injected into the real IO): publishing must wait for the final bytes."

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        time.sleep(0.3)
        super().save_checkpoint(checkpoint, path, storage_options=storage_options)


def test_async_checkpoint_io_publishes_final_bytes(tmp_path: Path) -> None:
    use_test_instance()
    import lamindb as ln
    from lamindb_setup.core.hashing import hash_file

    dirpath = tmp_path / "ckpts"
    import lamin_lightning as ll

    callback = ll.Checkpoint(dirpath=dirpath, monitor="val_loss", save_top_k=-1, save_last=True, every_n_epochs=1)
    trainer = tiny_trainer(tmp_path, [callback], logger=False, max_epochs=4, plugins=[AsyncCheckpointIO(SlowIO())])
    trainer.fit(TinyModel(), TinyData())
    prefix = f"{dirpath}/checkpoints/"
    on_disk = {p.name: p for p in dirpath.glob("*.ckpt")}
    artifacts = {a.key.removeprefix(prefix): a for a in ln.Artifact.filter(key__startswith=prefix, suffix=".ckpt")}
    assert set(artifacts) == set(on_disk) and len(on_disk) == 5  # 4 epochs and last.ckpt: none missing
    for name, path in on_disk.items():
        assert artifacts[name].hash == hash_file(path)[1], name  # the final bytes, never a partial file
    assert not (dirpath / ".lamin_lightning").exists()  # nothing pending


def test_async_eviction_waits_for_the_write(tmp_path: Path) -> None:
    use_test_instance()
    import lamindb as ln

    dirpath = tmp_path / "ckpts"
    import lamin_lightning as ll

    callback = ll.Checkpoint(dirpath=dirpath, monitor="val_loss", save_top_k=1, every_n_epochs=1)
    trainer = tiny_trainer(tmp_path, [callback], logger=False, max_epochs=4, plugins=[AsyncCheckpointIO(SlowIO())])
    trainer.fit(TinyModel(), TinyData())
    assert [p.name for p in dirpath.glob("*.ckpt")] == [Path(callback.best_model_path).name]  # no zombie files
    keys = list(ln.Artifact.filter(key__startswith=f"{dirpath}/checkpoints/", suffix=".ckpt").values_list("key", flat=True))
    assert [Path(k).name for k in keys] == [Path(callback.best_model_path).name]


@pytest.mark.slow
def test_load_from_checkpoint_in_a_tracked_run_records_an_input(tmp_path: Path) -> None:
    use_test_instance()
    import lamindb as ln
    import lamindb_setup as ln_setup

    dirpath = tmp_path / "ckpts"
    fit(tmp_path, dirpath, max_epochs=1)
    best = ln.Artifact.filter(key__startswith=f"{dirpath}/").filter(is_best_model=True).one()
    ln_setup.settings.instance._is_on_hub = False  # a test-only way to run ln.track() offline
    ln.track(path=__file__)  # the test module, as a script (also after notebooks ran in this process)
    try:
        TinyModel.load_from_checkpoint(f"lamin://{best.uid}")
        assert best in ln.context.run.input_artifacts.all()
    finally:
        ln.finish()


def test_load_from_checkpoint_needs_no_import_of_the_package(tmp_path: Path) -> None:
    "fsspec finds the `lamin` protocol through the installed package's entry point."
    import subprocess
    import sys

    use_test_instance()
    import lamindb as ln

    fit(tmp_path, tmp_path / "ckpts", max_epochs=1)
    best = ln.Artifact.filter(key__startswith=f"{tmp_path}/ckpts/").filter(is_best_model=True).one()
    script = ("import sys, lightning.pytorch as pl\n"
              "from lamin_lightning.testing import TinyModel\n"  # a module that does not import the references
              "assert 'lamin_lightning.references' not in sys.modules\n"
              f"model = TinyModel.load_from_checkpoint('lamin://{best.uid}')\n"
              "print('loaded', model.hparams.lr)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0 and "loaded 0.05" in result.stdout, result.stderr[-2000:]
