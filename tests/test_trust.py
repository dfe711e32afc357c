"""Faults and trust II: a replay acts only on what its own fit could have written, and re-saves of a key that the store
refused leave one current artifact after `sync`. `tests/README.md` tabulates them."""
from __future__ import annotations

import os
from pathlib import Path

import lightning.pytorch as pl
import pytest

from faults import sync
from lamin_lightning.testing import TinyData, TinyModel, tiny_trainer, use_test_instance


class FailFrom(pl.Callback):
    "From training epoch `epoch` on, every `Artifact.save` raises: the store refuses writes to the end of the fit."

    def __init__(self, epoch: int, failing: dict) -> None:
        self.epoch, self.failing = epoch, failing

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            self.failing["on"] = True


def refuse_saves_when_on(monkeypatch) -> dict:
    "Patch `Artifact.save` to raise while the returned switch is on (`FailFrom` turns it on)."
    import lamindb as ln
    from django.db.utils import OperationalError

    failing = {"on": False}
    save = ln.Artifact.save

    def refusing_save(self, *args, **kwargs):
        if failing["on"]:
            raise OperationalError("database or disk is full")
        return save(self, *args, **kwargs)

    monkeypatch.setattr(ln.Artifact, "save", refusing_save)
    return failing


@pytest.mark.parametrize("virtual", [True, False], ids=["virtual-keys", "real-keys"])
def test_resaves_refused_then_synced_leave_one_current(tmp_path: Path, monkeypatch, virtual: bool) -> None:
    """A refused store over three re-saves of `last.ckpt`: after `sync`, one artifact under the key, the newest bytes
    (with real keys, the replay's ownership checks let the fit's own earlier `last.ckpt` be retired)."""
    use_test_instance()
    import lamindb as ln

    import lamin_lightning as ll

    failing = refuse_saves_when_on(monkeypatch)
    monkeypatch.chdir(tmp_path)
    relative = f"ckpts-{tmp_path.name}"  # real keys are relative: unique in the instance the worker's tests share
    dirpath = tmp_path / relative
    callback = ll.Checkpoint(dirpath=dirpath if virtual else relative, monitor="val_loss", save_top_k=1,
                             save_last=True, enable_version_counter=False, key_is_virtual=virtual)
    trainer = tiny_trainer(tmp_path, [callback, FailFrom(1, failing)], logger=False, max_epochs=4)
    trainer.fit(TinyModel(), TinyData())
    key = f"{dirpath if virtual else relative}/checkpoints/last.ckpt"
    assert ln.Artifact.filter(key=key).count() == 1, list(ln.Artifact.filter(key__endswith="last.ckpt"))  # epoch 0's, published before the store refused
    failing["on"] = False
    done = sync(dirpath)
    assert done.returncode == 0, done.stderr[-2000:]
    artifacts = list(ln.Artifact.filter(key=key))
    assert len(artifacts) == 1, [(a.uid, a.is_latest) for a in artifacts]
    assert Path(artifacts[0].path).read_bytes() == (dirpath / "last.ckpt").read_bytes()
    assert artifacts[0].is_latest


def _journal(home: Path, *entries, done: dict[str, int] | None = None) -> Path:
    "A journal written by hand in `home/.lamin_lightning/`, for the connected instance."
    import json

    import lamindb_setup as ln_setup

    folder = home / ".lamin_lightning"
    folder.mkdir(parents=True, exist_ok=True, mode=0o755)
    path = folder / "20260101-000000-crafted0.jsonl"
    lines = [{"lamin_lightning_journal": 1, "instance": ln_setup.settings.instance.slug}]
    lines += [{"entry": e.to_json()} for e in entries]
    lines += [{"done": e, "artifact": a} for e, a in (done or {}).items()]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    os.chmod(path, 0o644)
    return path


def _victim(root: Path, name: str = "victim.txt") -> "ln.Artifact":  # noqa: F821
    "An unrelated artifact registered in place in the storage (its path is `{root}/user/{name}`)."
    import lamindb as ln

    (root / "user").mkdir(exist_ok=True)
    (root / "user" / name).write_bytes(b"precious data")
    return ln.Artifact(root / "user" / name, description="not a checkpoint").save()


def _fitted(tmp_path: Path) -> Path:
    "A real fit's checkpoint folder: the home a crafted journal is dropped into."
    import lamin_lightning as ll

    dirpath = tmp_path / "ckpts"
    trainer = tiny_trainer(tmp_path, [ll.Checkpoint(dirpath=dirpath, save_top_k=1)], logger=False, max_epochs=1)
    trainer.fit(TinyModel(), TinyData())
    return dirpath


def test_stored_at_another_artifacts_key_is_refused(tmp_path: Path) -> None:
    "`stored == key == 'user/victim.txt'`: the victim's bytes stay, no artifact is made, the refusal names line and field."
    root = use_test_instance()
    import lamindb as ln

    from lamin_lightning.journal import Entry
    from lamin_lightning.publisher import sync as replay_all

    victim = _victim(root)
    home = _fitted(tmp_path)
    (home / "evil.txt").write_bytes(b"crafted bytes")
    before = ln.Artifact.objects.count()
    journal = _journal(home, Entry("save", "user/victim.txt", kind="config", path="evil.txt", stored="user/victim.txt"))
    report = replay_all(home)
    assert (root / "user" / "victim.txt").read_bytes() == b"precious data"
    assert Path(ln.Artifact.get(id=victim.id).path).read_bytes() == b"precious data"
    assert ln.Artifact.objects.count() == before and ln.Artifact.filter(key="user/victim.txt").count() == 1
    assert len(report.refused) == 1 and str(journal) in report.refused[0], report.refused
    assert "line 2" in report.refused[0] and "field 'stored'" in report.refused[0], report.refused


def test_stored_at_the_database_is_refused(tmp_path: Path) -> None:
    "`stored == key == '.lamindb/lamin.db'`: the database file is untouched and the instance still opens."
    import hashlib

    root = use_test_instance()
    import lamindb as ln

    from lamin_lightning.journal import Entry
    from lamin_lightning.publisher import sync as replay_all

    home = _fitted(tmp_path)
    database = root / ".lamindb" / "lamin.db"
    assert database.exists()
    (home / "evil.db").write_bytes(b"not a database")
    before, count = hashlib.sha256(database.read_bytes()).hexdigest(), ln.Artifact.objects.count()
    _journal(home, Entry("save", ".lamindb/lamin.db", kind="config", path="evil.db", stored=".lamindb/lamin.db"))
    report = replay_all(home)
    assert database.read_bytes()[:15] == b"SQLite format 3"
    assert not database.read_bytes().startswith(b"not a database")
    assert ln.Artifact.objects.count() == count  # the instance opens, nothing was registered
    assert len(report.refused) == 1 and "line 2" in report.refused[0] and "field 'stored'" in report.refused[0]
    assert before  # the database may change (sqlite pages), never to the crafted bytes


def test_remove_naming_an_unrelated_artifact_is_refused(tmp_path: Path) -> None:
    "A remove entry whose `known` names an unrelated artifact id: the artifact and its file stay."
    root = use_test_instance()
    import lamindb as ln

    from lamin_lightning.journal import Entry
    from lamin_lightning.publisher import sync as replay_all

    victim = _victim(root, "kept.txt")
    home = _fitted(tmp_path)
    fake = "0123456789abcdef"
    _journal(home, Entry("remove", "user/kept.txt", replaces=fake, known={fake: victim.id}))
    report = replay_all(home)
    assert ln.Artifact.objects.filter(id=victim.id).exists()
    assert (root / "user" / "kept.txt").read_bytes() == b"precious data"
    assert len(report.refused) == 1 and "line 2" in report.refused[0] and "field 'known'" in report.refused[0]


def test_symlinked_journal_folder_is_refused(tmp_path: Path) -> None:
    "`.lamin_lightning/` a symlink to another run's journal folder: refused, nothing registered from this folder."
    use_test_instance()
    import lamindb as ln

    from lamin_lightning.journal import Entry
    from lamin_lightning.publisher import sync as replay_all

    other = tmp_path / "other"
    (other / "model.ckpt").parent.mkdir()
    _journal(other, Entry("save", "other/model.ckpt", path="model.ckpt"))
    home = tmp_path / "mine"
    home.mkdir()
    (home / "model.ckpt").write_bytes(b"this folder's bytes")
    (home / ".lamin_lightning").symlink_to(other / ".lamin_lightning")
    report = replay_all(home)
    assert ln.Artifact.filter(key="other/model.ckpt").count() == 0
    assert len(report.refused) == 1 and "symbolic link" in report.refused[0], report.refused
    assert (other / ".lamin_lightning" / "20260101-000000-crafted0.jsonl").exists()  # kept for its own folder


def test_superseded_resave_committed_before_a_kill(tmp_path: Path, monkeypatch) -> None:
    """A re-save of `last.ckpt` committed before a kill, its `done` line and the old one's retirement lost, while a newer
    re-save waits (what SIGTERM then SIGKILL 0.3 s later can leave): after `sync`, one artifact, the newest bytes."""
    use_test_instance()
    import lamindb as ln

    import lamin_lightning as ll
    from lamin_lightning.journal import Contents
    from lamin_lightning.store import Store

    failing = refuse_saves_when_on(monkeypatch)
    dirpath = tmp_path / "ckpts"
    callback = ll.Checkpoint(dirpath=dirpath, monitor="val_loss", save_top_k=1, save_last=True,
                             enable_version_counter=False)
    trainer = tiny_trainer(tmp_path, [callback, FailFrom(1, failing)], logger=False, max_epochs=4)
    trainer.fit(TinyModel(), TinyData())
    failing["on"] = False
    (journal,) = (dirpath / ".lamin_lightning").glob("*.jsonl")
    contents = Contents.read(journal)
    replaced = {e.replaces for e in contents.entries}
    superseded = next(e for e in contents.open_entries if e.key.endswith("/last.ckpt") and e.id in replaced)
    monkeypatch.setattr(Store, "_retire", lambda self, entry_id, keep_file: None)  # killed before the old one goes
    Store(dirpath).persist(superseded)  # committed; no `done` line
    monkeypatch.undo()
    key = f"{dirpath}/checkpoints/last.ckpt"
    assert ln.Artifact.filter(key=key).count() == 2
    done = sync(dirpath)
    assert done.returncode == 0, done.stderr[-2000:]
    artifacts = list(ln.Artifact.filter(key=key))
    assert len(artifacts) == 1, [(a.uid, a.is_latest) for a in artifacts]
    assert Path(artifacts[0].path).read_bytes() == (dirpath / "last.ckpt").read_bytes()
