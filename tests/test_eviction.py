"""The eviction path over many saves: after fit, LaminDB's ranks and flags equal Lightning's `best_k_models`."""
from __future__ import annotations

from pathlib import Path

import pytest

from faults import assert_consistent
from lamin_lightning.testing import TinyData, TinyModel, tiny_trainer, use_test_instance

SAVES = 200


@pytest.mark.parametrize("async_publish", [False, True, "process"], ids=["inline", "async", "process"])
def test_top3_over_200_saves(tmp_path: Path, async_publish: bool) -> None:
    use_test_instance()
    import lamin_lightning as ll

    dirpath = tmp_path / "ckpts"
    callback = ll.Checkpoint(dirpath=dirpath, monitor="train_loss", save_top_k=3, every_n_train_steps=1,
                             async_publish=async_publish)
    trainer = tiny_trainer(tmp_path, [callback], logger=False, max_epochs=1, max_steps=SAVES,
                           limit_train_batches=SAVES, limit_val_batches=0)
    trainer.fit(TinyModel(lr=0.01), TinyData(n=8 * SAVES))
    assert trainer.global_step == SAVES
    assert len(callback.best_k_models) == 3
    # every kept file once, same bytes; ranks and scores as best_k_models; one best, one last
    assert_consistent(dirpath, f"{dirpath}/checkpoints", callback.best_k_models, callback.best_model_path)


@pytest.mark.parametrize("async_publish", [False, True, "process"], ids=["inline", "async", "process"])
def test_keep_all_ranks_after_many_nonmonotonic_saves(tmp_path: Path, async_publish: bool) -> None:
    "Every checkpoint kept, a score that goes up and down: each save shifts the ranks of the worse ones (issue 27)."
    use_test_instance()
    import lamin_lightning as ll

    saves = 120
    dirpath = tmp_path / "ckpts"
    callback = ll.Checkpoint(dirpath=dirpath, monitor="train_loss", save_top_k=-1, every_n_train_steps=1,
                             async_publish=async_publish)
    trainer = tiny_trainer(tmp_path, [callback], logger=False, max_epochs=1, max_steps=saves,
                           limit_train_batches=saves, limit_val_batches=0)
    trainer.fit(TinyModel(lr=0.01), TinyData(n=8 * saves))
    assert len(callback.best_k_models) == saves
    by_step = sorted(callback.best_k_models, key=lambda p: int(Path(p).stem.split("step=")[1]))
    ranked = sorted(callback.best_k_models, key=lambda p: float(callback.best_k_models[p]))
    assert ranked != by_step and ranked != by_step[::-1], "the score was monotonic: no rank shifts to check"
    # LaminDB's model_rank of every checkpoint is its place in Lightning's ranking, and its score Lightning's
    assert_consistent(dirpath, f"{dirpath}/checkpoints", callback.best_k_models, callback.best_model_path)
    table = ll.checkpoints(f"{dirpath}/checkpoints")
    assert dict(zip(table["key"].map(lambda k: Path(k).name), table["model_rank"])) == \
        {Path(p).name: rank for rank, p in enumerate(ranked)}
