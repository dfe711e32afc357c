"""Database statements per save: how many SQL statements one save of a checkpoint sends, and which.

A tiny model saves at every step and keeps every checkpoint (`save_top_k=-1`, `monitor="train_loss"`, a score that is
not monotonic), inline publishing, one throwaway local SQLite instance, network refused. For N = 10, 100 and 300 saves
it prints the median number of statements per save over the first ten and the last ten saves, and the statements of
the last save grouped by kind and table.

    python bench/statements.py [--saves 10,100,300]
"""
import argparse
import collections
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from checkpoint_overhead import bench_instance, guard, ll, ln  # noqa: E402,F401  (isolated settings, network refused)

from lamin_lightning.testing import TinyData, TinyModel, tiny_trainer  # noqa: E402


class Counted(ll.Checkpoint):
    "Records the SQL statements each `_save_checkpoint` sends."

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.statements: list[list[str]] = []

    def _save_checkpoint(self, trainer, filepath):
        from django import db

        sent: list[str] = []

        def record(execute, sql, params, many, context):
            sent.append(sql)
            return execute(sql, params, many, context)

        with db.connections["default"].execute_wrapper(record):
            super()._save_checkpoint(trainer, filepath)
        self.statements.append(sent)


def kind(sql: str) -> str:
    words = sql.split()
    verb = words[0].upper()
    table = re.search(r'(?:FROM|INTO|UPDATE)\s+"?(\w+)"?', sql, flags=re.I)
    return f"{verb} {table.group(1) if table else ''}".strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saves", default="10,100,300")
    args = parser.parse_args()
    root = bench_instance("ll-bench-statements-")
    print(f"\n{'N':>5}{'first ten':>12}{'last ten':>11}")
    last = None
    for saves in map(int, args.saves.split(",")):
        callback = Counted(dirpath=root / f"n{saves}", save_top_k=-1, every_n_train_steps=1, monitor="train_loss")
        tiny_trainer(root, [callback], logger=False, max_epochs=1, max_steps=saves, limit_train_batches=saves,
                     limit_val_batches=0).fit(TinyModel(), TinyData(n=8 * saves))
        counts = [len(s) for s in callback.statements]
        print(f"{saves:>5}{statistics.median(counts[:10]):>12}{statistics.median(counts[-10:]):>11}")
        last = callback.statements[-1]
    print("\nthe last save of the longest run, by statement:")
    for name, n in collections.Counter(kind(sql) for sql in last).most_common():
        print(f"{n:>4}  {name}")
    print(f"network connections attempted: {len(guard.attempts)}")


if __name__ == "__main__":
    main()
