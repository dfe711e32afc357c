"""The private lamindb pieces the package uses, each in one place: these fail when lamindb changes them."""
import builtins
from pathlib import Path

from lamin_lightning.testing import use_test_instance


def test_register_managed_keeps_the_uid_and_deletes_without_asking(monkeypatch) -> None:
    root = use_test_instance()
    import lamindb as ln

    from lamin_lightning.journal import new_entry_id
    from lamin_lightning.upstream import register_managed

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

    from lamin_lightning.fit import end_run, start_run

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
    from lamin_lightning.writes import hash_bytes
    from lamin_lightning.upstream import register_managed

    path = root / ".lamindb" / f"{new_entry_id()}0000.ckpt"
    path.write_bytes(b"weights")
    monkeypatch.setattr(artifact_module, "hash_file", lambda *a, **k: (_ for _ in ()).throw(AssertionError("read")))
    stats = hash_bytes(b"weights")
    artifact = register_managed(path, key="private/stats.ckpt", skip_hash_lookup=True, _stats=stats).save()
    assert (artifact.size, artifact.hash, artifact._hash_type) == (stats["size"], stats["hash"], stats["hash_type"])


def test_folder_artifact_takes_md5d_stats_without_reading_a_file(monkeypatch) -> None:
    """A folder at lamindb's managed path with `_stats` (`n_files`, `md5-d`) from our hashing (`hash_folder`, built on
    lamindb_setup's `hash_from_hashes_list`): lamindb reads no file, and its own `hash_dir` gives the same stats."""
    root = use_test_instance()
    import lamindb.models.artifact as artifact_module
    from lamindb_setup.core.hashing import hash_dir

    from lamin_lightning.journal import new_entry_id
    from lamin_lightning.upstream import register_managed
    from lamin_lightning.folders import hash_folder

    folder = root / ".lamindb" / new_entry_id()
    folder.mkdir()
    for name, data in {"__0_0.distcp": b"shard 0", "__1_0.distcp": b"shard 1", ".metadata": b"m", "meta.pt": b"p"}.items():
        (folder / name).write_bytes(data)
    stats = hash_folder(folder)
    size, digest, hash_type, n_files = hash_dir(folder)
    assert stats == {"size": size, "hash": digest, "hash_type": hash_type, "n_files": n_files}
    monkeypatch.setattr(artifact_module, "hash_dir", lambda *a, **k: (_ for _ in ()).throw(AssertionError("read")))
    artifact = register_managed(folder, key="private/folder.ckpt", skip_hash_lookup=True, _stats=stats).save()
    assert (artifact.size, artifact.hash, artifact._hash_type, artifact.n_files) == (size, digest, "md5-d", 4)


def test_new_artifact_is_adding_and_stats() -> None:
    "`upstream.new_artifact` passes the stats; `is_adding` (Django's `_state.adding`) is true until the record is saved."
    root = use_test_instance()
    import lamindb as ln

    from lamin_lightning.upstream import is_adding, new_artifact
    from lamin_lightning.writes import hash_bytes

    path = root / "outside-managed.ckpt"
    path.write_bytes(b"same bytes")
    stats = hash_bytes(b"same bytes")
    first = new_artifact(path, stats=stats, key="private/same.ckpt")
    assert is_adding(first) and (first.size, first.hash) == (stats["size"], stats["hash"])
    first.save()
    assert not is_adding(first) and not is_adding(ln.Artifact.get(id=first.id))


def test_write_transaction_takes_sqlite_write_lock_at_begin() -> None:
    "`upstream.write_transaction`: on SQLite, `BEGIN IMMEDIATE` (Django's `transaction_mode`), restored afterwards."
    use_test_instance()
    import lamindb as ln
    from django.db import connection

    from lamin_lightning.upstream import statements_wrapped, write_transaction

    seen: list[str] = []

    def record(execute, sql, params, many, context):
        seen.append(sql)
        return execute(sql, params, many, context)

    ln.Artifact.filter(key="x").count()  # connected
    mode = connection.transaction_mode
    with statements_wrapped(record), write_transaction():
        assert connection.in_atomic_block
        ln.Artifact.filter(key="x").count()
    assert connection.transaction_mode == mode and seen  # Django's wrapper saw the statements
    assert connection.vendor == "sqlite"


def test_update_json_links_points_links_at_new_values() -> None:
    "The raw UPDATE on lamindb's link table of feature values (`upstream.update_json_links`)."
    root = use_test_instance()
    import lamindb as ln

    from lamin_lightning.upstream import update_json_links

    feature = ln.Feature.filter(name="private_flag").one_or_none() or ln.Feature(name="private_flag", dtype=bool).save()
    path = root / "flagged.ckpt"
    path.write_bytes(b"flagged")
    artifact = ln.Artifact(path, key="private/flagged.ckpt").save()
    artifact.features.add_values({"private_flag": True})
    false_value, _ = ln.models.JsonValue.get_or_create(feature, False)
    assert update_json_links(feature.id, [(artifact.id, false_value.id)]) == {artifact.id}
    assert ln.Artifact.get(id=artifact.id).features.get_values()["private_flag"] is False
    assert update_json_links(feature.id, [(10**9, false_value.id)]) == set()  # no link to update


def test_lightning_feature_type_carries_lamindb_marker() -> None:
    "`upstream.mark_lightning_type`: the private `_dtype_str` lamindb's integration gives `lamindb.lightning`."
    use_test_instance()  # saves the features
    import lamindb as ln

    feature_type = ln.Feature.get(name="lamindb.lightning", is_type=True)
    assert feature_type._dtype_str == "__lamindb_lightning__"


def test_delete_artifact_skips_the_version_search() -> None:
    """`upstream.delete_artifact`: with `is_latest` cleared in memory, lamindb's `delete` of the first and only version
    sends no `uid LIKE` search for a successor, and still deletes the row and its bytes; a later version is promoted
    as before when the latest of a family of two goes."""
    root = use_test_instance()
    import lamindb as ln

    from lamin_lightning.upstream import delete_artifact, statements_wrapped

    path = root / "private-delete.ckpt"
    path.write_bytes(b"only version")
    artifact = ln.Artifact(path, key="private/delete.ckpt").save()
    assert artifact.uid.endswith("0000") and artifact.is_latest and not artifact._overwrite_versions
    stored = artifact.path
    seen: list[str] = []

    def record(execute, sql, params, many, context):
        seen.append(sql)
        return execute(sql, params, many, context)

    with statements_wrapped(record):
        delete_artifact(artifact, storage=True)
    assert not any('"uid" LIKE' in sql for sql in seen), seen
    assert not ln.Artifact.filter(key="private/delete.ckpt").exists() and not stored.exists()

    first = root / "private-family.ckpt"
    first.write_bytes(b"v1")
    v1 = ln.Artifact(first, key="private/family.ckpt").save()
    first.write_bytes(b"v2")
    v2 = ln.Artifact(first, key="private/family.ckpt").save()
    assert v2.uid[:16] == v1.uid[:16] and not v2.uid.endswith("0000")
    delete_artifact(v2, storage=True)  # not the first version: lamindb promotes v1
    assert ln.Artifact.get(id=v1.id).is_latest


def test_json_value_hash_is_the_hash_get_or_create_stores() -> None:
    """`upstream.json_value_hash`: the hash lamindb's `JsonValue.get_or_create` gives a float, an int, a string, a bool
    and a dict, so that `features.ValueWriter.value_ids` finds the rows it made (and it the rows we make)."""
    use_test_instance()
    import lamindb as ln

    from lamin_lightning.upstream import json_value_hash

    feature = ln.Feature.filter(name="private_any").one_or_none() or ln.Feature(name="private_any", dtype="dict").save()
    for value in (0.25, 7, "val_loss", True, {"lr": 0.1, "layers": [1, 2]}):
        record, _ = ln.models.JsonValue.get_or_create(feature, value)
        assert record.hash == json_value_hash(value), value


def test_bytes_deleted_with_names_what_lamindb_deletes() -> None:
    """`upstream.bytes_deleted_with`: the path that lamindb's permanent delete with storage removes (a group commit
    deletes exactly those bytes after its commit), and `None` for an older version of a folder family, whose shared
    store lamindb keeps."""
    root = use_test_instance()
    import lamindb as ln

    from lamin_lightning.upstream import bytes_deleted_with, delete_artifact

    path = root / "private-bytes.ckpt"
    path.write_bytes(b"evicted")
    artifact = ln.Artifact(path, key="private/bytes.ckpt").save()
    named = bytes_deleted_with(artifact)
    assert named == Path(artifact.path) and named.exists()
    delete_artifact(artifact, storage=True)
    assert not named.exists()  # lamindb removed the bytes it names
    folder = root / "private-folder.ckpt"
    folder.mkdir()
    (folder / "shard").write_bytes(b"v1")
    first = ln.Artifact(folder, key="private/folder.ckpt").save()
    (folder / "shard").write_bytes(b"v2")
    second = ln.Artifact(folder, key="private/folder.ckpt", revises=first).save()
    first = ln.Artifact.get(id=first.id)  # no longer the latest
    assert first._overwrite_versions and not first.is_latest and bytes_deleted_with(first) is None
    assert bytes_deleted_with(second) == Path(second.path)
