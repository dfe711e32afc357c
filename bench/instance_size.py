"""Flat as the instance grows (issue 27, item 4): our queries in an instance pre-filled with many artifacts.

One throwaway instance, network refused but for loopback: a local SQLite one (lamin_lightning.testing; never
~/.lamin), or with `--db postgres` one on a private PostgreSQL server that tests/pg.py starts on a loopback port
(Debian's PostgreSQL, installed with apt-get if missing; stopped and deleted at the end). First, with only this bench's
fit in it ("empty"): a fit of a tiny model with a save at every step (`save_top_k=3`, `save_last=True`, inline), then
`lamin://<prefix>@best`, `@last`, a key, and `ll.checkpoints(prefix)`, each timed many times. Then
`--artifacts` checkpoint artifacts (default 100,000) are bulk-inserted with raw SQL (the bench measures our queries,
not lamindb's insert path): copies of one of the fit's checkpoints with their feature values, 1 in 100 flagged best
and last as a finished fit's would be, under keys `<root>/filler/v<k>/checkpoints/...` that share the prefix of ours,
all newer than the first fit (a year of other fits since).
The same fit and queries run again ("full") and the bench prints each median and the ratio full / empty (target <=
1.2x), with the database's plan for the `@best` query (SQLite's `EXPLAIN QUERY PLAN`, PostgreSQL's `EXPLAIN
(ANALYZE, BUFFERS)`); for each measure over 1.2x, its work once more, timed statement by statement, with the plan of
its slowest SELECT.

    python bench/instance_size.py [--db sqlite|postgres] [--artifacts 100000] [--saves 40]
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from checkpoint_overhead import bench_instance, guard, ll, ln, ln_setup, timed  # noqa: E402  (isolated, no network)

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


def postgres_instance(prefix: str, url: str) -> Path:
    "A throwaway folder holding the storage of an instance on the PostgreSQL database `url`, with our features."
    root = Path(tempfile.mkdtemp(prefix=prefix))
    storage = root / "storage"
    storage.mkdir()
    cwd = os.getcwd()
    os.chdir(root)  # lamindb_setup marks the working directory with .lamin/
    try:
        ln_setup.init(storage=str(storage), db=url)
    finally:
        os.chdir(cwd)
    ln.settings.verbosity = "error"
    ll.save_lightning_features()
    return root


def fill(root: Path, template_prefix: str, n: int) -> None:
    """Insert `n` artifacts with raw SQL: copies of a kept checkpoint of the fit and of its feature links.

    The ids come from the tables' own id defaults (SQLite's rowid, PostgreSQL's identity sequences), so lamindb's
    later inserts go on from them; Django's cursor takes `%s` parameters on both (a literal `%` is written `%%`)."""
    from django.db import connection

    best = resolve(f"lamin://{template_prefix}@best")
    plain = ln.Artifact.filter(key__startswith=template_prefix + "/", suffix=".ckpt").exclude(id=best.id) \
        .exclude(key__endswith="last.ckpt").first()
    art, links = ln.Artifact._meta.db_table, ln.models.ArtifactJsonValue._meta.db_table
    keys = f"{root}/filler/v"
    if connection.vendor == "postgresql":
        pad = lambda width, value: f"lpad(({value})::text, {width}, '0')"  # noqa: E731
        made = {"uid": f"'f' || {pad(15, 'n')} || '0000'",
                "key": f"'{keys}' || {pad(5, 'n / 100')} || '/checkpoints/epoch=0-step=' || n || '.ckpt'",
                "hash": f"'h' || {pad(21, 'n')}", "is_latest": "true",
                "created_at": "clock_timestamp()", "updated_at": "clock_timestamp()"}
        numbers = "generate_series(1, %s) AS seq(n)"
    else:
        made = {"uid": "printf('f%%015d0000', n)",
                "key": f"printf('{keys}%%05d/checkpoints/epoch=0-step=%%d.ckpt', n / 100, n)",
                "hash": "printf('h%%021d', n)", "is_latest": "1",
                "created_at": "strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now')",
                "updated_at": "strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now')"}
        numbers = ("(WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < %s) "
                   "SELECT n FROM seq) seq")
    with connection.cursor() as cursor:
        columns = [c.name for c in connection.introspection.get_table_description(cursor, art) if c.name != "id"]
        select = ", ".join(made.get(c, f'{art}."{c}"') for c in columns)
        quoted = ", ".join(f'"{c}"' for c in columns)
        cursor.execute(f"INSERT INTO {art} ({quoted}) SELECT {select} FROM {numbers}, {art} WHERE {art}.id = %s "
                       f"ORDER BY seq.n RETURNING id", [n, plain.id])
        ids = [i for (i,) in cursor.fetchall()]
        assert len(ids) == n, (len(ids), n)
        first, last = min(ids), max(ids)
        link_columns = [c.name for c in connection.introspection.get_table_description(cursor, links)
                        if c.name not in ("id", "artifact_id")]
        lc = ", ".join(f'"{c}"' for c in link_columns)
        ls = ", ".join(f'l."{c}"' for c in link_columns)
        for template, every in ((plain.id, "a.id %% 100 != 0"), (best.id, "a.id %% 100 = 0")):
            cursor.execute(f'INSERT INTO {links} (artifact_id, {lc}) SELECT a.id, {ls} FROM {art} a, {links} l '
                           f'WHERE a.id BETWEEN %s AND %s AND {every} AND l.artifact_id = %s', [first, last, template])
        cursor.execute("ANALYZE")


def statements(work) -> list[tuple[float, str, tuple]]:
    "Run `work` once; each SQL statement it sent from this thread: (seconds, sql, params)."
    from django.db import connection

    sent = []

    def wrapper(execute, sql, params, many, context):
        start = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            sent.append((time.perf_counter() - start, sql, tuple(params or ())))

    with connection.execute_wrapper(wrapper):
        work()
    return sent


def explain(sql: str, params: tuple) -> list[str]:
    "The database's plan of a SELECT: SQLite's `EXPLAIN QUERY PLAN`, PostgreSQL's `EXPLAIN (ANALYZE, BUFFERS)`."
    from django.db import connection

    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", params)
            return [row[0] for row in cursor.fetchall()]
        cursor.execute(f"EXPLAIN QUERY PLAN {sql}", params)
        return [row[-1] for row in cursor.fetchall()]


def slowest(sent: list[tuple[float, str, tuple]], top: int = 3) -> list[tuple[float, int, str, tuple]]:
    "The statements that took longest in all, the same SQL text summed: (seconds, count, sql, params of one)."
    total: dict[str, list] = {}
    for seconds, sql, params in sent:
        entry = total.setdefault(sql, [0.0, 0, params])
        entry[0] += seconds
        entry[1] += 1
    return sorted(((s, c, sql, p) for sql, (s, c, p) in total.items()), key=lambda e: -e[0])[:top]


def diagnose(name: str, work) -> None:
    "Print the slowest statements of `work` (run once more, each statement timed) and the plan of the slowest SELECT."
    sent = statements(work)
    print(f"\n{name}: {len(sent)} statements, {sum(s for s, _, _ in sent) * 1000:.1f} ms in the database; slowest:")
    shown = False
    for seconds, count, sql, params in slowest(sent):
        print(f"  {seconds * 1000:8.1f} ms in {count:3d} x {sql[:600]}")
        if not shown and sql.lstrip().upper().startswith("SELECT"):
            print("    params:", tuple(getattr(p, "obj", p) for p in params))  # Jsonb: its value
            print(*("    " + line for line in explain(sql, params)), sep="\n")
            shown = True


def database_server(db: str):
    "For `--db postgres`, a private PostgreSQL server on loopback (tests/pg.py), entered as its URL; else `None`."
    if db != "postgres":
        return nullcontext()
    sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
    from pg import postgres_server

    return postgres_server()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--artifacts", type=int, default=100_000)
    parser.add_argument("--saves", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    with database_server(args.db) as url:
        code = bench(args, url)
        from django.db import connections

        connections.close_all()  # before the server stops
        if url is not None:
            from pg import postgres_version

            print(postgres_version())
    sys.exit(code)


def bench(args: argparse.Namespace, url: str | None) -> int:
    root = bench_instance("ll-bench-size-") if url is None else postgres_instance("ll-bench-size-", url)
    try:
        return measure(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def measure(args: argparse.Namespace, root: Path) -> int:
    from django.db import connection

    run_fit(root, "warmup", 15)
    empty_save, empty_prefix = run_fit(root, "empty", args.saves)
    empty = {"save": empty_save, **queries(empty_prefix, args.repeat)}
    start = time.perf_counter()
    fill(root, empty_prefix, args.artifacts)
    filled = time.perf_counter() - start
    total, links = ln.Artifact.filter().count(), ln.models.ArtifactJsonValue.objects.count()
    full_save, full_prefix = run_fit(root, "full", args.saves)
    full = {"save": full_save, **queries(full_prefix, args.repeat)}
    old = queries(empty_prefix, args.repeat)  # the first fit's prefix, now among the many
    database = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}[connection.vendor]
    print(f"\n{database}, {total:,} artifacts ({links:,} feature links) after inserting {args.artifacts:,} in "
          f"{filled:.1f} s; medians, ms")
    print(f"{'measure':<16}{'empty':>10}{'full':>10}{'ratio':>8}{'first fit, full':>18}{'ratio':>8}")
    for name in empty:
        again = f"{old[name] * 1000:>18.2f}{old[name] / empty[name]:>7.2f}x" if name in old else ""
        print(f"{name:<16}{empty[name] * 1000:>10.2f}{full[name] * 1000:>10.2f}{full[name] / empty[name]:>7.2f}x{again}")

    from lamin_lightning.features import key_under

    query = ln.Artifact.filter(is_best_model=True).filter(key_under(f"{full_prefix}/")).order_by("-created_at", "-id")
    print(f"\n@best, {database}'s plan:", *explain(*query.query.sql_with_params()), sep="\n  ")
    # where the time of each measure over the target goes, statement by statement, and the plan of its slowest SELECT
    key = ln.Artifact.filter(key__startswith=full_prefix + "/", suffix=".ckpt").order_by("-id").first().key
    work = {"save": lambda: run_fit(root, "diagnose", args.saves),
            "@best": lambda: resolve(f"lamin://{full_prefix}@best"),
            "@last": lambda: resolve(f"lamin://{full_prefix}@last"),
            "key": lambda: resolve(f"lamin://{key}"),
            "checkpoints()": lambda: ll.checkpoints(full_prefix)}
    for name, seconds in full.items():
        if max(seconds, old.get(name, 0)) / empty[name] > 1.2:
            diagnose(f"{name} (a fit of {args.saves} saves)" if name == "save" else name, work[name])
    print(f"network connections attempted: {len(guard.attempts)}")
    return 1 if guard.attempts else 0


if __name__ == "__main__":
    main()
