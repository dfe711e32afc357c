"""Per-save cost of publishing checkpoints: plain ModelCheckpoint vs lamindb's Checkpoint vs lamin_lightning's.

A tiny model saves a checkpoint every training step (save_top_k=-1, or --top-k K to exercise eviction) for N steps, in
one process, one throwaway local SQLite instance, with the network refused. Prints the median time each save added over
plain ModelCheckpoint for the first and last ten saves (the time training waited in `_save_checkpoint`), and each fit's
time as a ratio of the plain fit; every artifact is published by the time `fit` returns. For ours, the inline row is
also all the publishing work of a save; the async_publish row is what training waits for when a worker thread does it.

    python bench/checkpoint_overhead.py [--saves 100] [--top-k -1] [--skip-lamindb]
"""
import argparse
import os
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
from lamin_lightning.testing import init_local_instance  # noqa: E402


def bench_instance(prefix: str) -> Path:
    "A throwaway folder holding a local SQLite instance with lamin_lightning's features; lamindb kept quiet."
    root = Path(tempfile.mkdtemp(prefix=prefix))
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
    for name in ("ours", "async"):  # everything published by the time fit returned
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
    if not args.skip_lamindb:
        from lamindb.integrations import lightning as lamindb_lightning  # after init: it needs Django's models

        ln_setup.settings.instance._is_on_hub = False  # bench only: lamindb's integration asks the hub otherwise
        theirs = timed(lamindb_lightning.Checkpoint)(dirpath=str(root / "lamindb"), **common)
        results["lamindb Checkpoint"] = (theirs.save_seconds, fit(theirs, root, n))

    base_saves, base_fit = results["plain ModelCheckpoint"]
    first_base, last_base = statistics.median(base_saves[:10]), statistics.median(base_saves[-10:])
    print(f"\n{n} saves, tiny model, save_top_k={args.top_k}, a save every step (medians; ms added per save over plain)")
    print(f"{'callback':<32}{'1st save':>9}{'saves 1-10':>12}{'11-20':>8}{f'{n - 9}-{n}':>9}{'median':>8}"
          f"{'last/11-20':>12}{'fit s':>8}{'fit ratio':>11}")
    for name, (seconds, fit_s) in results.items():
        added = lambda i, j: (statistics.median(seconds[i:j]) - statistics.median(base_saves[i:j])) * 1000  # noqa: E731
        first, warm, last = added(0, 10), added(10, 20), added(n - 10, n)
        median = (statistics.median(seconds) - statistics.median(base_saves)) * 1000
        growth = f"{last / warm:.2f}" if name != "plain ModelCheckpoint" and warm > 0 else "-"
        print(f"{name:<32}{added(0, 1):>9.1f}{first:>12.1f}{warm:>8.1f}{last:>9.1f}{median:>8.1f}{growth:>12}"
              f"{fit_s:>8.2f}{fit_s / base_fit:>10.1f}x")
    print(f"plain save itself: {first_base * 1000:.1f} ms (first ten), {last_base * 1000:.1f} ms (last ten)")
    print(f"network connections attempted: {len(guard.attempts)}")
    sys.exit(1 if guard.attempts else 0)


if __name__ == "__main__":
    main()
