"""Training-blocking time per save under `AsyncCheckpointIO`: plain ModelCheckpoint vs lamin_lightning's Checkpoint.

Lightning writes each checkpoint on AsyncCheckpointIO's thread; ours journals and publishes each file once its write
is complete (the IO thread records it, a worker thread publishes it). Each epoch has `--every` steps and ends with a
save. What training waits for in `_save_checkpoint` (Lightning's hand-off to the IO thread, and what is ours on the
training thread) is measured per save, for each checkpoint size, as wall-clock time (the target: a median ratio of at most 1.1
against plain ModelCheckpoint) and as CPU time of the training thread (what the save itself costs, without waiting for
the GIL or a core: steadier on a shared machine). Plain and ours run `--rounds` times each, interleaved. lamindb's
integration is measured too: it publishes right after the hand-off, before the write is complete, so its row also
counts the checkpoints it published with bytes different from the final file. Everything runs in one process with a
throwaway local SQLite instance and the network refused.

    python bench/async_io.py [--widths 200000,2000000,20000000] [--saves 40,20,10] [--rounds 5] [--every 10] [--skip-lamindb]
"""
import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from checkpoint_overhead import bench_instance, guard, ll, ln, ln_setup, timed  # noqa: E402  (isolated settings, network refused)
from lamindb_setup.core.hashing import hash_file  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from lightning.pytorch.plugins.io import AsyncCheckpointIO  # noqa: E402
from torch.utils.data import DataLoader, RandomSampler  # noqa: E402

from lamin_lightning.testing import TinyData, TinyModel, tiny_trainer  # noqa: E402


def fit(callback, root: Path, saves: int, width: int, every: int) -> float:
    "Fit `saves` epochs of `every` steps, a save at the last step of each; returns the seconds between saves."
    trainer = tiny_trainer(root, [callback], logger=False, max_epochs=saves, limit_train_batches=every,
                           limit_val_batches=0, plugins=[AsyncCheckpointIO()])
    start = time.perf_counter()
    trainer.fit(TinyModel(hidden=width), Repeated(every, hidden=width))
    return (time.perf_counter() - start) / saves


class Repeated(TinyData):
    "One batch of `TinyData`, `steps` times an epoch: the data's size does not grow with the steps."

    def __init__(self, steps: int, hidden: int) -> None:
        super().__init__(n=8, hidden=hidden)
        self.steps = steps

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=8, sampler=RandomSampler(self.data, num_samples=8 * self.steps))


class Ours(ll.Checkpoint):
    "Notes how many of its checkpoints were in LaminDB when training ended (the rest are published by `fit`'s end)."

    def on_train_end(self, trainer, pl_module):
        self.published_in_time = self._fit.publisher.published if self._fit is not None else 0
        super().on_train_end(trainer, pl_module)


def stale(prefix: str, folder: Path) -> int:
    "How many published checkpoints hold bytes other than the file's final bytes."
    artifacts = ln.Artifact.filter(key__startswith=prefix, suffix=".ckpt")
    return sum(a.hash != hash_file(folder / Path(a.key).name)[1] for a in artifacts if (folder / Path(a.key).name).exists())


def measure(root: Path, saves: int, width: int, rounds: int, every: int, with_lamindb: bool) -> None:
    "One table: the three callbacks, each fitting a model of `width` units with `saves` saves, one every `every` steps."
    common = dict(save_top_k=-1, every_n_train_steps=every, monitor="train_loss")
    names = ("plain ModelCheckpoint", "lamin_lightning Checkpoint")
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    turns: list[float] = []  # per round: ours' median over plain's
    in_time: list[int] = []  # per round: our checkpoints in LaminDB when training ended
    root = root / f"width-{width}"  # a folder (and key prefix) of its own
    fit(ModelCheckpoint(dirpath=root / "warmup", **common), root, 3, width, every)  # memory of this size allocated once
    apart: list[float] = []  # seconds between saves, of plain's fits
    stale_counts = {"lamin_lightning Checkpoint": 0}
    for turn in range(rounds):  # interleaved, so that neither callback always runs on a warmer machine
        plain = timed(ModelCheckpoint)(dirpath=root / f"plain-{turn}", **common)
        apart.append(fit(plain, root, saves, width, every))
        size = next((root / f"plain-{turn}").glob("*.ckpt")).stat().st_size / 1e6
        shutil.rmtree(root / f"plain-{turn}")
        ours = timed(Ours)(dirpath=root / f"ours-{turn}", **common)
        fit(ours, root, saves, width, every)
        prefix = f"{root / f'ours-{turn}'}/checkpoints/"
        assert ln.Artifact.filter(key__startswith=prefix, suffix=".ckpt").count() == saves
        stale_counts["lamin_lightning Checkpoint"] += stale(prefix, root / f"ours-{turn}")
        shutil.rmtree(root / f"ours-{turn}")
        for name, callback in zip(names, (plain, ours)):
            wall[name] += callback.save_seconds
            cpu[name] += callback.save_cpu_seconds
        turns.append(statistics.median(ours.save_seconds) / statistics.median(plain.save_seconds))
        in_time.append(ours.published_in_time)
    crashed = ""
    if with_lamindb:
        from lamindb.integrations import lightning as lamindb_lightning

        ln_setup.settings.instance._is_on_hub = False  # bench only: lamindb's integration asks the hub otherwise
        theirs = timed(lamindb_lightning.Checkpoint)(dirpath=str(root / "lamindb"), **common)
        try:
            fit(theirs, root, saves, width, every)
        except Exception as error:  # the result to report: lamindb's integration stopped training
            crashed = f"{type(error).__name__}: {str(error).splitlines()[0][:100]}"
        wall["lamindb Checkpoint"], cpu["lamindb Checkpoint"] = theirs.save_seconds, theirs.save_cpu_seconds
        stale_counts["lamindb Checkpoint"] = stale(f"{root / 'lamindb'}/", root / "lamindb")

    base, base_cpu = (statistics.median(rows[names[0]]) for rows in (wall, cpu))
    print(f"\n{rounds} x {saves} saves of {size:.1f} MB under AsyncCheckpointIO, one every {every} steps "
          f"({statistics.median(apart) * 1000:.0f} ms apart with plain ModelCheckpoint; median per save: wall-clock ms "
          "that training waited, and CPU ms of the training thread)")
    print(f"{'callback':<30}{'wall ms':>9}{'ratio':>8}{'CPU ms':>9}{'ratio':>8}{'stale bytes':>13}")
    for name, seconds in wall.items():
        if not seconds:  # stopped at its first save
            print(f"{name:<30}{'-':>9}{'-':>8}{'-':>9}{'-':>8}{'-':>13}")
            continue
        median, median_cpu = statistics.median(seconds), statistics.median(cpu[name])
        print(f"{name:<30}{median * 1000:>9.2f}{median / base:>7.2f}x{median_cpu * 1000:>9.2f}"
              f"{median_cpu / base_cpu:>7.2f}x{stale_counts.get(name, '-'):>13}")
    print(f"wall-clock ratio of each round: {', '.join(f'{r:.2f}x' for r in turns)}")
    print(f"lamin_lightning checkpoints already in LaminDB when training ended, of {saves}: "
          f"{', '.join(map(str, in_time))} (the rest were published before `fit` returned)")
    if crashed:
        print(f"lamindb Checkpoint stopped training after {len(wall['lamindb Checkpoint'])} saves: {crashed}")
    shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="200000,2000000,20000000",
                        help="model widths, comma-separated: 4 bytes per unit in each checkpoint")
    parser.add_argument("--saves", default="40,20,10", help="saves for each width, comma-separated")
    parser.add_argument("--rounds", type=int, default=5, help="fits of plain and of ours at each size, interleaved")
    parser.add_argument("--every", type=int, default=10, help="training steps from one save to the next (1: a save at "
                        "every step, faster than this machine's two cores write, hash and publish them)")
    parser.add_argument("--skip-lamindb", action="store_true")
    args = parser.parse_args()
    root = bench_instance("ll-bench-async-")
    for width, saves in zip(map(int, args.widths.split(",")), map(int, args.saves.split(",")), strict=True):
        measure(root, saves, width, args.rounds, args.every, not args.skip_lamindb)
    print(f"network connections attempted: {len(guard.attempts)}")
    sys.exit(1 if guard.attempts else 0)


if __name__ == "__main__":
    main()
