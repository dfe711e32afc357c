"""The eviction path over many saves: after fit, LaminDB's ranks and flags equal Lightning's `best_k_models`."""
from __future__ import annotations

from pathlib import Path

import pytest

from faults import assert_consistent
from lamin_lightning.testing import TinyData, TinyModel, tiny_trainer, use_test_instance

SAVES = 200


@pytest.mark.parametrize("async_publish", [False, True], ids=["inline", "async"])
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
