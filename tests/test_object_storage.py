"""An instance whose storage is S3 (moto's server on loopback): checkpoints uploaded once each, and a `lamin://`
reference downloaded once into LaminDB's cache, then reused. The LaminDB part runs in a fresh process with its own
settings (this file run as a script); lamindb 2.12 asks the hub before it adds a cloud storage location, so the child
sets lamindb_setup's private `_is_on_hub = False` first, as a test may (the package never does)."""
from __future__ import annotations

import collections
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

RESULT = "LAMIN_LIGHTNING_S3_RESULT "


def s3_storage_instance(root: Path) -> tuple[Any, str]:
    """In a child: a new local instance under `root` whose storage is the moto bucket `ckpts`; the network guard (only
    loopback, the S3 server, may be reached) and the storage's URI."""
    import tempfile

    from lamin_lightning.testing import NetworkGuard, init_local_instance, isolate_settings

    isolate_settings(tempfile.mkdtemp())
    guard = NetworkGuard().install()
    init_local_instance(root / "storage")
    import lamindb as ln
    import lamindb_setup as ln_setup

    ln_setup.settings.instance._is_on_hub = False  # test only: lamindb asks the hub before adding cloud storage
    uri = f"s3://ckpts?endpoint_url={os.environ['AWS_ENDPOINT_URL']}"
    ln.Storage(root=uri).save()
    ln.settings.storage = uri
    return guard, uri


def child_main() -> None:
    import re
    import shutil

    root = Path.cwd()
    guard, uri = s3_storage_instance(root)  # before anything imports lamindb
    import lamindb as ln
    import lamindb_setup as ln_setup

    import lamin_lightning as ll
    from lamin_lightning.testing import TinyData, TinyModel, tiny_trainer

    ll.save_lightning_features()
    dirpath = root / "run"
    callback = ll.Checkpoint(dirpath=dirpath, monitor="val_loss", save_top_k=2, save_last=True)
    tiny_trainer(root, [callback], logger=False, max_epochs=3).fit(TinyModel(), TinyData())
    artifacts = ln.Artifact.filter(key__startswith=f"{dirpath}/checkpoints/", suffix=".ckpt")
    stored = {a.key.rsplit("/", 1)[1]: (str(a.path), a.size) for a in artifacts}
    best = ln.Artifact.filter(key__startswith=f"{dirpath}/").filter(is_best_model=True).one()
    shutil.rmtree(ln_setup.settings.cache_dir)  # as on another machine: nothing cached yet
    first = TinyModel.load_from_checkpoint(f"lamin://{dirpath}@best")
    second = TinyModel.load_from_checkpoint(f"lamin://{dirpath}@best")
    resumed = tiny_trainer(root, [ll.Checkpoint(dirpath=root / "resumed", monitor="val_loss")], logger=False,
                           max_epochs=4)
    resumed.fit(TinyModel(), TinyData(), ckpt_path=f"lamin://{dirpath}@last")
    # publishing lags behind training (the first upload is held back: a fault injected), so checkpoints are evicted
    # before their turn comes: those are never uploaded
    from lamin_lightning.store import Store

    persist, held = Store.persist, []

    def slow_first(self, entry):
        if not held:
            held.append(entry)
            time.sleep(4)  # longer than the whole fit: every later save queues behind it
        return persist(self, entry)

    Store.persist = slow_first
    log = Path(os.environ["MOTO_LOG"])
    puts_before = len(re.findall(r'"PUT /ckpts/\S+\.ckpt HTTP', log.read_text()))
    lag = root / "lag"
    lagging = ll.Checkpoint(dirpath=lag, monitor="train_loss", save_top_k=1, every_n_train_steps=1, async_publish=True)
    tiny_trainer(root, [lagging], logger=False, max_epochs=1, max_steps=8, limit_train_batches=8,
                 limit_val_batches=0).fit(TinyModel(), TinyData())
    Store.persist = persist
    lag_puts = len(re.findall(r'"PUT /ckpts/\S+\.ckpt HTTP', log.read_text())) - puts_before
    lagged = ln.Artifact.filter(key__startswith=f"{lag}/checkpoints/", suffix=".ckpt")
    # a checkpoint over 100 MiB goes up in parts (s3fs's 50 MiB), each part once
    import torch

    class Big(TinyModel):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("ballast", torch.zeros(27_000_000))  # 108 MB in every checkpoint

    big = root / "big"
    before = len(log.read_text())
    tiny_trainer(root, [ll.Checkpoint(dirpath=big)], logger=False, max_epochs=1, limit_val_batches=0).fit(Big(), TinyData())
    (big_artifact,) = ln.Artifact.filter(key__startswith=f"{big}/checkpoints/")
    big_requests = log.read_text()[before:]
    # a remote checkpoint folder with cloud storage: Lightning's file goes up once, and the server copies it into the
    # storage (S3's CopyObject, client-side calls recorded)
    import hashlib

    import s3fs

    from lamin_lightning.writes import copy_in_cloud

    calls: list[tuple[str, str | None, str | None, str | None]] = []
    call_s3 = s3fs.S3FileSystem._call_s3

    async def recorded(self, method, *args, **kwargs):
        body = kwargs.get("Body")
        calls.append((method, kwargs.get("Bucket"), kwargs.get("Key"), None if body is None else
                      hashlib.md5(body).hexdigest()))
        return await call_s3(self, method, *args, **kwargs)

    s3fs.S3FileSystem._call_s3 = recorded
    # each server copy is slowed down (a fault injected), so that Lightning's next write of last.ckpt would come
    # first if it did not wait; every artifact, when published, must hold the bytes its hash was taken from
    from lamindb_setup.core.hashing import to_b64_str  # lamindb's encoding of a hash

    from lamin_lightning import writes as writes_module

    server_copy = writes_module._server_copy

    def slow_copy(url, copy):
        time.sleep(0.3)
        server_copy(url, copy)

    writes_module._server_copy = slow_copy
    wrong: list[str] = []
    checked: list[str] = []

    class CheckBytes:
        def on_artifact_saved(self, event):
            checked.append(event.key)
            if event.artifact is None or event.artifact.hash != to_b64_str(
                    hashlib.md5(fs.cat(str(event.artifact.path).removeprefix("s3://"))).digest())[:22]:
                wrong.append(event.key)

        def on_artifact_removed(self, event):
            pass

    fs = s3fs.S3FileSystem()
    both = "s3://runs/both"
    tiny_trainer(root, [ll.Checkpoint(dirpath=both, monitor="val_loss", save_top_k=2, save_last=True,
                                      artifact_observers=[CheckBytes()])], logger=False,
                 max_epochs=3).fit(TinyModel(), TinyData())
    s3fs.S3FileSystem._call_s3 = call_s3
    writes_module._server_copy = server_copy
    both_stored = {a.key.rsplit("/", 1)[1]: str(a.path) for a in
                   ln.Artifact.filter(key__startswith=f"{both}/checkpoints/", suffix=".ckpt")}
    md5 = {name: hashlib.md5(fs.cat(path.removeprefix("s3://"))).hexdigest() for name, path in both_stored.items()}
    objects = {Path(p).name: hashlib.md5(fs.cat(p)).hexdigest() for p in fs.ls("runs/both") if p.endswith(".ckpt")}
    both_cache = [str(p) for p in Path(ln_setup.settings.cache_dir).rglob("*") if "lamin_lightning" in str(p)]
    both_loaded = TinyModel.load_from_checkpoint(f"lamin://{both}@best")  # from the storage's copy
    # the guard: a copy that would not hold the bytes to publish is not kept
    other = root / "other.ckpt"
    other.write_bytes(b"other bytes")
    refused = ln_setup.settings.storage.root / ".lamindb/refused.ckpt"
    refused = not copy_in_cloud(f"{both}/last.ckpt", other, refused) and not refused.exists()
    managed_left = sorted(f"s3://{p}" for p in fs.ls("ckpts/.lamindb", refresh=True) if p.endswith(".ckpt")
                          if f"s3://{p}" not in {str(a.path) for a in ln.Artifact.filter(suffix=".ckpt")})
    print(RESULT + json.dumps(dict(
        big_size=big_artifact.size, big_path=str(big_artifact.path), big_requests=big_requests,
        big_on_disk=(big / "epoch=0-step=2.ckpt").stat().st_size,
        both_calls=calls, both_stored=both_stored, both_md5=md5, both_objects=objects,
        refused=refused, managed_left=managed_left, both_cache=both_cache, wrong_bytes=wrong, checked=checked,
        both_loaded=type(both_loaded).__name__, lag_puts=lag_puts, lag_on_disk=sorted(p.name for p in lag.glob("*.ckpt")),
        lag_stored=sorted(a.key.rsplit("/", 1)[1] for a in lagged),
        lag_flags=[lagged.filter(is_best_model=True).count(), lagged.filter(is_last_model=True).count()],
        stored=stored, on_disk=sorted(p.name for p in dirpath.glob("*.ckpt")), best=str(best.path),
        last=stored["last.ckpt"][0],
        same_weights=bool((first.layer.weight == second.layer.weight).all()),
        resumed_epoch=resumed.current_epoch, network_attempts=len(guard.attempts))), flush=True)


def remote_dirpath_main() -> None:
    "A local-storage instance and `dirpath=s3://runs/…`: Lightning writes to S3, LaminDB keeps the published copy."
    import tempfile

    from lamin_lightning.testing import NetworkGuard, init_local_instance, isolate_settings

    isolate_settings(tempfile.mkdtemp())
    guard = NetworkGuard().install()
    root = Path.cwd()
    init_local_instance(root / "storage")
    import hashlib

    import boto3
    import lamindb as ln
    import lamindb_setup as ln_setup
    from django.db.utils import OperationalError
    from lightning.pytorch.plugins.io import AsyncCheckpointIO

    import lamin_lightning as ll
    from lamin_lightning.publisher import journals
    from lamin_lightning.store import Store
    from lamin_lightning.testing import TinyData, TinyModel, tiny_trainer

    ll.save_lightning_features()
    s3 = boto3.client("s3")

    def objects(prefix: str) -> dict[str, str]:
        listed = s3.list_objects_v2(Bucket="runs", Prefix=prefix).get("Contents", [])
        return {o["Key"].rsplit("/", 1)[1]: hashlib.md5(s3.get_object(Bucket="runs", Key=o["Key"])["Body"].read())
                .hexdigest() for o in listed}

    def published(url: str) -> dict[str, str]:
        found = ln.Artifact.filter(key__startswith=f"{url}/checkpoints/", suffix=".ckpt")
        return {a.key.rsplit("/", 1)[1]: hashlib.md5(Path(a.path).read_bytes()).hexdigest() for a in found}

    # a fault: each download of a remote file (best.ckpt's copy) is slowed down, as on a busy machine, so that the
    # background publisher drains, and deletes its emptied journal, while the copy's bytes are on their way
    import asyncio

    import s3fs

    get_file = s3fs.S3FileSystem._get_file

    async def slow_get_file(self, rpath, lpath, **kwargs):
        await asyncio.sleep(0.5)
        return await get_file(self, rpath, lpath, **kwargs)

    s3fs.S3FileSystem._get_file = slow_get_file
    log = Path(os.environ["MOTO_LOG"])
    result: dict = {}
    for name, plugins in (("sync", []), ("async", [AsyncCheckpointIO()])):
        url = f"s3://runs/{name}"
        start = len(log.read_text())
        callback = ll.Checkpoint(dirpath=url, monitor="val_loss", save_top_k=2, save_last=True, save_best=True)
        tiny_trainer(root, [callback], logger=False, max_epochs=4, plugins=plugins).fit(TinyModel(), TinyData())
        flagged = ln.Artifact.filter(key__startswith=f"{url}/")
        requests_made = log.read_text()[start:]
        result[name] = dict(
            objects=objects(f"{name}/"), published=published(url), log=requests_made,
            flags=[flagged.filter(is_best_model=True).count(), flagged.filter(is_last_model=True).count()],
            ranks=sorted(ln.Artifact.filter(key__startswith=f"{url}/").filter(model_rank__gte=0)
                         .values_list("key", flat=True)))
    resumed = tiny_trainer(root, [ll.Checkpoint(dirpath="s3://runs/resumed", monitor="val_loss")], logger=False,
                           max_epochs=5)
    resumed.fit(TinyModel(), TinyData(), ckpt_path="lamin://s3://runs/sync@last")
    # LaminDB refuses writes for a whole fit: the journal waits in the local folder of the remote one, and sync
    # publishes it
    persist = Store.persist

    def refuse(self, entry):
        raise OperationalError("database is locked")

    Store.persist = refuse
    try:
        tiny_trainer(root, [ll.Checkpoint(dirpath="s3://runs/later", monitor="val_loss", save_top_k=2)], logger=False,
                     max_epochs=3).fit(TinyModel(), TinyData())
    finally:
        Store.persist = persist
    waiting = [str(p) for p in journals("s3://runs/later")]
    report = ll.sync("s3://runs/later")
    print(RESULT + json.dumps(dict(
        result, resumed_epoch=resumed.current_epoch, waiting=waiting, sync_exit=report.exit_code,
        later=published("s3://runs/later"), later_objects=objects("later/"),
        cache_left=[str(p) for p in Path(ln_setup.settings.cache_dir).rglob("*") if "lamin_lightning" in str(p)],
        cwd_left=sorted(p.name for p in root.iterdir()), network_attempts=len(guard.attempts))), flush=True)


def sharded_storage_main() -> None:
    """An instance whose storage is S3, and `dirpath=s3://runs/cloudsharded` with the 2-rank sharded fit: lamindb
    uploads each folder artifact from rank 0's local copy; a resume by reference downloads it into the cache."""
    root = Path.cwd()
    guard, uri = s3_storage_instance(root)  # before anything imports lamindb
    import lamindb as ln
    import lamindb_setup as ln_setup
    import lamin_lightning as ll

    ll.save_lightning_features()
    url = "s3://runs/cloudsharded"

    def fit(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, str(SHARDED_APP), *args, "--storage", uri], cwd=root, capture_output=True, text=True,
                              timeout=300, env={**os.environ, "MASTER_PORT": str(free_port())})
        assert done.returncode == 0, done.stderr[-4000:]
        return done

    first = fit(url)
    artifacts = ln.Artifact.filter(key__startswith=f"{url}/checkpoints/")
    stored = {a.key.rsplit("/", 1)[1]: dict(path=str(a.path), n_files=a.n_files, size=a.size) for a in artifacts}
    import shutil

    shutil.rmtree(ln_setup.settings.cache_dir)  # as on another machine: nothing cached yet
    again = fit(str(root / "resumed"), "--ckpt-path", f"lamin://{url}/checkpoints@last", "--epochs", "4")
    cache = Path(ln_setup.settings.cache_dir)
    print(RESULT + json.dumps(dict(
        stored=stored, errors=[line for line in first.stderr.splitlines() if "lamin_lightning:" in line],
        resumed=again.stdout, cached=sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file()),
        network_attempts=len(guard.attempts))), flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def requests(log: str, method: str) -> collections.Counter:
    "Requests of `method` per object path in moto's server log."
    return collections.Counter(re.findall(rf'"{method} /ckpts/(\S+) HTTP', log))


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    "moto's S3 server on loopback, with buckets `ckpts` and `runs`; yields the environment of a child and its log."
    folder = tmp_path_factory.mktemp("s3")
    port = free_port()
    log_path = folder / "moto.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMIN_")}
    env |= {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1", "PYTHONWARNINGS": "ignore",
            "MOTO_LOG": str(log_path)}
    with log_path.open("w") as log:
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=log, stderr=log, env=env)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "moto's server did not start"
                time.sleep(0.1)
        import boto3

        client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="test",
                              aws_secret_access_key="test", region_name="us-east-1")
        for bucket in ("ckpts", "runs"):
            client.create_bucket(Bucket=bucket)
        yield dict(env=env, log=log_path, folder=folder)
    finally:
        server.terminate()
        server.wait(timeout=30)


def run_child(s3: dict, part: str) -> tuple[subprocess.CompletedProcess, dict]:
    work = s3["folder"] / part
    work.mkdir()
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), part], cwd=work, env=s3["env"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    (line,) = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    return done, json.loads(line[len(RESULT):])


@pytest.mark.slow
def test_s3_storage_uploads_once_and_downloads_once(s3: dict) -> None:
    done, result = run_child(s3, "storage")
    log_path = s3["log"]
    assert result["network_attempts"] == 0
    assert "uploading" not in done.stdout  # a quiet console: no progress lines of lamindb's uploads
    assert sorted(result["stored"]) == result["on_disk"]  # the kept checkpoints, each an artifact in S3
    log = log_path.read_text()
    puts = requests(log, "PUT")
    for name, (path, size) in result["stored"].items():
        assert path.startswith("s3://ckpts/"), path
        assert puts[path.removeprefix("s3://ckpts/")] == 1, (name, puts)  # uploaded once, in one request
    best = result["best"].removeprefix("s3://ckpts/")
    assert requests(log, "GET")[best] == 1  # two loads: one download into LaminDB's cache, then the cached file
    assert requests(log, "GET")[result["last"].removeprefix("s3://ckpts/")] == 1  # the resume: downloaded once
    assert result["same_weights"] and result["resumed_epoch"] == 4
    # 8 saves while the first upload was held back: the evicted ones were never uploaded (the held one went up, as
    # did the one kept), and nothing was called lost
    assert result["lag_stored"] == result["lag_on_disk"] and len(result["lag_on_disk"]) == 1
    assert result["lag_flags"] == [1, 1]
    assert result["lag_puts"] <= 2, result["lag_puts"]
    assert "cannot be published" not in done.stderr and "lost" not in done.stderr
    # the large checkpoint: one multipart upload, each 50 MiB part sent once, nothing sent whole
    key = result["big_path"].removeprefix("s3://ckpts/")
    sent = result["big_requests"]
    parts = collections.Counter(re.findall(rf'"PUT /ckpts/{re.escape(key)}\?partNumber=(\d+)&', sent))
    assert result["big_size"] == result["big_on_disk"] > 100 * 2**20
    assert sorted(parts) == [str(n) for n in range(1, -(-result["big_size"] // (50 * 2**20)) + 1)], parts
    assert set(parts.values()) == {1}, parts
    assert len(re.findall(rf'"POST /ckpts/{re.escape(key)}\?uploads', sent)) == 1
    assert not re.search(rf'"PUT /ckpts/{re.escape(key)} HTTP', sent)
    # a remote checkpoint folder with S3 storage: each file went up once, to the folder; the storage got copies made by
    # the server, holding exactly the folder's bytes
    calls = result["both_calls"]
    assert result["both_md5"] == result["both_objects"] and len(result["both_objects"]) == 3  # the two best, last
    sent = [(method, bucket, key) for method, bucket, key, body in calls if body is not None or "multipart" in method]
    assert not [c for c in sent if c[1] == "ckpts" and c[2].endswith(".ckpt")], sent  # no checkpoint bytes to storage
    uploads = collections.Counter(key.rsplit("/", 1)[1] for method, bucket, key in sent if bucket == "runs")
    assert uploads == {"last.ckpt": 3, **{f"epoch={e}-step={2 * e + 2}.ckpt": 1 for e in range(3)}}, uploads
    copies = [key for method, bucket, key, body in calls if method == "copy_object" and bucket == "ckpts"]
    for name, path in result["both_stored"].items():
        assert path.removeprefix("s3://ckpts/") in copies, (name, copies)
    assert result["refused"]  # different bytes: no copy kept, the local file is uploaded instead
    assert result["managed_left"] == []  # no copy of an evicted or replaced checkpoint left behind in the storage
    assert result["both_cache"] == [] and result["both_loaded"] == "TinyModel"  # nothing left locally; it loads back
    assert result["wrong_bytes"] == []  # with the server's copies slowed down, each still holds its own bytes
    assert len(result["checked"]) == 6  # 3 epoch files and 3 versions of last.ckpt, each checked when published




def test_remote_dirpath(s3: dict) -> None:
    "`dirpath=s3://…`: keys, flags, the journal and sync as for a local folder; each file's bytes cross once."
    done, result = run_child(s3, "dirpath")
    assert result["network_attempts"] == 0
    for name in ("sync", "async"):
        run = result[name]
        # what LaminDB holds is what Lightning left in S3, byte for byte: the two best, last.ckpt and best.ckpt
        assert run["published"] == run["objects"] and len(run["objects"]) == 4, (name, run["objects"])
        assert run["flags"] == [1, 1], run["flags"]  # one best, one last (last.ckpt), as in a local folder
        assert len(run["ranks"]) == 2
        log = run["log"]
        puts = collections.Counter(re.findall(rf'"PUT /runs/{name}/(\S+\.ckpt) HTTP', log))
        # one upload per write: each epoch's file once, last.ckpt once per epoch; best.ckpt is copied by the server
        assert [n for n, c in puts.items() if n.startswith("epoch=") and c == 1] == [f"epoch={e}-step={2 * e + 2}.ckpt"
                                                                              for e in range(4)], puts
        assert puts["last.ckpt"] == 4 and 1 <= puts["best.ckpt"] <= 4, puts
        gets = collections.Counter(re.findall(rf'"GET /runs/{name}/(\S+\.ckpt) HTTP', log))
        assert gets == {"best.ckpt": puts["best.ckpt"]}, gets  # nothing read back but each server-side copy, once
    assert result["resumed_epoch"] == 5
    assert len(result["waiting"]) == 1 and "/lamin_lightning/s3/runs/later/.lamin_lightning/" in result["waiting"][0]
    assert result["sync_exit"] == 0 and result["later"] == result["later_objects"] and len(result["later"]) == 2
    assert result["cache_left"] == [], result["cache_left"]  # nothing left in a local folder
    assert not [n for n in result["cwd_left"] if n.startswith("s3")], result["cwd_left"]  # no `s3:` folder here
    assert "lost" not in done.stderr and "cannot be published" not in done.stderr


SHARDED_APP = Path(__file__).with_name("sharded_app.py")
SHARDS = [".metadata", "__0_0.distcp", "__1_0.distcp", "meta.pt"]


def sharded_env(s3: dict) -> dict[str, str]:
    "This process's instance, the S3 server, and a cache of its own (where a remote folder's journal and copies wait)."
    return {**s3["env"], **{k: v for k, v in os.environ.items() if k.startswith("LAMIN_")},
            "MASTER_PORT": str(free_port()), "LAMIN_CACHE_DIR": str(s3["folder"] / "cache")}


def s3_folders(s3: dict, prefix: str) -> dict[str, dict[str, str]]:
    "`{folder: {file: md5}}` of the objects under `prefix/` in the bucket `runs`."
    import boto3
    import hashlib

    client = boto3.client("s3", endpoint_url=s3["env"]["AWS_ENDPOINT_URL"], aws_access_key_id="test",
                          aws_secret_access_key="test", region_name="us-east-1")
    objects: dict[str, dict[str, str]] = collections.defaultdict(dict)
    for o in client.list_objects_v2(Bucket="runs", Prefix=f"{prefix}/").get("Contents", []):
        folder, name = o["Key"].removeprefix(f"{prefix}/").split("/", 1)
        objects[folder][name] = hashlib.md5(client.get_object(Bucket="runs", Key=o["Key"])["Body"].read()).hexdigest()
    return dict(objects)


def folder_md5(folder: Path) -> dict[str, str]:
    import hashlib

    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def run_sharded(s3: dict, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    "A 2-process model-parallel fit (`sharded_app.py`) against this process's instance and the S3 server."
    done = subprocess.run([sys.executable, str(SHARDED_APP), *args], cwd=cwd, env=sharded_env(s3), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "distributed_backend=gloo" in done.stderr  # really two processes
    return done


@pytest.mark.slow
def test_remote_dirpath_sharded(s3: dict, tmp_path: Path) -> None:
    """`dirpath="s3://runs/sharded"` with `ModelParallelStrategy(data_parallel_size=2)` on 2 gloo ranks, a local-storage
    instance, `save_top_k=2`, `save_last`, `save_best`, 3 epochs: S3 holds each kept folder's 4 files (each sent once
    per save), the evicted folder is gone from S3 and LaminDB, LaminDB holds one folder artifact per kept folder with
    the same bytes, nothing stays in a local folder; a resume by `lamin://` reference into a new local folder starts
    at step 6."""
    from lamin_lightning.testing import use_test_instance

    use_test_instance()
    import lamindb as ln

    url = "s3://runs/sharded"
    start = len(s3["log"].read_text())
    uploads = tmp_path / "uploads.txt"
    done = run_sharded(s3, tmp_path, url, "--save-best", "--record-uploads", str(uploads))
    assert "Could not store" not in done.stderr and "could not record" not in done.stderr, done.stderr[-3000:]
    objects = s3_folders(s3, "sharded")
    kept = {"epoch=1-step=4.ckpt", "epoch=2-step=6.ckpt", "last.ckpt", "best.ckpt"}
    assert set(objects) == kept, sorted(objects)  # epoch 0's folder, evicted, is gone from S3
    assert all(sorted(files) == SHARDS for files in objects.values()), objects
    artifacts = {a.key.rsplit("/", 1)[1]: a for a in ln.Artifact.filter(key__startswith=f"{url}/checkpoints/")}
    assert set(artifacts) == kept  # one artifact per kept folder, under Lightning's name; none for the evicted one
    for name, artifact in artifacts.items():
        stored = Path(artifact.path)
        assert artifact.n_files == 4 and artifact.kind == "model", (name, artifact.n_files)
        assert artifact.size == sum(p.stat().st_size for p in stored.iterdir())
        assert folder_md5(stored) == objects[name]
    values = {n: a.features.get_values() for n, a in artifacts.items()}
    assert [n for n, v in values.items() if v["is_last_model"]] == ["last.ckpt"]
    assert [n for n, v in values.items() if v["is_best_model"]] == ["epoch=2-step=6.ckpt"]
    assert sorted(v["model_rank"] for v in values.values() if v.get("model_rank") is not None) == [0, 1]
    log = s3["log"].read_text()[start:]
    puts = collections.Counter(re.findall(r'"PUT /runs/sharded/([^/\s]+)/(\S+) HTTP', log))
    for folder in ("epoch=1-step=4.ckpt", "epoch=2-step=6.ckpt"):
        assert [puts[(folder, shard)] for shard in SHARDS] == [1] * 4, puts  # each file sent once
    assert [puts[("last.ckpt", shard)] for shard in SHARDS] == [3] * 4, puts  # once per save of last.ckpt
    assert [puts[("epoch=0-step=2.ckpt", shard)] for shard in SHARDS] == [1] * 4, puts  # sent, then evicted from S3
    # each rank sent the shard it wrote, rank 0 the metadata: the uploads of a save run on both ranks at once
    sent = collections.defaultdict(set)
    for line in uploads.read_text().splitlines():
        rank, path = line.split(" ", 1)
        sent[path.rsplit("/", 1)[1]].add(int(rank))
    assert dict(sent) == {".metadata": {0}, "__0_0.distcp": {0}, "__1_0.distcp": {1}, "meta.pt": {0}}, dict(sent)
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith("s3:")]  # no local `s3:` folder
    home = s3["folder"] / "cache" / "lamin_lightning" / "s3" / "runs" / "sharded"  # its journal's home (`local_home`)
    assert (s3["folder"] / "cache").is_dir()
    assert not [p for p in home.rglob("*") if p.is_file()], list(home.rglob("*"))  # no copy left once published
    # the way back: the folder artifact, by reference, on both ranks of a new fit into a local folder
    resumed = tmp_path / "resumed"
    again = run_sharded(s3, tmp_path, str(resumed), "--ckpt-path", f"lamin://{url}/checkpoints@last", "--epochs", "4")
    assert "global_step=8" in again.stdout, again.stdout  # step 6 restored, then one epoch of 2 steps
    assert {p.name for p in resumed.glob("*.ckpt")} == {"epoch=3-step=8.ckpt", "last.ckpt"}
    assert artifacts["last.ckpt"] in ln.Artifact.get(key=f"{resumed}/checkpoints/last.ckpt").run.input_artifacts.all()



@pytest.mark.slow
def test_remote_dirpath_model_parallel_files(s3: dict, tmp_path: Path) -> None:
    """`ModelParallelStrategy(save_distributed_checkpoint=False)` into `s3://…`: one file per checkpoint, saved by rank 0
    through the CheckpointIO at the local staging path, then uploaded; each kept file is an artifact with the bytes
    and hash of S3's object."""
    from lamin_lightning.testing import use_test_instance

    use_test_instance()
    import boto3
    import hashlib
    import lamindb as ln
    from lamindb_setup.core.hashing import hash_file

    url = "s3://runs/files"
    run_sharded(s3, tmp_path, url, "--files-only")
    client = boto3.client("s3", endpoint_url=s3["env"]["AWS_ENDPOINT_URL"], aws_access_key_id="test",
                          aws_secret_access_key="test", region_name="us-east-1")
    objects = {o["Key"].removeprefix("files/"): hashlib.md5(client.get_object(Bucket="runs", Key=o["Key"])["Body"]
                                                              .read()).hexdigest()
               for o in client.list_objects_v2(Bucket="runs", Prefix="files/")["Contents"]}
    artifacts = {a.key.rsplit("/", 1)[1]: a for a in ln.Artifact.filter(key__startswith=f"{url}/checkpoints/")}
    assert set(artifacts) == set(objects) == {"epoch=1-step=4.ckpt", "epoch=2-step=6.ckpt", "last.ckpt"}, objects
    for name, artifact in artifacts.items():
        path = Path(artifact.path)
        assert path.is_file() and hashlib.md5(path.read_bytes()).hexdigest() == objects[name], name
        assert (artifact.size, artifact.hash) == hash_file(path)[:2], name


@pytest.mark.slow
def test_remote_sharded_with_s3_storage(s3: dict) -> None:
    """A remote folder of shards and an instance whose storage is S3: each kept folder is one folder artifact in the
    storage (4 files, as many objects), and a resume by reference on both ranks downloads it once into the cache."""
    done, result = run_child(s3, "sharded_storage")
    assert result["network_attempts"] == 0
    assert result["errors"] == [], result["errors"]
    stored = result["stored"]
    assert set(stored) == {"epoch=1-step=4.ckpt", "epoch=2-step=6.ckpt", "last.ckpt"}, stored
    assert {n: sorted(f) for n, f in s3_folders(s3, "cloudsharded").items()} == {n: SHARDS for n in stored}
    log = s3["log"].read_text()
    for name, artifact in stored.items():
        assert artifact["path"].startswith("s3://ckpts/.lamindb/") and artifact["n_files"] == 4, (name, artifact)
        key = artifact["path"].removeprefix("s3://ckpts/")
        assert sorted(set(re.findall(rf'"PUT /ckpts/{re.escape(key)}/(\S+) HTTP', log))) == SHARDS, name
    assert "global_step=8" in result["resumed"], result["resumed"]
    cached = [p for p in result["cached"] if "runs/cloudsharded/" in p]  # lamindb's cache path holds the key
    assert sorted(cached) == [f"ckpts/s3:/runs/cloudsharded/checkpoints/last.ckpt/{n}" for n in SHARDS], cached
    last = stored["last.ckpt"]["path"].removeprefix("s3://ckpts/")
    gets = collections.Counter(re.findall(rf'"GET /ckpts/{re.escape(last)}/(\S+) HTTP', log))
    assert gets == {name: 1 for name in SHARDS}, gets  # downloaded once, for both ranks


@pytest.mark.slow
def test_remote_sharded_refused_then_synced(s3: dict, tmp_path: Path) -> None:
    """The same remote fit with every `Artifact.save` refused from epoch 0 (a fault injected): every folder waits in
    the journal in LaminDB's cache, with its local copy; `lamin-lightning sync s3://…` then publishes the kept folders,
    complete, and prints as published exactly what LaminDB holds."""
    from lamin_lightning.testing import use_test_instance

    use_test_instance()
    import lamindb as ln

    url = "s3://runs/refused"
    done = run_sharded(s3, tmp_path, url, "--refuse-from-epoch", "0")
    assert "Could not store" in done.stderr and "IsADirectoryError" not in done.stderr, done.stderr[-3000:]
    assert ln.Artifact.filter(key__startswith=f"{url}/checkpoints/").count() == 0
    home = s3["folder"] / "cache" / "lamin_lightning" / "s3" / "runs" / "refused"
    assert len(list((home / ".lamin_lightning").glob("*.jsonl"))) == 1  # the journal waits in the cache
    synced = subprocess.run([str(Path(sys.executable).with_name("lamin-lightning")), "sync", url], env=sharded_env(s3),
                            capture_output=True, text=True, timeout=300)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    objects = s3_folders(s3, "refused")
    artifacts = {a.key.rsplit("/", 1)[1]: a for a in ln.Artifact.filter(key__startswith=f"{url}/checkpoints/")}
    assert set(artifacts) == set(objects) == {"epoch=1-step=4.ckpt", "epoch=2-step=6.ckpt", "last.ckpt"}
    for name, artifact in artifacts.items():
        assert artifact.n_files == 4 and folder_md5(Path(artifact.path)) == objects[name], name
    assert synced.stdout.splitlines()[-1].startswith("published 3; 2 skipped"), synced.stdout
    assert not [p for p in home.rglob("*") if p.is_file()], list(home.rglob("*"))  # nothing left in the cache


if __name__ == "__main__":
    {"storage": child_main, "dirpath": remote_dirpath_main, "sharded_storage": sharded_storage_main}[sys.argv[1]]()
