"""The private lamindb pieces the package uses, each in one place: these fail when lamindb changes them."""
import builtins
from pathlib import Path

from lamin_lightning.testing import use_test_instance


def test_register_managed_keeps_the_uid_and_deletes_without_asking(monkeypatch) -> None:
    root = use_test_instance()
    import lamindb as ln

    from lamin_lightning.journal import new_entry_id
    from lamin_lightning.store import register_managed

    uid = f"{new_entry_id()}0000"
    path = root / ".lamindb" / f"{uid}.ckpt"
    path.write_bytes(b"weights")
    artifact = register_managed(path, key="private/a.ckpt", skip_hash_lookup=True).save()
    assert (artifact.uid, artifact._key_is_virtual, artifact._real_key) == (uid, True, None)
    assert Path(artifact.path) == path  # registered in place: no copy
    monkeypatch.setattr(builtins, "input", lambda *a: (_ for _ in ()).throw(AssertionError("prompted")))
    artifact.delete(permanent=True)
    assert not path.exists() and not ln.Artifact.filter(uid=uid).exists()


def test_end_run_sets_lamindb_status_codes() -> None:
    use_test_instance()
    import lamindb as ln

    from lamin_lightning.checkpoint import end_run, start_run

    done, failed = start_run(), start_run()
    assert done.status == "started"
    end_run(done)
    end_run(failed, failed=True)
    assert ln.Run.get(uid=done.uid).status == "completed" and ln.Run.get(uid=failed.uid).status == "errored"
    assert ln.Run.get(uid=done.uid).finished_at is not None


def test_artifact_takes_precomputed_stats_without_reading_the_file(monkeypatch) -> None:
    "`Artifact(_stats=...)`: the hash taken as a checkpoint was written is the artifact's, and lamindb reads nothing."
    root = use_test_instance()
    import lamindb.models.artifact as artifact_module

    from lamin_lightning.journal import new_entry_id
    from lamin_lightning.references import hash_bytes
    from lamin_lightning.store import register_managed

    path = root / ".lamindb" / f"{new_entry_id()}0000.ckpt"
    path.write_bytes(b"weights")
    monkeypatch.setattr(artifact_module, "hash_file", lambda *a, **k: (_ for _ in ()).throw(AssertionError("read")))
    stats = hash_bytes(b"weights")
    artifact = register_managed(path, key="private/stats.ckpt", skip_hash_lookup=True, _stats=stats).save()
    assert (artifact.size, artifact.hash, artifact._hash_type) == (stats["size"], stats["hash"], stats["hash_type"])
