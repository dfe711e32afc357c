"""Group commit (issue 27, item 2): saves that wait together are published in one transaction, with the results that
publishing them one at a time gives (flags, ranks, events in order), and a group that fails changes nothing."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from faults import assert_consistent
from lamin_lightning.testing import EventRecorder, TinyData, TinyModel, tiny_trainer, use_test_instance

SAVES = 60


def fit_keep_all(tmp_path: Path, name: str, **kwargs):
    import lamin_lightning as ll

    recorder = EventRecorder()
    callback = ll.Checkpoint(dirpath=tmp_path / name, monitor="train_loss", save_top_k=-1, every_n_train_steps=1,
                             artifact_observers=[recorder], **kwargs)
    trainer = tiny_trainer(tmp_path / name, [callback], logger=False, max_epochs=1, max_steps=SAVES,
                           limit_train_batches=SAVES, limit_val_batches=0)
    trainer.fit(TinyModel(lr=0.01), TinyData(n=8 * SAVES))
    return callback, recorder


@pytest.fixture
def groups(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of entries each group transaction committed (0 for one that rolled back); the first publication is
    slow, so that the saves after it wait together."""
    from lamin_lightning.store import Store

    sizes: list[int] = []
    calls: list[str] = []
    together, persist = Store.together, Store.persist

    def counted(self):
        start = len(calls)
        try:
            with together(self):
                yield
        except Exception:
            sizes.append(0)
            raise
        sizes.append(len(calls) - start)

    def slow_first(self, entry):
        calls.append(entry.id)
        if len(calls) == 1:
            time.sleep(1.0)  # the database is busy: training goes on, and its saves wait together
        return persist(self, entry)

    from contextlib import contextmanager

    monkeypatch.setattr(Store, "together", contextmanager(counted))
    monkeypatch.setattr(Store, "persist", slow_first)
    return sizes


def test_saves_that_wait_together_are_committed_together(tmp_path: Path, groups: list[int]) -> None:
    "A backlog in the background: published in groups, with the ranks, flags and events of the inline fit."
    use_test_instance()
    import lamindb as ln

    callback, recorder = fit_keep_all(tmp_path, "grouped", async_publish=True)
    assert groups and max(groups) > 1 and sum(groups) >= SAVES // 2, groups  # most saves waited, committed in groups
    assert max(groups) <= 16  # GROUP: a transaction holds SQLite's write lock briefly
    ranked = sorted(callback.best_k_models, key=lambda p: float(callback.best_k_models[p]))
    by_step = sorted(callback.best_k_models, key=lambda p: int(Path(p).stem.split("step=")[1]))
    assert ranked != by_step, "the score was monotonic: no rank shifts to check"
    assert_consistent(tmp_path / "grouped", f"{tmp_path / 'grouped'}/checkpoints", callback.best_k_models,
                      callback.best_model_path)
    saved = [key for event, _, key in recorder.summary() if event == "saved"]
    assert [Path(k).name for k in saved] == [Path(p).name for p in by_step]  # one event each, in the order of the saves
    assert ln.Artifact.filter(key__startswith=f"{tmp_path / 'grouped'}/checkpoints/").count() == SAVES


def test_a_group_that_fails_is_published_one_at_a_time(tmp_path: Path, groups: list[int],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The third persist of the first group fails: the group rolls back (none of its artifacts or feature values
    stays, the store forgets the ids it learnt in it) and its entries are published alone, with the same end state."""
    use_test_instance()
    import lamindb as ln
    from django.db.utils import OperationalError

    from lamin_lightning.store import Store

    persist, in_group = Store.persist, []

    def fails_once_in_a_group(self, entry):
        if self._grouped is not None and not groups:  # inside the first group transaction
            in_group.append(entry.id)
            if len(in_group) == 3:
                raise OperationalError("disk I/O error")
        return persist(self, entry)

    monkeypatch.setattr(Store, "persist", fails_once_in_a_group)
    callback, recorder = fit_keep_all(tmp_path, "rolled", async_publish=True)
    assert groups[0] == 0 and len(in_group) == 3, (groups, in_group)  # the first group rolled back
    assert max(groups) > 1  # later ones committed
    dirpath = tmp_path / "rolled"
    assert_consistent(dirpath, f"{dirpath}/checkpoints", callback.best_k_models, callback.best_model_path)
    assert ln.Artifact.filter(key__startswith=f"{dirpath}/checkpoints/").count() == SAVES
    assert len([key for event, _, key in recorder.summary() if event == "saved"]) == SAVES  # one event each


def test_evictions_in_a_group_delete_bytes_only_once_it_commits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`save_top_k=3` and `save_last`: the store refuses every write after the tenth, so the journal keeps saves,
    evictions of published checkpoints and re-saves of `last.ckpt`; `sync` publishes them in groups. The first group
    with an eviction fails right after it: once rolled back, every artifact in LaminDB still has its bytes (the
    eviction's deletion waited for a commit that never came). At the end LaminDB holds the kept files, and nothing of
    the evicted ones is left in the storage."""
    root = use_test_instance()
    import lamindb as ln
    from django.db.utils import OperationalError

    import lamin_lightning as ll
    from lamin_lightning.store import Store

    dirpath, managed = tmp_path / "topk", root / ".lamindb"
    before = set(managed.iterdir()) if managed.exists() else set()
    persist, together = Store.persist, Store.together
    calls, groups, failed, missing = [], [], [], []

    def refused_then_failing_after_an_eviction(self, entry):
        calls.append(entry.id)
        if len(calls) > 10 and not groups:  # the fit: refused from the eleventh write on
            raise ConnectionError("refused")
        result = persist(self, entry)
        if self._grouped is not None and entry.op == "remove" and result is not None and not failed:
            failed.append(entry.id)
            raise OperationalError("disk I/O error")  # the eviction's row was deleted in this transaction
        return result

    def counted(self):
        groups.append(0)
        try:
            with together(self):
                yield
        except OperationalError:  # rolled back: every artifact of the fit has its bytes
            missing.extend(a.key for a in ln.Artifact.filter(key__startswith=f"{dirpath}/") if not Path(a.path).exists())
            raise
        groups[-1] = 1

    from contextlib import contextmanager

    monkeypatch.setattr(Store, "persist", refused_then_failing_after_an_eviction)
    monkeypatch.setattr(Store, "together", contextmanager(counted))
    callback = ll.Checkpoint(dirpath=dirpath, monitor="train_loss", save_top_k=3, save_last=True, every_n_train_steps=1)
    trainer = tiny_trainer(dirpath, [callback], logger=False, max_epochs=1, max_steps=SAVES,
                           limit_train_batches=SAVES, limit_val_batches=0)
    trainer.fit(TinyModel(lr=0.01), TinyData(n=8 * SAVES))
    assert not groups  # while the store refuses, each entry is tried alone
    assert ll.sync(dirpath).exit_code == 0
    assert failed and not missing, (failed, missing)  # a group with an eviction rolled back, and no bytes went with it
    assert sum(groups) > 1, groups  # later groups committed
    assert_consistent(dirpath, f"{dirpath}/checkpoints", callback.best_k_models, callback.best_model_path)
    kept = {Path(a.path) for a in ln.Artifact.filter(key__startswith=f"{dirpath}/")}
    assert set(managed.iterdir()) - before <= kept  # the evicted checkpoints' bytes are gone from the storage
