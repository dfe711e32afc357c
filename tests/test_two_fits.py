"""Two fits into the same dirpath without ln.track() share keys; the second never touches the first's artifacts."""
from pathlib import Path

from lamin_lightning.testing import TinyData, TinyModel, tiny_trainer, use_test_instance


def snapshot(ln, prefix: str) -> dict[int, dict]:
    return {a.id: a.features.get_values() for a in ln.Artifact.filter(key__startswith=prefix, suffix=".ckpt")}


def test_second_fit_leaves_first_fits_artifacts_alone(tmp_path: Path) -> None:
    use_test_instance()
    import lamindb as ln

    import lamin_lightning as ll

    dirpath = tmp_path / "shared"
    prefix = f"{dirpath}/checkpoints/"
    first = ll.Checkpoint(dirpath=dirpath, monitor="val_loss", save_top_k=2, every_n_epochs=1)
    tiny_trainer(tmp_path, [first], logger=False, max_epochs=3).fit(TinyModel(), TinyData())
    before = snapshot(ln, prefix)
    assert len(before) == 2 and sum(v["is_best_model"] for v in before.values()) == 1

    # a second, independent fit into the same folder: Lightning versions its filenames, it evicts its own files
    second = ll.Checkpoint(dirpath=dirpath, monitor="val_loss", save_top_k=1, every_n_epochs=1)
    tiny_trainer(tmp_path, [second], logger=False, max_epochs=3).fit(TinyModel(), TinyData())
    after = snapshot(ln, prefix)

    assert {i: after[i] for i in before} == before  # not deleted, unflagged or re-ranked
    mine = {i: v for i, v in after.items() if i not in before}
    assert len(mine) == 1  # the second fit's evicted checkpoints were retired, its kept one stays
    (values,) = mine.values()
    assert values["is_best_model"] and values["is_last_model"] and values["model_rank"] == 0
    assert all(Path(a.path).exists() for a in ln.Artifact.filter(id__in=list(after)))
