"""`prune` and `lamin-lightning prune` on a real sweep: three runs that keep every checkpoint, one resumed from
another's checkpoint by `lamin://` reference; on SQLite here, and in a child process on PostgreSQL (`tests/pg.py`) and
on S3 storage (moto's server on loopback). The child part is this file run as a script."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

RESULT = "LAMIN_LIGHTNING_PRUNE_RESULT "
URL_VARIABLE = "LAMIN_LIGHTNING_PG_URL"
BIN = Path(sys.executable).parent


def every_record(prefix: str) -> list[tuple[str, str, int]]:
    "(uid, key, branch) of every artifact record under `prefix`, whatever lamindb's default filters hide (trash)."
    import lamindb as ln
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"SELECT uid, key, branch_id FROM {ln.Artifact._meta.db_table} WHERE key LIKE %s ORDER BY uid",
                       [prefix + "/%"])
        return [tuple(row) for row in cursor.fetchall()]


def sweep(root: Path, prefix: str, logger: bool) -> dict[str, object]:
    "Runs a and b (3 epochs), c (resumed from a's first checkpoint, 4 epochs), each `save_top_k=-1` with `last.ckpt`."
    from lightning.pytorch.loggers import CSVLogger

    import lamin_lightning as ll
    from lamin_lightning.testing import TinyData, TinyModel, tiny_trainer

    callbacks = {}
    base = f"{prefix}/a/version_0" if logger else f"{prefix}/a"
    for name, epochs, ckpt_path in (("a", 3, None), ("b", 3, None),
                                    ("c", 4, f"lamin://{base}/checkpoints/epoch=0-step=2.ckpt")):
        options = dict(logger=CSVLogger(root / prefix, name=name)) if logger else \
            dict(logger=False, dirpath=f"{prefix}/{name}")
        callback = ll.Checkpoint(dirpath=options.pop("dirpath", None), monitor="val_loss", save_top_k=-1,
                                 save_last=True)
        tiny_trainer(root, [callback], max_epochs=epochs, **options).fit(TinyModel(), TinyData(), ckpt_path=ckpt_path)
        callbacks[name] = callback
    return callbacks


def expected_deletions(prefix: str, callbacks: dict, logger: bool) -> set[str]:
    "What the default policy deletes: all but each run's best (Lightning's own) and last, and what c resumed from."
    deleted = set()
    for name, callback in callbacks.items():
        folder = f"{prefix}/{name}/version_0/checkpoints" if logger else f"{prefix}/{name}/checkpoints"
        kept = {Path(callback.best_model_path).name, "last.ckpt"} | ({"epoch=0-step=2.ckpt"} if name == "a" else set())
        deleted |= {f"{folder}/{Path(p).name}" for p in callback.best_k_models if Path(p).name not in kept}
    return deleted


# --- SQLite, in this process ---------------------------------------------------------------------------------------
def test_sweep_prune_keeps_exactly_the_kept_set(tmp_path: Path) -> None:
    root = use_instance()
    import lamindb as ln
    import pandas as pd

    import lamin_lightning as ll
    from lamin_lightning.testing import TinyModel, block_network

    from lamin_lightning import retention

    assert ll.prune is retention.prune  # importing the module does not shadow the function
    prefix = f"prune-{tmp_path.name}"
    started = time.monotonic()
    callbacks = sweep(tmp_path, prefix, logger=True)
    fits = time.monotonic() - started
    # a run without a monitor: it keeps its last only
    from lamin_lightning.testing import TinyData, tiny_trainer

    plain = ll.Checkpoint(monitor=None, save_top_k=-1, every_n_epochs=1)
    from lightning.pytorch.loggers import CSVLogger

    tiny_trainer(tmp_path, [plain], logger=CSVLogger(tmp_path / prefix, name="plain"), max_epochs=3).fit(
        TinyModel(), TinyData())
    notes = root / prefix / "notes.txt"  # an artifact that no Checkpoint made
    notes.parent.mkdir(parents=True)
    notes.write_text("which run was the good one")
    ln.Artifact(notes, key=f"{prefix}/a/notes.txt").save()
    deleted = expected_deletions(prefix, callbacks, logger=True) | {
        f"{prefix}/plain/version_0/checkpoints/epoch={e}-step={2 * e + 2}.ckpt" for e in (0, 1)}
    records = every_record(prefix)
    artifacts = {a.key: a for a in ln.Artifact.filter(key__startswith=f"{prefix}/")}
    files = {key: Path(a.path) for key, a in artifacts.items()}
    assert all(p.exists() for p in files.values())

    with block_network():
        plan = ll.prune(prefix)
    assert every_record(prefix) == records and all(p.exists() for p in files.values())  # a dry run deletes nothing
    assert set(plan.key[plan.action == "delete"]) == deleted
    reasons = plan.set_index("key").reason
    assert reasons[f"{prefix}/a/version_0/checkpoints/epoch=0-step=2.ckpt"].startswith("input of run ")
    assert reasons[f"{prefix}/a/version_0/checkpoints/hparams.yaml"] == "Lightning's hparams.yaml or config.yaml"
    assert reasons[f"{prefix}/a/notes.txt"] == "not made by a Checkpoint (no lamindb.lightning features)"
    assert reasons[f"{prefix}/plain/version_0/checkpoints/epoch=2-step=6.ckpt"] == \
        "last checkpoint (the run has no monitor)"
    to_free = sum(artifacts[k].size for k in deleted)
    assert plan.attrs["bytes"] == to_free
    assert ln.Run.filter(transform__key="lamin-lightning prune", params__prefix=prefix).count() == 0

    started = time.monotonic()
    with block_network():
        pruned = ll.prune(prefix, dry_run=False)
    seconds = time.monotonic() - started
    survivors = {k for _, k, _ in every_record(prefix)}
    assert survivors == set(artifacts) - deleted  # no trash, no hidden version left
    assert pruned.attrs["bytes"] == to_free and set(pruned.key[pruned.action == "delete"]) == deleted
    assert not any(files[k].exists() for k in deleted) and all(files[k].exists() for k in survivors)
    for run in ("a", "b", "c"):
        assert TinyModel.load_from_checkpoint(f"lamin://{prefix}/{run}/version_0@best") is not None
    (run,) = ln.Run.filter(transform__key="lamin-lightning prune", params__prefix=prefix)
    assert (run.status, run.params["prefix"], run.transform.kind) == ("completed", prefix, "script")
    assert run.description == f"deleted {len(deleted)} artifacts ({to_free} bytes)"
    recorded = run.output_artifacts.get().load()
    assert set(recorded.key[recorded.action == "delete"]) == deleted
    again = ll.prune(prefix, dry_run=False)
    assert (again.action == "delete").sum() == 0  # and nothing to record
    assert ln.Run.filter(transform__key="lamin-lightning prune", params__prefix=prefix).count() == 1
    print(f"\nsweep: {len(artifacts)} artifacts, {len(deleted)} deleted, {len(survivors)} kept, {to_free} of "
          f"{sum(a.size for a in artifacts.values())} bytes freed; the 3 fits {fits:.1f} s, real prune {seconds:.2f} s")
    assert isinstance(pruned, pd.DataFrame) and list(pruned.columns) == ["uid", "key", "run", "action", "reason", "size"]


def test_policy_options(tmp_path: Path) -> None:
    use_instance()
    import lamin_lightning as ll

    prefix = f"prune-{tmp_path.name}"
    sweep(tmp_path, prefix, logger=True)
    plan = ll.prune(prefix, keep_best=2, keep_last=False)
    kept = set(plan.key[plan.action == "keep"])
    b = f"{prefix}/b/version_0/checkpoints"
    assert {f"{b}/epoch=1-step=4.ckpt", f"{b}/epoch=2-step=6.ckpt"} <= kept and f"{b}/last.ckpt" not in kept
    assert set(ll.prune(prefix, older_than="1h").action) == {"keep"}  # everything is younger than an hour
    assert "newer than 1h" in set(ll.prune(prefix, older_than="1h").reason)
    assert (ll.prune(prefix, older_than="0m").action == "delete").sum() == (ll.prune(prefix).action == "delete").sum() == 5
    with pytest.raises(ValueError, match=r"older_than='30 days' is not an age"):
        ll.prune(prefix, older_than="30 days")
    with pytest.raises(ValueError, match="keep_best=-1"):
        ll.prune(prefix, keep_best=-1)
    with pytest.raises(ValueError, match="prefix is empty: give the key prefix of the runs to prune"):
        ll.prune("/")


def test_versions_of_one_key(tmp_path: Path) -> None:
    "Two fits into one folder without Lightning's version counter: each key has two artifacts, one per run."
    use_instance()
    import lamindb as ln

    import lamin_lightning as ll
    from lamin_lightning.testing import TinyData, TinyModel, tiny_trainer

    dirpath = tmp_path / "same"
    prefix = f"{dirpath}/checkpoints"
    for _ in range(2):
        callback = ll.Checkpoint(dirpath=dirpath, monitor="val_loss", save_top_k=-1, save_last=True,
                                 enable_version_counter=False)
        tiny_trainer(tmp_path, [callback], logger=False, max_epochs=3).fit(TinyModel(), TinyData())
    records = every_record(str(dirpath))
    assert len(records) == 8 and ln.Artifact.filter(key=f"{prefix}/last.ckpt").count() == 2  # the first fit's are listed too
    plan = ll.prune(str(dirpath))
    assert len(plan) == 8 and plan.run.nunique() == 2
    assert sorted(plan.key[plan.action == "delete"]) == [f"{prefix}/epoch={e}-step={2 * e + 2}.ckpt" for e in (0, 0, 1, 1)]
    ll.prune(str(dirpath), dry_run=False)
    left = every_record(str(dirpath))
    assert sorted(k.rsplit("/", 1)[1] for _, k, _ in left) == ["epoch=2-step=6.ckpt"] * 2 + ["last.ckpt"] * 2
    assert {b for _, _, b in left} == {1}  # nothing in the trash


def cli(*args: str) -> subprocess.CompletedProcess:
    "The console command, as a user runs it."
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([str(BIN / "lamin-lightning"), "prune", *args], env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_cli_dry_run_yes_and_exit_codes(tmp_path: Path) -> None:
    use_instance()
    import lamindb as ln
    from django.db import connection

    prefix = f"prune-{tmp_path.name}"
    callbacks = sweep(tmp_path, prefix, logger=True)
    deleted = expected_deletions(prefix, callbacks, logger=True)
    records = every_record(prefix)

    helped = cli("--help")
    assert helped.returncode == 0 and "exit status: 0 done (or nothing to do), 1 a deletion failed" in helped.stdout
    dry = cli(prefix)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert every_record(prefix) == records
    assert f"dry run: would delete {len(deleted)} artifacts and free " in dry.stdout and "pass --yes" in dry.stdout
    assert all(key in dry.stdout for key in deleted)

    for bad in (["--older-than", "soon"], ["--keep-best", "-2"], ["--keep-best", "many"], ["--frobnicate"]):
        done = cli(prefix, *bad, "--yes")
        assert done.returncode == 2, (bad, done.stdout, done.stderr)
        assert "error:" in done.stderr
    assert every_record(prefix) == records

    # a fault: the database refuses to delete one of the artifacts (a trigger), the rest are still deleted
    stuck = ln.Artifact.get(key=sorted(deleted)[0])
    table = ln.Artifact._meta.db_table
    assert stuck.uid.isalnum()
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE TRIGGER prune_fault BEFORE DELETE ON {table} WHEN OLD.uid = '{stuck.uid}' "
                       "BEGIN SELECT RAISE(ABORT, 'injected fault'); END")
    try:
        failed = cli(prefix, "--yes")
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TRIGGER prune_fault")
    assert failed.returncode == 1, (failed.stdout, failed.stderr[-3000:])
    assert f"failed: {stuck.key} ({stuck.uid}): deletion failed (" in failed.stderr and "injected fault" in failed.stderr
    assert "the artifact is kept" in failed.stderr
    left = {k for _, k, _ in every_record(prefix)}
    assert left == {k for _, k, _ in records} - deleted | {stuck.key}
    assert Path(stuck.path).exists()
    assert f"deleted {len(deleted) - 1} artifacts, freed " in failed.stdout
    run = ln.Run.filter(transform__key="lamin-lightning prune", params__prefix=prefix).order_by("-created_at").first()
    assert run.status == "errored" and run.description.endswith("; 1 deletions failed")

    done = cli(prefix, "--yes")  # the fault is gone: the one left is deleted now
    assert done.returncode == 0, done.stderr[-3000:]
    assert "deleted 1 artifacts, freed " in done.stdout
    assert {k for _, k, _ in every_record(prefix)} == {k for _, k, _ in records} - deleted
    assert not Path(stuck.path).exists()
    nothing = cli(prefix, "--yes")
    assert nothing.returncode == 0 and "deleted 0 artifacts, freed 0 bytes" in nothing.stdout


def use_instance() -> Path:
    from lamin_lightning.testing import use_test_instance

    return use_test_instance()


# --- the child process: PostgreSQL and S3 --------------------------------------------------------------------------
def child_prune(root: Path) -> dict:
    "The sweep (keys under the dirpath), a dry run, a real prune, a load of each run's best, a second prune."
    import lamindb as ln

    import lamin_lightning as ll
    from lamin_lightning.testing import TinyModel

    prefix = f"{root}/sweep"
    started = time.monotonic()
    callbacks = sweep(root, prefix, logger=False)
    artifacts = {a.key: a for a in ln.Artifact.filter(key__startswith=f"{prefix}/")}
    records = every_record(prefix)
    plan = ll.prune(prefix)
    after_dry = every_record(prefix)
    pruned = ll.prune(prefix, dry_run=False)
    run = ln.Run.filter(transform__key="lamin-lightning prune", params__prefix=prefix).one()
    return dict(
        deleted_expected=sorted(expected_deletions(prefix, callbacks, logger=False)),
        planned=sorted(plan.key[plan.action == "delete"]), dry_unchanged=after_dry == records,
        deleted=sorted(pruned.key[pruned.action == "delete"]), bytes=pruned.attrs["bytes"],
        sizes={k: a.size for k, a in artifacts.items()}, exists={k: a.path.exists() for k, a in artifacts.items()},
        paths={k: str(a.path) for k, a in artifacts.items()}, survivors=sorted(k for _, k, _ in every_record(prefix)),
        loaded=[type(TinyModel.load_from_checkpoint(f"lamin://{prefix}/{n}@best")).__name__ for n in "abc"],
        second=int((ll.prune(prefix, dry_run=False).action == "delete").sum()),
        run=[run.status, run.description, str(run.output_artifacts.get().path)],
        seconds=round(time.monotonic() - started, 1))


def child_main(kind: str) -> None:
    from lamin_lightning.testing import NetworkGuard

    guard = NetworkGuard().install()  # only loopback (the database, the S3 server) may be reached
    root = Path.cwd()
    if kind == "s3":  # the PostgreSQL child has its own settings folder from `child_env`
        from lamin_lightning.testing import isolate_settings

        isolate_settings(root / "settings")  # before lamindb_setup is imported: never touch ~/.lamin
    import lamindb_setup as ln_setup

    if kind == "pg":
        ln_setup.init(storage=str(root / "storage"), db=os.environ.pop(URL_VARIABLE))
    else:
        from lamin_lightning.testing import init_local_instance

        init_local_instance(root / "storage")
    import lamindb as ln

    if kind == "s3":
        ln_setup.settings.instance._is_on_hub = False  # test only: lamindb asks the hub before adding cloud storage
        uri = f"s3://ckpts?endpoint_url={os.environ['AWS_ENDPOINT_URL']}"
        ln.Storage(root=uri).save()
        ln.settings.storage = uri
    import lamin_lightning as ll

    ll.save_lightning_features()
    result = child_prune(root) | dict(dialect=ln_setup.settings.instance.dialect,
                                      cloud=ln_setup.settings.storage.type_is_cloud,
                                      settings=os.environ["LAMIN_SETTINGS_DIR"], root=str(root.parent))
    if kind == "s3":  # what the bucket holds now, listed afresh
        import s3fs

        result["objects"] = sorted(f"s3://{p}" for p in s3fs.S3FileSystem().ls("ckpts/.lamindb", refresh=True))
    print(RESULT + json.dumps(result | dict(network_attempts=len(guard.attempts))), flush=True)


def check_child(result: dict) -> None:
    deleted = result["deleted_expected"]
    assert len(deleted) == 5 and result["planned"] == deleted and result["dry_unchanged"]
    assert result["deleted"] == deleted
    assert result["survivors"] == sorted(set(result["sizes"]) - set(deleted))
    assert result["bytes"] == sum(result["sizes"][k] for k in deleted)
    assert not any(result["exists"][k] for k in deleted), result["exists"]
    assert all(result["exists"][k] for k in result["survivors"])
    assert result["loaded"] == ["TinyModel"] * 3 and result["second"] == 0
    assert result["run"][:2] == ["completed", f"deleted 5 artifacts ({result['bytes']} bytes)"]
    assert result["network_attempts"] == 0
    assert result["settings"].startswith(result["root"])  # the child's own LaminDB settings, not ~/.lamin


def run_child(kind: str, cwd: Path, env: dict[str, str]) -> dict:
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), kind], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    (line,) = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    return json.loads(line[len(RESULT):])


@pytest.mark.slow
def test_prune_on_postgres(tmp_path: Path) -> None:
    from pg import child_env, postgres_or_skip

    with postgres_or_skip() as url:
        work = tmp_path / "work"
        work.mkdir()
        result = run_child("pg", work, child_env(tmp_path / "settings", URL_VARIABLE, url))
    assert result["dialect"] == "postgresql"
    check_child(result)
    print(f"\nPostgreSQL: {len(result['sizes'])} artifacts, {len(result['deleted'])} deleted, {len(result['survivors'])} kept, "
          f"{result['bytes']} bytes freed; sweep and prunes {result['seconds']} s")


def test_prune_on_s3(s3: dict) -> None:
    work = s3["folder"] / "prune"
    work.mkdir()
    result = run_child("s3", work, s3["env"])
    assert result["cloud"]
    assert all(p.startswith("s3://ckpts/") for p in result["paths"].values()) and result["run"][2].startswith("s3://")
    check_child(result)
    objects = set(result["objects"])
    assert not {result["paths"][k] for k in result["deleted"]} & objects  # gone from the bucket
    assert {result["paths"][k] for k in result["survivors"]} <= objects
    print(f"\nS3: {len(result['sizes'])} artifacts, {len(result['deleted'])} deleted, {len(result['survivors'])} kept, "
          f"{result['bytes']} bytes freed; sweep and prunes {result['seconds']} s")


from test_object_storage import s3  # noqa: E402,F401  (the moto server fixture)

if __name__ == "__main__":
    child_main(sys.argv[1])
