"""Training-blocking time per save with an instance whose storage is S3 (moto's server on loopback).

Four callbacks fit the same model with a save at every step: plain ModelCheckpoint (no upload), ours inline
(`async_publish=False`: training waits for each upload), ours with the default for cloud storage (uploads on a
background thread), and lamindb's integration (inline; it runs here only because of the flag below). The time in `_save_checkpoint` is measured per save, Lightning's own write included; the script
prints medians, the ratios against plain ModelCheckpoint, and the upload requests per checkpoint from the server's log.
Then plain and ours (background) write to `dirpath=s3://…` as well, with the requests that s3fs sent: each checkpoint
goes up once (a PUT to the folder), and the storage gets the server's copies (CopyObject).
Like the tests, it sets lamindb_setup's private `_is_on_hub = False` before adding the S3 location (lamindb 2.12 asks
the hub first); the package never does.

    python bench/s3_uploads.py [--width 2000000] [--saves 10]
"""
import argparse
import collections
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def start_server(log: Path) -> subprocess.Popen:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="test",
                      AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1")
    with log.open("w") as out:
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=out, stderr=out)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return server
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("moto's server did not start") from None
            time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--width", type=int, default=2_000_000, help="units of the model: 4 bytes each per checkpoint")
    parser.add_argument("--saves", type=int, default=10)
    args = parser.parse_args()
    log = Path(tempfile.mkdtemp()) / "moto.log"
    server = start_server(log)
    try:
        run(args.width, args.saves, log)
    finally:
        server.terminate()
        server.wait(timeout=30)


def run(width: int, saves: int, log: Path) -> None:
    from lamin_lightning.testing import NetworkGuard, TinyData, TinyModel, init_local_instance, isolate_settings, tiny_trainer

    isolate_settings()
    NetworkGuard().install()  # only loopback (the S3 server) may be reached
    root = Path(tempfile.mkdtemp(prefix="lamin-lightning-s3-"))
    init_local_instance(root / "storage")  # before lamindb is imported, as in the tests
    import boto3
    import lamindb as ln
    import lamindb_setup as ln_setup
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lamindb.integrations import lightning as lamindb_lightning

    import lamin_lightning as ll

    ln.settings.verbosity = "error"
    ll.save_lightning_features()
    boto3.client("s3").create_bucket(Bucket="bench")
    ln_setup.settings.instance._is_on_hub = False  # bench only: lamindb asks the hub before adding cloud storage
    uri = f"s3://bench?endpoint_url={os.environ['AWS_ENDPOINT_URL']}"
    ln.Storage(root=uri).save()
    ln.settings.storage = uri
    common = dict(save_top_k=-1, every_n_train_steps=1, monitor="train_loss")

    def timed(callback):
        "`callback`, recording in `save_seconds` how long each `_save_checkpoint` took, Lightning's write included."
        callback.save_seconds, save = [], callback._save_checkpoint

        def timed_save(trainer, filepath):
            start = time.perf_counter()
            save(trainer, filepath)
            callback.save_seconds.append(time.perf_counter() - start)

        callback._save_checkpoint = timed_save
        return callback

    def fit(callback) -> float:
        trainer = tiny_trainer(root, [callback], logger=False, max_epochs=1, max_steps=saves,
                               limit_train_batches=saves, limit_val_batches=0)
        start = time.perf_counter()
        trainer.fit(TinyModel(hidden=width), TinyData(n=8 * saves, hidden=width))
        return time.perf_counter() - start

    fit(ModelCheckpoint(dirpath=root / "warmup", **common))
    rows: dict[str, tuple[list[float], float]] = {}
    variants = [
        ("plain ModelCheckpoint", "plain", lambda d: ModelCheckpoint(dirpath=d, **common)),
        ("ours, inline (async_publish=False)", "inline", lambda d: ll.Checkpoint(dirpath=d, async_publish=False, **common)),
        ("ours, background (default for cloud storage)", "ours", lambda d: ll.Checkpoint(dirpath=d, **common)),
        ("lamindb's integration", "lamindb", lambda d: lamindb_lightning.Checkpoint(dirpath=str(d), **common)),
    ]
    for name, folder, make in variants:
        callback = timed(make(root / folder))
        rows[name] = (callback.save_seconds, fit(callback))
    size = next(a.size for a in ln.Artifact.filter(suffix=".ckpt", key__contains="/ours/"))
    puts = collections.Counter(re.findall(r'"PUT /bench/(\S+?\.ckpt)\S* HTTP', log.read_text()))
    plain = statistics.median(rows["plain ModelCheckpoint"][0])
    print(f"{saves} saves of {size / 1e6:.1f} MB to moto's S3 on loopback; training-blocking time per save:")
    for name, (seconds, total) in rows.items():
        median = statistics.median(seconds)
        print(f"  {name:48s} {median * 1e3:8.1f} ms  {median / plain:5.2f}x  (fit {total:.1f} s)")
    counts = collections.Counter(puts.values())
    print(f"upload requests per published checkpoint: {dict(counts)} (one PUT of {size} bytes each)")
    print(f"checkpoint artifacts in S3: {ln.Artifact.filter(suffix='.ckpt').count()} (ours 2 x {saves}, lamindb's {saves})")
    remote_folder(fit, timed, common, saves)


def remote_folder(fit, timed, common: dict, saves: int) -> None:
    "`dirpath=s3://…` as well: Lightning writes to S3, and the server copies each checkpoint into the storage."
    import boto3
    import s3fs
    from lightning.pytorch.callbacks import ModelCheckpoint

    import lamin_lightning as ll

    boto3.client("s3").create_bucket(Bucket="bench-runs")
    calls: collections.Counter = collections.Counter()  # (method, bucket) of each request s3fs sends
    call_s3 = s3fs.S3FileSystem._call_s3

    async def counted(self, method, *args, **kwargs):
        calls[method, kwargs.get("Bucket")] += 1
        return await call_s3(self, method, *args, **kwargs)

    s3fs.S3FileSystem._call_s3 = counted
    rows = {}
    for name, make in [("plain ModelCheckpoint", lambda: ModelCheckpoint(dirpath="s3://bench-runs/plain", **common)),
                       ("ours, background (default)", lambda: ll.Checkpoint(dirpath="s3://bench-runs/ours", **common))]:
        calls.clear()
        callback = timed(make())
        rows[name] = (callback.save_seconds, fit(callback), dict(calls))
    s3fs.S3FileSystem._call_s3 = call_s3
    plain = statistics.median(rows["plain ModelCheckpoint"][0])
    print(f"\nthe same with dirpath=s3://bench-runs/… ({saves} saves); training-blocking time per save:")
    for name, (seconds, total, sent) in rows.items():
        median = statistics.median(seconds)
        uploads = {f"{m} to {b}": n for (m, b), n in sent.items() if m in ("put_object", "upload_part", "copy_object")}
        print(f"  {name:48s} {median * 1e3:8.1f} ms  {median / plain:5.2f}x  (fit {total:.1f} s)  {uploads}")


if __name__ == "__main__":
    main()
