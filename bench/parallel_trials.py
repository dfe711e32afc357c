"""Parallel trials on one SQLite instance: several fits at once, each in its own process, publishing into one database.

Each fit saves a checkpoint at every step (`save_top_k=5`, `save_last=True`, so evictions and re-saves of
`last.ckpt`), with the network refused. Prints, for each number of concurrent fits: how many "database is locked"
warnings the fits logged, how many publications were still pending when `fit` returned (a journal left in the
folder), whether LaminDB then held exactly the files on disk with one `is_last_model` and one `is_best_model` per fit,
and the median time per save (the cost of contention).

    python bench/parallel_trials.py [--fits 1,3,8] [--saves 40] [--postgres] [--callbacks ours,lamindb]

With `--postgres` the instance's database is a throwaway PostgreSQL server on loopback (tests/pg.py: Debian's
binaries, installed with apt-get when missing) instead of SQLite.
"""
import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from lamin_lightning.testing import NetworkGuard, isolate_settings

isolate_settings()
guard = NetworkGuard().install()

import lamindb as ln  # noqa: E402

import lamin_lightning as ll  # noqa: E402
from lamin_lightning.testing import init_local_instance  # noqa: E402

FIT = """
import sys, time
from lamin_lightning.testing import NetworkGuard, TinyData, TinyModel, tiny_trainer
guard = NetworkGuard().install()
import lamin_lightning as ll

dirpath, saves, which = sys.argv[1], int(sys.argv[2]), sys.argv[3]
seconds = []
if which == "lamindb":
    import lamindb_setup as ln_setup
    from lamindb.integrations import lightning as lamindb_lightning

    ln_setup.settings.instance._is_on_hub = False  # bench only: lamindb's integration asks the hub otherwise
    base = lamindb_lightning.Checkpoint
else:
    base = ll.Checkpoint

class Timed(base):
    def _save_checkpoint(self, trainer, filepath):
        start = time.perf_counter()
        super()._save_checkpoint(trainer, filepath)
        seconds.append(time.perf_counter() - start)

callback = Timed(dirpath=dirpath, monitor="train_loss", save_top_k=5, save_last=True, every_n_train_steps=1)
tiny_trainer(dirpath, [callback], logger=False, max_epochs=1, max_steps=saves, limit_train_batches=saves,
             limit_val_batches=0).fit(TinyModel(), TinyData(n=8 * saves))
print("SAVES", " ".join(f"{s:.6f}" for s in seconds))
print("ATTEMPTS", len(guard.attempts))
"""


def trial(root: Path, fits: int, saves: int, which: str) -> None:
    folders = [root / f"{which}-{fits}-fits" / f"fit-{i}" for i in range(fits)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    children = [subprocess.Popen([sys.executable, "-c", FIT, str(folder), str(saves), which], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=env) for folder in folders]
    locked = pending = wrong = crashed = 0
    seconds: list[float] = []
    for child, folder in zip(children, folders, strict=True):
        out, err = child.communicate(timeout=1800)
        locked += err.count("database is locked")
        if child.returncode != 0:  # the result to report: the fit stopped
            crashed += 1
            print(f"  {which} fit {folder.name} stopped: {err.strip().splitlines()[-1][:120]}")
            continue
        seconds += [float(s) for s in out.split("SAVES", 1)[1].splitlines()[0].split()]
        assert out.split("ATTEMPTS", 1)[1].split()[0] == "0", "a network connection was attempted"
        journals = list((folder / ".lamin_lightning").glob("*.jsonl")) if (folder / ".lamin_lightning").exists() else []
        pending += len(journals)
        prefix = f"{folder}/checkpoints/"  # the same keys for both callbacks
        artifacts = ln.Artifact.filter(key__startswith=prefix, suffix=".ckpt")
        on_disk = {p.name for p in folder.glob("*.ckpt")}
        in_db = {a.key.removeprefix(prefix) for a in artifacts}
        last = artifacts.filter(is_last_model=True).count() if in_db else 0
        best = ln.Artifact.filter(is_best_model=True).filter(key__startswith=prefix).count() if in_db else 0
        if on_disk != in_db or last != 1 or best != 1:
            wrong += 1
            print(f"  {which} {folder.name}: only on disk {sorted(on_disk - in_db)}, only in LaminDB "
                  f"{sorted(in_db - on_disk)}, is_last_model {last}, is_best_model {best}")
    median = f"{statistics.median(seconds) * 1000:.1f}" if seconds else "-"
    print(f"{which:>8}{fits:>5}{saves:>7}{locked:>9}{pending:>15}{wrong:>8}{crashed:>9}{median:>10}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fits", default="1,3,8", help="numbers of concurrent fits, comma-separated (1: the baseline)")
    parser.add_argument("--saves", type=int, default=40)
    parser.add_argument("--postgres", action="store_true", help="a PostgreSQL database instead of SQLite")
    parser.add_argument("--callbacks", default="ours", help="ours and/or lamindb, comma-separated")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ll-bench-parallel-"))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, root, True)  # last, after the server stops: the bench leaves nothing behind
        if args.postgres:
            sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
            from pg import postgres_server

            import lamindb_setup as ln_setup

            url = stack.enter_context(postgres_server())
            os.chdir(root)  # lamindb_setup marks the working directory with .lamin/
            ln_setup.init(storage=str(root / "storage"), db=url)
            os.environ["LAMIN_CURRENT_INSTANCE"] = ln_setup.settings.instance.slug
        else:
            init_local_instance(root / "storage")
        ll.save_lightning_features()
        database = "PostgreSQL" if args.postgres else "SQLite"
        print(f"\n{database}\n{'callback':>8}{'fits':>5}{'saves':>7}{'locked':>9}{'journals left':>15}"
              f"{'wrong':>8}{'stopped':>9}{'ms/save':>10}")
        for which in args.callbacks.split(","):
            for fits in map(int, args.fits.split(",")):
                trial(root, fits, args.saves, which)
    print(f"network connections attempted: {len(guard.attempts)}")


if __name__ == "__main__":
    main()
