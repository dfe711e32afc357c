"""Group commit: publishing entries that wait together, one transaction for up to `GROUP` of them against one each.

A fit journals --saves checkpoints while its store refuses every write (a fault injected: the entries wait, as when
saves come faster than publishing), keeping all (`save_top_k=-1`) with a score that goes up and down, so that each
save shifts the ranks of the worse ones. Then `ll.sync` publishes the journal, once with groups (`GROUP` = 16, the
default) and once one entry at a time (`GROUP` = 1), each into a fresh folder of the same instance, the two taking
turns over --repeats; with --top-k 3 (and `save_last`) the journal holds evictions and re-saves of `last.ckpt` too.
Checks that LaminDB then holds every kept checkpoint once with Lightning's ranks, and prints the milliseconds per save
and the ratio, on SQLite or (`--db postgres`) on a private PostgreSQL server on loopback.

    python bench/group_commit.py [--db sqlite|postgres] [--saves 200] [--repeats 2] [--top-k 3]
"""
import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from checkpoint_overhead import bench_instance, guard, ll, ln  # noqa: E402  (isolated, no network)
from instance_size import database_server, postgres_instance  # noqa: E402

from lamin_lightning import publisher  # noqa: E402
from lamin_lightning.store import Store  # noqa: E402
from lamin_lightning.testing import TinyData, TinyModel, tiny_trainer  # noqa: E402


def journal_fit(dirpath: Path, saves: int, top_k: int) -> list[str]:
    "A fit whose every publication is refused: its journal keeps them all. Returns Lightning's ranking (file names)."
    persist = Store.persist
    Store.persist = lambda self, entry: (_ for _ in ()).throw(ConnectionError("refused by the bench"))
    try:
        callback = ll.Checkpoint(dirpath=dirpath, monitor="train_loss", save_top_k=top_k, every_n_train_steps=1,
                                 save_last=top_k > 0)
        trainer = tiny_trainer(dirpath, [callback], logger=False, max_epochs=1, max_steps=saves,
                               limit_train_batches=saves, limit_val_batches=0)
        trainer.fit(TinyModel(lr=0.01), TinyData(n=8 * saves))
    finally:
        Store.persist = persist
    best = callback.best_k_models
    return [Path(p).name for p in sorted(best, key=lambda p: float(best[p]))]


def timed_sync(dirpath: Path, group: int) -> float:
    publisher.GROUP = group
    start = time.perf_counter()
    report = ll.sync(dirpath)
    seconds = time.perf_counter() - start
    assert report.exit_code == 0 and report.published, report
    return seconds


def check(dirpath: Path, ranking: list[str]) -> None:
    "LaminDB holds each checkpoint once, its `model_rank` its place in Lightning's ranking."
    table = ll.checkpoints(f"{dirpath}/checkpoints")
    ranks = {Path(k).name: r for k, r in zip(table["key"], table["model_rank"]) if Path(k).name != "last.ckpt"}
    assert ranks == {name: i for i, name in enumerate(ranking)}, "ranks differ"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--saves", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--top-k", type=int, default=-1, help="save_top_k; above 0 with save_last: evictions, re-saves")
    args = parser.parse_args()
    with database_server(args.db) as url:
        root = bench_instance("ll-bench-group-") if url is None else postgres_instance("ll-bench-group-", url)
        try:
            measure(args, root)
        finally:
            from django.db import connections

            connections.close_all()  # before the server stops
            shutil.rmtree(root, ignore_errors=True)
    sys.exit(1 if guard.attempts else 0)


def measure(args: argparse.Namespace, root: Path) -> None:
    from django.db import connection

    default, seconds = publisher.GROUP, {"grouped": [], "alone": []}
    for repeat in range(args.repeats):
        for name, group in (("grouped", default), ("alone", 1)) if repeat % 2 == 0 else (("alone", 1), ("grouped", default)):
            dirpath = root / f"{name}-{repeat}"
            ranking = journal_fit(dirpath, args.saves, args.top_k)
            seconds[name].append(timed_sync(dirpath, group))
            check(dirpath, ranking)
    publisher.GROUP = default
    database = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}[connection.vendor]
    per = {name: statistics.median(s) / args.saves * 1000 for name, s in seconds.items()}
    kept = "keep all, ranks shifting" if args.top_k < 0 else f"save_top_k={args.top_k} and save_last: evictions, re-saves"
    print(f"\n`sync` of a journal of {args.saves} saves ({kept}), {database}, {args.repeats} repeats")
    print(f"{'publishing':<32}{'ms per save':>14}{'each repeat':>24}")
    for name, label in (("alone", "one transaction per entry"), ("grouped", f"groups of up to {default}")):
        each = " ".join(f"{s / args.saves * 1000:.2f}" for s in seconds[name])
        print(f"{label:<32}{per[name]:>14.2f}{each:>24}")
    print(f"grouped / alone: {per['grouped'] / per['alone']:.2f}x; LaminDB holds {ln.Artifact.filter(key__startswith=str(root)).count()} "
          f"checkpoints, those Lightning kept, each with its rank")
    print(f"network connections attempted: {len(guard.attempts)}")


if __name__ == "__main__":
    main()
