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
from pathlib import Path

RESULT = "LAMIN_LIGHTNING_S3_RESULT "


def child_main() -> None:
    import re
    import shutil
    import tempfile

    from lamin_lightning.testing import NetworkGuard, init_local_instance, isolate_settings

    isolate_settings(tempfile.mkdtemp())
    guard = NetworkGuard().install()  # only loopback (the S3 server) may be reached
    root = Path.cwd()
    init_local_instance(root / "storage")
    import lamindb as ln
    import lamindb_setup as ln_setup

    ln_setup.settings.instance._is_on_hub = False  # test only: lamindb asks the hub before adding cloud storage
    uri = f"s3://ckpts?endpoint_url={os.environ['AWS_ENDPOINT_URL']}"
    ln.Storage(root=uri).save()
    ln.settings.storage = uri

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
    print(RESULT + json.dumps(dict(
        lag_puts=lag_puts, lag_on_disk=sorted(p.name for p in lag.glob("*.ckpt")),
        lag_stored=sorted(a.key.rsplit("/", 1)[1] for a in lagged),
        lag_flags=[lagged.filter(is_best_model=True).count(), lagged.filter(is_last_model=True).count()],
        stored=stored, on_disk=sorted(p.name for p in dirpath.glob("*.ckpt")), best=str(best.path),
        last=stored["last.ckpt"][0],
        same_weights=bool((first.layer.weight == second.layer.weight).all()),
        resumed_epoch=resumed.current_epoch, network_attempts=len(guard.attempts))), flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def requests(log: str, method: str) -> collections.Counter:
    "Requests of `method` per object path in moto's server log."
    return collections.Counter(re.findall(rf'"{method} /ckpts/(\S+) HTTP', log))


def test_s3_storage_uploads_once_and_downloads_once(tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "moto.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMIN_")}
    env |= {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1", "PYTHONWARNINGS": "ignore",
            "MOTO_LOG": str(tmp_path / "moto.log")}
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

        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="test",
                     aws_secret_access_key="test", region_name="us-east-1").create_bucket(Bucket="ckpts")
        work = tmp_path / "work"
        work.mkdir()
        done = subprocess.run([sys.executable, str(Path(__file__).resolve())], cwd=work, env=env,
                              capture_output=True, text=True, timeout=300)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert done.returncode == 0, done.stderr[-4000:]
    (line,) = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    result = json.loads(line[len(RESULT):])
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


if __name__ == "__main__":
    child_main()
