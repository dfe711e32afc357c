"""Sharded checkpoints: training-blocking time per save with `ModelParallelStrategy(save_distributed_checkpoint=True)`
and FSDP2's `fully_shard` on two CPU processes (gloo), against plain `ModelCheckpoint` with the same strategy.

One linear layer sharded across the 2 ranks, each shard about --mb megabytes (2 shards + `.metadata` + `meta.pt` per
folder), a save at each of --saves steps (`save_top_k=2`: evictions). Variants, each a fit of its own: plain
`ModelCheckpoint`, ours inline, ours with `async_publish`. "Blocking" is rank 0's time in `_save_checkpoint` (the
collective save, and for ours the journal, placing the shards by hard links and, inline, each rank hashing the shards
it wrote, rank 0 gathering their hashes and publishing: lamindb reads no byte; in the background, rank 0's publisher
hashes each folder once, off training). Prints the medians and the ratios to plain.

    python bench/sharded_checkpoint.py [--mb 8 64] [--saves 6] [--repeats 3] [--variants plain ours ours-async]

`BENCH_PROFILE=PREFIX` also writes rank 0's cProfile of its saves (after the first) to `PREFIX-VARIANT-MB.prof`.
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

VARIANTS = ["plain", "ours", "ours-async", "ours-process"]
RESULT = "SHARDED_BENCH "


def fit(variant: str, mb: int, saves: int) -> None:
    "One fit on two processes (this script, run by each rank); rank 0 prints its blocking times."
    from lamin_lightning.testing import NetworkGuard

    NetworkGuard().install()
    import time

    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.strategies import ModelParallelStrategy
    from torch.distributed.fsdp import fully_shard
    from torch.utils.data import DataLoader, TensorDataset

    import lamin_lightning as ll

    width = int((2 * mb * 2**20 / 4) ** 0.5)  # two shards of `mb` MB

    class Big(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(width, width, bias=False)

        def configure_model(self) -> None:
            fully_shard(self.layer, mesh=self.device_mesh["data_parallel"])

        def training_step(self, batch, batch_idx):
            loss = self.layer(batch[0]).square().mean()
            self.log("loss", -float(self.global_step))  # a new best at each save
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=1e-6)

    def timed(base: type) -> type:
        class Timed(base):  # type: ignore[misc, valid-type]
            seconds: list = []

            def _save_checkpoint(self, trainer, filepath):
                if profiler is not None and trainer.is_global_zero and self.seconds:  # the first save starts the fit
                    profiler.enable()
                started = time.perf_counter()
                super()._save_checkpoint(trainer, filepath)
                self.seconds.append(time.perf_counter() - started)
                if profiler is not None:
                    profiler.disable()
        return Timed

    profiler = None
    if os.environ.get("BENCH_PROFILE") and os.environ.get("LOCAL_RANK", "0") == "0":
        import cProfile

        profiler = cProfile.Profile()
    dirpath = Path(os.environ["BENCH_DIR"]) / "ckpts"
    options = dict(dirpath=dirpath, monitor="loss", mode="min", save_top_k=2, every_n_train_steps=1)
    callback = timed(ModelCheckpoint)(**options) if variant == "plain" else \
        timed(ll.Checkpoint)(**options, async_publish={"ours": False, "ours-async": True, "ours-process": "process"}[variant])
    data = DataLoader(TensorDataset(torch.randn(saves * 2, width)), batch_size=2)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1),
                         max_steps=saves, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=True, callbacks=[callback])
    trainer.fit(Big(), data)
    if profiler is not None:
        import pstats

        profiler.dump_stats(f"{os.environ['BENCH_PROFILE']}-{variant}-{mb}.prof")  # for `python -m pstats`
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(45)
    if trainer.is_global_zero:
        print(RESULT + json.dumps({"seconds": callback.seconds}), flush=True)


def run(variant: str, mb: int, saves: int) -> list[float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    work = Path(tempfile.mkdtemp(prefix="ll-sharded-bench-"))
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "MASTER_PORT": str(port), "BENCH_DIR": str(work)}
    try:
        result = subprocess.run([sys.executable, __file__, "--fit", variant, "--mb", str(mb), "--saves", str(saves)],
                                env=env, capture_output=True, text=True, cwd=work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if os.environ.get("BENCH_PROFILE"):  # rank 0's profile of its saves after the first, for each variant
        Path(f"{os.environ['BENCH_PROFILE']}-{variant}-{mb}.txt").write_text(result.stderr)
    line = next((l for l in result.stdout.splitlines() if l.startswith(RESULT)), None)
    if result.returncode != 0 or line is None:
        sys.exit(f"{variant} failed:\n{result.stderr[-3000:]}")
    return json.loads(line.removeprefix(RESULT))["seconds"][1:]  # the first save also starts the fit's publisher


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--saves", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=1, help="fits per variant, the variants taking turns")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=VARIANTS)
    parser.add_argument("--fit", choices=VARIANTS)
    args = parser.parse_args()
    if args.fit:
        return fit(args.fit, args.mb[0], args.saves)
    from lamin_lightning.testing import init_local_instance, isolate_settings, use_test_instance

    settings = isolate_settings()
    init_local_instance(settings / "storage")  # the fits connect to it (LAMIN_CURRENT_INSTANCE)
    use_test_instance()
    print(f"{'shard MB':>8}  {'variant':<11} {'median s':>9} {'× plain':>8}  {'× plain, each repeat':<24}")
    try:
        for mb in args.mb:
            seconds: dict[str, list[list[float]]] = {v: [] for v in args.variants}
            for _ in range(args.repeats):  # in turns: a load that comes and goes on a shared machine hits each variant
                for variant in args.variants:
                    seconds[variant].append(run(variant, mb, args.saves))
            medians = {v: statistics.median(s for fit in fits for s in fit) for v, fits in seconds.items()}
            for variant, median in medians.items():
                each = [statistics.median(f) / statistics.median(p) for f, p in zip(seconds[variant], seconds["plain"])] \
                    if "plain" in seconds else []
                print(f"{mb:>8}  {variant:<11} {median:>9.3f} {median / medians.get('plain', float('nan')):>8.2f}  "
                      f"{' '.join(f'{r:.2f}' for r in each):<24}", flush=True)
    finally:
        shutil.rmtree(settings, ignore_errors=True)


if __name__ == "__main__":
    main()
