"""Per-save cost of publishing checkpoints: plain ModelCheckpoint vs lamindb's Checkpoint vs lamin_lightning's.

A tiny model saves a checkpoint every training step (save_top_k=-1, or --top-k K to exercise eviction) for N steps, in
one process, one throwaway local SQLite instance, with the network refused. Prints the median time each save added over
plain ModelCheckpoint for the first and last ten saves (the time training waited in `_save_checkpoint`), and each fit's
time as a ratio of the plain fit; every artifact is published by the time `fit` returns. For ours, the inline row is
also all the publishing work of a save; the async_publish row is what training waits for when a worker thread does it.
The peers, where installed, log files only (no queryable features): MLflow's and DVCLive's loggers with
log_model="all" behind a plain ModelCheckpoint (DVCLive from the `bench` extra:
`pip install -c constraints.txt -e ".[bench]"`).

    python bench/checkpoint_overhead.py [--saves 100] [--top-k -1] [--skip-lamindb]
"""
import argparse
import atexit
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from lamin_lightning.testing import NetworkGuard, TinyData, TinyModel, isolate_settings, tiny_trainer

isolate_settings()
guard = NetworkGuard().install()

import lamindb as ln  # noqa: E402
import lamindb_setup as ln_setup  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402

import lamin_lightning as ll  # noqa: E402
from lamin_lightning.process import ProcessWorker  # noqa: E402
from lamin_lightning.testing import init_local_instance  # noqa: E402


PUBLISHER_PEAKS: list[int] = []  # KB: each publisher process's peak RSS, read just before it is told to close
_stop = ProcessWorker.stop


def _stop_measured(self) -> None:
    if self.process is not None:
        status = Path(f"/proc/{self.process.pid}/status")
        if status.exists():
            PUBLISHER_PEAKS.extend(int(l.split()[1]) for l in status.read_text().splitlines() if l.startswith("VmHWM"))
    _stop(self)


ProcessWorker.stop = _stop_measured


def bench_instance(prefix: str) -> Path:
    "A throwaway folder holding a local SQLite instance with lamin_lightning's features; lamindb kept quiet."
    root = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, root, True)  # the bench leaves nothing in the temporary folder
    init_local_instance(root / "storage")
    ln.settings.verbosity = "error"
    ll.save_lightning_features()
    return root


def timed(cls: type) -> type:
    """A subclass of `cls` that records how long each `_save_checkpoint` took, Lightning's write included: wall-clock
    seconds, and CPU seconds of the calling thread (its own work, without waiting for the GIL or a core)."""

    class Timed(cls):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.save_seconds: list[float] = []
            self.save_cpu_seconds: list[float] = []

        def _save_checkpoint(self, trainer, filepath):
            start, cpu = time.perf_counter(), time.thread_time()
            super()._save_checkpoint(trainer, filepath)
            self.save_cpu_seconds.append(time.thread_time() - cpu)
            self.save_seconds.append(time.perf_counter() - start)

    Timed.__name__ = f"Timed{cls.__name__}"
    return Timed


def fit(callback, root: Path, saves: int, logger=False) -> float:
    trainer = tiny_trainer(root, [callback], logger=logger, max_epochs=1, max_steps=saves, limit_train_batches=saves,
                           limit_val_batches=0)
    start = time.perf_counter()
    trainer.fit(TinyModel(), TinyData(n=8 * saves))
    return time.perf_counter() - start


def dvclive_fit(logger_cls: type, root: Path, saves: int, common: dict) -> tuple[list[float], float]:
    """DVCLive's `log_model="all"`: after each save, `dvc add` of the checkpoint folder (hashing it, copying new files
    into the DVC cache). It needs a DVC project around the checkpoints: without one `log_artifact` skips with a warning,
    and DVCLive would `dvc init` the git repository enclosing the working directory. So: a project without git
    (`no_scm`) in the bench's folder, the working directory during the fit; DVC's config and site cache under the
    bench's folder (not ~/.config/dvc, /var/tmp/dvc), analytics and Studio off; no DVC experiment
    (`save_dvc_exp=False`)."""
    config = root / "dvc-config"
    os.environ.update(DVC_GLOBAL_CONFIG_DIR=str(config / "global"), DVC_SYSTEM_CONFIG_DIR=str(config / "system"),
                      DVC_SITE_CACHE_DIR=str(config / "site-cache"), DVC_NO_ANALYTICS="1", DVC_STUDIO_OFFLINE="true")
    from dvc.repo import Repo

    project = root / "dvclive"
    project.mkdir()
    Repo.init(str(project), no_scm=True).close()
    peer = timed(ModelCheckpoint)(dirpath=project / "checkpoints", **common)
    logger = logger_cls(dir=str(project / "dvclive"), save_dvc_exp=False, log_model="all")
    cwd = os.getcwd()
    os.chdir(project)
    try:
        fit_s = fit(peer, root, saves, logger=logger)
    finally:
        os.chdir(cwd)
    objects = [f for f in (project / ".dvc" / "cache").rglob("*") if f.is_file()]
    manifests = sum(f.suffix == ".dir" for f in objects)
    ckpt_bytes = sum(f.stat().st_size for f in (project / "checkpoints").iterdir())
    print(f"DVCLive stored: {len(objects) - manifests} files and {manifests} folder manifests in .dvc/cache "
          f"({sum(f.stat().st_size for f in objects) / 1e6:.1f} MB, checkpoints {ckpt_bytes / 1e6:.1f} MB), "
          f"checkpoints.dvc: {(project / 'checkpoints.dvc').exists()}, "
          f"best copied to dvclive/artifacts: {any((project / 'dvclive' / 'artifacts').glob('*.ckpt'))}")
    assert (project / "checkpoints.dvc").exists(), "DVCLive tracked no checkpoints"
    return peer.save_seconds, fit_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saves", type=int, default=100)
    parser.add_argument("--top-k", type=int, default=-1, help="save_top_k (-1 keeps every checkpoint)")
    parser.add_argument("--skip-lamindb", action="store_true", help="omit lamindb's integration (slow at large N)")
    args = parser.parse_args()
    n = args.saves
    root = bench_instance("ll-bench-")

    common = dict(save_top_k=args.top_k, every_n_train_steps=1, monitor="train_loss")
    kept = n if args.top_k < 0 else args.top_k
    results: dict[str, tuple[list[float], float]] = {}
    fit(ModelCheckpoint(dirpath=root / "warmup", **common), root, min(n, 20))  # the first fit pays one-off costs
    plain = timed(ModelCheckpoint)(dirpath=root / "plain", **common)
    results["plain ModelCheckpoint"] = (plain.save_seconds, fit(plain, root, n))
    ours = timed(ll.Checkpoint)(dirpath=root / "ours", **common)  # the hub flag is untouched: ours never asks
    results["lamin_lightning (inline)"] = (ours.save_seconds, fit(ours, root, n))
    background = timed(ll.Checkpoint)(dirpath=root / "async", async_publish=True, **common)
    results["lamin_lightning (async_publish)"] = (background.save_seconds, fit(background, root, n))
    process = timed(ll.Checkpoint)(dirpath=root / "process", async_publish="process", **common)
    results["lamin_lightning (process)"] = (process.save_seconds, fit(process, root, n))
    for name in ("ours", "async", "process"):  # everything published by the time fit returned
        stored = ln.Artifact.filter(key__startswith=f"{root / name}/checkpoints/", suffix=".ckpt").count()
        assert stored == kept, f"{name}: expected {kept} stored checkpoints, found {stored}"
    try:  # MLflow, an optional peer: files only, no queryable features
        from lightning.pytorch.loggers import MLFlowLogger
    except ImportError:
        MLFlowLogger = None
    if MLFlowLogger is not None:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        peer = timed(ModelCheckpoint)(dirpath=root / "mlflow", **common)
        logger = MLFlowLogger(tracking_uri=(root / "mlruns").as_uri(), log_model="all")
        results["MLflow log_model='all'"] = (peer.save_seconds, fit(peer, root, n, logger=logger))
    try:  # DVCLive, an optional peer (the `bench` extra): a `dvc add` of the checkpoint folder after each save
        from dvclive.lightning import DVCLiveLogger
    except ImportError as error:
        print(f"DVCLive row skipped: {error} (pip install -c constraints.txt -e '.[bench]')")
    else:
        results["DVCLive log_model='all'"] = dvclive_fit(DVCLiveLogger, root, n, common)
    if not args.skip_lamindb:
        from lamindb.integrations import lightning as lamindb_lightning  # after init: it needs Django's models

        ln_setup.settings.instance._is_on_hub = False  # bench only: lamindb's integration asks the hub otherwise
        theirs = timed(lamindb_lightning.Checkpoint)(dirpath=str(root / "lamindb"), **common)
        results["lamindb Checkpoint"] = (theirs.save_seconds, fit(theirs, root, n))

    base_saves, base_fit = results["plain ModelCheckpoint"]
    first_base, last_base = statistics.median(base_saves[:10]), statistics.median(base_saves[-10:])
    print(f"\n{n} saves, tiny model, save_top_k={args.top_k}, a save every step (medians; ms added per save over plain)")
    print(f"{'callback':<32}{'1st save':>9}{'saves 1-10':>12}{'11-20':>8}{'last 10' if args.top_k > 0 else f'{n - 9}-{n}':>9}{'median':>8}"
          f"{'last/11-20':>12}{'fit s':>8}{'fit ratio':>11}")
    for name, (seconds, fit_s) in results.items():
        added = lambda i, j: (statistics.median(seconds[i:j]) - statistics.median(base_saves[i:j])) * 1000  # noqa: E731
        first, warm, last = added(0, 10), added(10, 20), added(-10, None)  # with save_top_k > 0 Lightning saves only what ranks in the top k: fewer than n
        median = (statistics.median(seconds) - statistics.median(base_saves)) * 1000
        growth = f"{last / warm:.2f}" if name != "plain ModelCheckpoint" and warm > 0 else "-"
        print(f"{name:<32}{added(0, 1):>9.1f}{first:>12.1f}{warm:>8.1f}{last:>9.1f}{median:>8.1f}{growth:>12}"
              f"{fit_s:>8.2f}{fit_s / base_fit:>10.1f}x")
    print(f"plain save itself: {first_base * 1000:.1f} ms (first ten), {last_base * 1000:.1f} ms (last ten)")
    print(f"peak RSS: the training process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB, "
          f"the publisher process {max(PUBLISHER_PEAKS, default=0) / 1024:.0f} MB")
    print(f"network connections attempted: {len(guard.attempts)}")
    sys.exit(1 if guard.attempts else 0)


if __name__ == "__main__":
    main()
