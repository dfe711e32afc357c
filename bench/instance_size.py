"""Flat as the instance grows (issue 27, item 4): our queries in an instance pre-filled with many artifacts.

One throwaway local SQLite instance (lamin_lightning.testing; never ~/.lamin), network refused. First, with only this
bench's fit in it ("empty"): a fit of a tiny model with a save at every step (`save_top_k=3`, `save_last=True`,
inline), then `lamin://<prefix>@best`, `@last`, a key, and `ll.checkpoints(prefix)`, each timed many times. Then
`--artifacts` checkpoint artifacts (default 100,000) are bulk-inserted with raw SQL (the bench measures our queries,
not lamindb's insert path): copies of one of the fit's checkpoints with their feature values, 1 in 100 flagged best
and last as a finished fit's would be, under keys `<root>/filler/v<k>/checkpoints/...` that share the prefix of ours,
all newer than the first fit (a year of other fits since).
The same fit and queries run again ("full") and the bench prints each median and the ratio full / empty (target <=
1.2x), with SQLite's plan for the `@best` query.

    python bench/instance_size.py [--artifacts 100000] [--saves 40]
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from checkpoint_overhead import bench_instance, guard, ll, ln, timed  # noqa: E402  (isolated settings, no network)

from lamin_lightning.references import resolve  # noqa: E402
from lamin_lightning.testing import TinyData, TinyModel, tiny_trainer  # noqa: E402


def run_fit(root: Path, name: str, saves: int) -> tuple[float, str]:
    "Median seconds of a save (saves 11 on) of one inline fit, and its checkpoint key prefix."
    callback = timed(ll.Checkpoint)(dirpath=root / name, save_top_k=3, save_last=True, every_n_train_steps=1,
                                    monitor="train_loss")
    tiny_trainer(root, [callback], logger=False, max_epochs=1, max_steps=saves, limit_train_batches=saves,
                 limit_val_batches=0).fit(TinyModel(), TinyData(n=8 * saves))
    return statistics.median(callback.save_seconds[10:]), f"{root / name}/checkpoints"


def median_seconds(work, repeat: int) -> float:
    work()  # warm: lamindb's first query of a kind builds its SQL
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def queries(prefix: str, repeat: int) -> dict[str, float]:
    key = ln.Artifact.filter(key__startswith=prefix + "/", suffix=".ckpt").order_by("-id").first().key
    return {
        "@best": median_seconds(lambda: resolve(f"lamin://{prefix}@best"), repeat),
        "@last": median_seconds(lambda: resolve(f"lamin://{prefix}@last"), repeat),
        "key": median_seconds(lambda: resolve(f"lamin://{key}"), repeat),
        "checkpoints()": median_seconds(lambda: ll.checkpoints(prefix), max(3, repeat // 3)),
    }


def fill(root: Path, template_prefix: str, n: int) -> None:
    "Insert `n` artifacts with raw SQL: copies of a kept checkpoint of the fit and of its feature links."
    from django.db import connection

    best = resolve(f"lamin://{template_prefix}@best")
    plain = ln.Artifact.filter(key__startswith=template_prefix + "/", suffix=".ckpt").exclude(id=best.id) \
        .exclude(key__endswith="last.ckpt").first()
    art, links = ln.Artifact._meta.db_table, ln.models.ArtifactJsonValue._meta.db_table
    with connection.cursor() as cursor:
        columns = [c.name for c in connection.introspection.get_table_description(cursor, art) if c.name != "id"]
        made = {"uid": "printf('f%015d0000', n)", "key": f"printf('{root}/filler/v%05d/checkpoints/epoch=0-step=%d.ckpt', n / 100, n)",
                "hash": "printf('h%021d', n)", "is_latest": "1",
                "created_at": "strftime('%Y-%m-%d %H:%M:%f', 'now')", "updated_at": "strftime('%Y-%m-%d %H:%M:%f', 'now')"}
        select = ", ".join(made.get(c, f'"{c}"') for c in columns)
        quoted = ", ".join(f'"{c}"' for c in columns)
        start = ln.Artifact.objects.order_by("-id").first().id
        cursor.execute(
            f"WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < %s) "
            f"INSERT INTO {art} ({quoted}) SELECT {select} FROM seq, {art} WHERE {art}.id = %s", [n, plain.id])
        link_columns = [c.name for c in connection.introspection.get_table_description(cursor, links)
                        if c.name not in ("id", "artifact_id")]
        lc = ", ".join(f'"{c}"' for c in link_columns)
        ls = ", ".join(f'l."{c}"' for c in link_columns)
        for template, every in ((plain.id, "a.id % 100 != 0"), (best.id, "a.id % 100 = 0")):
            cursor.execute(f'INSERT INTO {links} (artifact_id, {lc}) SELECT a.id, {ls} FROM {art} a, {links} l '
                           f'WHERE a.id > %s AND {every} AND l.artifact_id = %s', [start, template])
        cursor.execute("ANALYZE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=int, default=100_000)
    parser.add_argument("--saves", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    root = bench_instance("ll-bench-size-")
    run_fit(root, "warmup", 15)
    empty_save, empty_prefix = run_fit(root, "empty", args.saves)
    empty = {"save": empty_save, **queries(empty_prefix, args.repeat)}
    start = time.perf_counter()
    fill(root, empty_prefix, args.artifacts)
    filled = time.perf_counter() - start
    total = ln.Artifact.filter().count()
    full_save, full_prefix = run_fit(root, "full", args.saves)
    full = {"save": full_save, **queries(full_prefix, args.repeat)}
    old = queries(empty_prefix, args.repeat)  # the first fit's prefix, now among the many
    print(f"\nSQLite, {total:,} artifacts after inserting {args.artifacts:,} in {filled:.1f} s; medians, ms")
    print(f"{'measure':<16}{'empty':>10}{'full':>10}{'ratio':>8}{'first fit, full':>18}{'ratio':>8}")
    for name in empty:
        again = f"{old[name] * 1000:>18.2f}{old[name] / empty[name]:>7.2f}x" if name in old else ""
        print(f"{name:<16}{empty[name] * 1000:>10.2f}{full[name] * 1000:>10.2f}{full[name] / empty[name]:>7.2f}x{again}")
    from django.db import connection

    from lamin_lightning.features import key_under

    query = ln.Artifact.filter(is_best_model=True).filter(key_under(f"{full_prefix}/")).order_by("-created_at", "-id")
    sql, params = query.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN QUERY PLAN {sql}", params)
        print("\n@best, SQLite's plan:", *(row[-1] for row in cursor.fetchall()), sep="\n  ")
    print(f"network connections attempted: {len(guard.attempts)}")
    sys.exit(1 if guard.attempts else 0)


if __name__ == "__main__":
    main()
