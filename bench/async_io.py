"""Training-blocking time per save under `AsyncCheckpointIO`: plain ModelCheckpoint vs lamin_lightning's Checkpoint.

Lightning writes each checkpoint on AsyncCheckpointIO's thread; ours publishes each file once its write is complete,
from a worker thread. What training waits for in `_save_checkpoint` (Lightning's hand-off to the IO thread, plus our
journal line) is measured per save; the target is a median ratio of at most 1.1 against plain ModelCheckpoint. lamindb's
integration is measured too: it publishes right after the hand-off, before the write is complete, so its row also
counts the checkpoints it published with bytes different from the final file. Everything runs in one process with a
throwaway local SQLite instance and the network refused.

    python bench/async_io.py [--saves 40] [--width 200000] [--skip-lamindb]
"""
import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from checkpoint_overhead import guard, ll, ln, ln_setup, timed  # noqa: E402  (isolated settings, network refused)
from lamindb_setup.core.hashing import hash_file  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from lightning.pytorch.plugins.io import AsyncCheckpointIO  # noqa: E402

from lamin_lightning.testing import TinyData, TinyModel, init_local_instance, tiny_trainer  # noqa: E402


def fit(callback, root: Path, saves: int, width: int) -> None:
    trainer = tiny_trainer(root, [callback], logger=False, max_epochs=1, max_steps=saves, limit_train_batches=saves,
                           limit_val_batches=0, plugins=[AsyncCheckpointIO()])
    trainer.fit(TinyModel(hidden=width), TinyData(n=8 * saves, hidden=width))


def stale(prefix: str, folder: Path) -> int:
    "How many published checkpoints hold bytes other than the file's final bytes."
    artifacts = ln.Artifact.filter(key__startswith=prefix, suffix=".ckpt")
    return sum(a.hash != hash_file(folder / Path(a.key).name)[1] for a in artifacts if (folder / Path(a.key).name).exists())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saves", type=int, default=40)
    parser.add_argument("--width", type=int, default=200_000, help="model width: 4 bytes per unit in each checkpoint")
    parser.add_argument("--skip-lamindb", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ll-bench-async-"))
    init_local_instance(root / "storage")
    ln.settings.verbosity = "error"
    ll.save_lightning_features()
    common = dict(save_top_k=-1, every_n_train_steps=1, monitor="train_loss")
    fit(ModelCheckpoint(dirpath=root / "warmup", **common), root, 10, args.width)
    rows: dict[str, list[float]] = {}
    plain = timed(ModelCheckpoint)(dirpath=root / "plain", **common)
    fit(plain, root, args.saves, args.width)
    rows["plain ModelCheckpoint"] = plain.save_seconds
    ours = timed(ll.Checkpoint)(dirpath=root / "ours", **common)
    fit(ours, root, args.saves, args.width)
    rows["lamin_lightning Checkpoint"] = ours.save_seconds
    prefix = f"{root / 'ours'}/checkpoints/"
    assert ln.Artifact.filter(key__startswith=prefix, suffix=".ckpt").count() == args.saves
    stale_counts = {"lamin_lightning Checkpoint": stale(prefix, root / "ours")}
    if not args.skip_lamindb:
        from lamindb.integrations import lightning as lamindb_lightning

        ln_setup.settings.instance._is_on_hub = False  # bench only: lamindb's integration asks the hub otherwise
        theirs = timed(lamindb_lightning.Checkpoint)(dirpath=str(root / "lamindb"), **common)
        try:
            fit(theirs, root, args.saves, args.width)
        except Exception as error:  # the result to report: lamindb's integration stopped training
            crashed = f"{type(error).__name__}: {str(error).splitlines()[0][:100]}"
        else:
            crashed = ""
        rows["lamindb Checkpoint"] = theirs.save_seconds
        stale_counts["lamindb Checkpoint"] = stale(f"{root / 'lamindb'}/", root / "lamindb")

    base = statistics.median(rows["plain ModelCheckpoint"])
    size = (root / "plain").glob("*.ckpt").__next__().stat().st_size / 1e6
    print(f"\n{args.saves} saves of {size:.1f} MB under AsyncCheckpointIO (median ms training waited per save)")
    print(f"{'callback':<30}{'ms/save':>10}{'ratio':>8}{'stale bytes':>13}")
    for name, seconds in rows.items():
        if not seconds:  # stopped at its first save
            print(f"{name:<30}{'-':>10}{'-':>8}{'-':>13}")
            continue
        median = statistics.median(seconds)
        print(f"{name:<30}{median * 1000:>10.2f}{median / base:>7.2f}x{stale_counts.get(name, '-'):>13}")
    if not args.skip_lamindb and crashed:
        print(f"lamindb Checkpoint stopped training after {len(rows['lamindb Checkpoint'])} saves: {crashed}")
    print(f"network connections attempted: {len(guard.attempts)}")
    sys.exit(1 if guard.attempts else 0)


if __name__ == "__main__":
    main()
