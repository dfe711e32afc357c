"""Flat cost as history grows (issue 27, item 3): the last ten of N saves against saves 11-20, with every checkpoint kept.

A tiny model saves a checkpoint at every step (`save_top_k=-1`, `monitor="train_loss"`: a score that is not monotonic,
so a new checkpoint shifts the `model_rank` of every worse one) into one throwaway local SQLite instance, network
refused. Plain `ModelCheckpoint`, ours inline and ours with `async_publish=True` run in the same process, one after the
other. For each of ours it prints the median ms a save added over plain (the time training waited in
`_save_checkpoint`) for saves 11-20 and the last ten, and their ratio (target <= 1.2x), then checks that LaminDB's
`model_rank` of every checkpoint is Lightning's ranking when `fit` returns.

    python bench/flat_history.py [--saves 1000] [--only inline|async]
"""
import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from checkpoint_overhead import bench_instance, fit, guard, ll, ln, timed  # noqa: E402  (isolated settings, no network)

from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402


def ranks_in_lamindb(prefix: str) -> dict[str, int]:
    "`{file name: model_rank}` of the checkpoints under `prefix`, as LaminDB holds them."
    table = ll.checkpoints(prefix)
    return {Path(key).name: int(rank) for key, rank in zip(table["key"], table["model_rank"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saves", type=int, default=1000)
    parser.add_argument("--only", choices=("inline", "async", "process"), help="run one of ours only (plain always runs)")
    args = parser.parse_args()
    n = args.saves
    root = bench_instance("ll-bench-history-")
    common = dict(save_top_k=-1, every_n_train_steps=1, monitor="train_loss")
    fit(ModelCheckpoint(dirpath=root / "warmup", **common), root, 20)  # the first fit pays one-off costs
    plain = timed(ModelCheckpoint)(dirpath=root / "plain", **common)
    plain_fit = fit(plain, root, n)
    variants = {"inline": dict(async_publish=False), "async_publish": dict(async_publish=True),
                "process": dict(async_publish="process")}
    if args.only:
        variants = {k: v for k, v in variants.items() if k.startswith(args.only)}
    rows = []
    for name, options in variants.items():
        ours = timed(ll.Checkpoint)(dirpath=root / name, **common, **options)
        seconds = fit(ours, root, n)
        expected = {Path(p).name: r for p, r in ours._ranks().items()}
        stored = ranks_in_lamindb(f"{root / name}/checkpoints/")
        assert stored == expected, f"{name}: LaminDB's model_rank differs from Lightning's ranking"
        rows.append((name, ours.save_seconds, ours.save_cpu_seconds, seconds))
    for clock, index, base in (("wall-clock", 1, plain.save_seconds), ("CPU of the training thread", 2, plain.save_cpu_seconds)):
        table(n, clock, base, plain_fit, [(row[0], row[index], row[3]) for row in rows])
    print(f"model_rank in LaminDB equals Lightning's ranking: yes ({', '.join(r[0] for r in rows)})")
    print(f"network connections attempted: {len(guard.attempts)}")
    sys.exit(1 if guard.attempts else 0)


def table(n: int, clock: str, base: list[float], plain_fit: float, rows: list[tuple[str, list[float], float]]) -> None:
    "Print the medians of one clock: plain's own, then each of ours, own and added over plain, and the ratio."
    print(f"\n{n} saves, tiny model, save_top_k=-1, monitor=train_loss, a save every step; {clock}, medians, ms")
    print(f"{'callback':<16}{'own 11-20':>10}{f'own {n - 9}-{n}':>14}{'added 11-20':>12}{f'added {n - 9}-{n}':>16}"
          f"{'ratio':>8}{'fit s':>8}")
    own = lambda s, i, j: statistics.median(s[i:j]) * 1000  # noqa: E731
    print(f"{'plain':<16}{own(base, 10, 20):>10.1f}{own(base, n - 10, n):>14.1f}{'':>12}{'':>16}{'':>8}{plain_fit:>8.2f}")
    for name, seconds, fit_s in rows:
        warm, last = own(seconds, 10, 20) - own(base, 10, 20), own(seconds, n - 10, n) - own(base, n - 10, n)
        print(f"{name:<16}{own(seconds, 10, 20):>10.1f}{own(seconds, n - 10, n):>14.1f}{warm:>12.1f}{last:>16.1f}"
              f"{last / warm:>7.2f}x{fit_s:>8.2f}")


if __name__ == "__main__":
    main()
