"""Large checkpoints: training-blocking time per save, bytes on disk per kept checkpoint, and added peak RSS.

A single linear layer of about --mb megabytes saves a checkpoint at each of 3 steps (save_top_k=2: one eviction). Each
variant runs in its own process (peak RSS is per process): plain ModelCheckpoint, ours inline, ours with
async_publish, and lamindb's integration. Bytes on disk count each inode once (a hard link is not a second copy),
under the checkpoint folder and the instance's storage together.

    python bench/large_checkpoint.py [--mb 520]
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ["plain", "ours", "ours-async", "lamindb"]


def disk_bytes(*folders: Path) -> int:
    seen: set[tuple[int, int]] = set()
    total = 0
    for folder in folders:
        for path in folder.rglob("*"):
            st = path.lstat()
            if path.is_file() and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def run_variant(variant: str, mb: int) -> dict:
    from lamin_lightning.testing import NetworkGuard, isolate_settings

    isolate_settings()
    guard = NetworkGuard().install()
    import lamindb as ln
    import lamindb_setup as ln_setup
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader, TensorDataset

    import lamin_lightning as ll
    from lamin_lightning.testing import init_local_instance

    root = Path(tempfile.mkdtemp(prefix="ll-large-"))
    init_local_instance(root / "storage")
    ln.settings.verbosity = "error"
    ll.save_lightning_features()
    width = int((mb * 2**20 / 4) ** 0.5)

    class Big(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(width, width, bias=False)

        def training_step(self, batch, batch_idx):
            loss = self.layer(batch[0]).pow(2).mean()
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=1e-6)

    if variant == "plain":
        cls, options = ModelCheckpoint, {}
    elif variant == "lamindb":
        from lamindb.integrations import lightning as lamindb_lightning

        ln_setup.settings.instance._is_on_hub = False  # bench only: lamindb's integration asks the hub otherwise
        cls, options = lamindb_lightning.Checkpoint, {}
    else:
        cls, options = ll.Checkpoint, {"async_publish": variant == "ours-async"}
    seconds: list[float] = []

    class Timed(cls):  # type: ignore[misc, valid-type]
        def _save_checkpoint(self, trainer, filepath):
            start = time.perf_counter()
            super()._save_checkpoint(trainer, filepath)
            seconds.append(time.perf_counter() - start)

    dirpath = root / "ckpts"
    callback = Timed(dirpath=str(dirpath), save_top_k=2, every_n_train_steps=1, monitor="train_loss", **options)
    model = Big()
    data = DataLoader(TensorDataset(torch.randn(3, width)), batch_size=1)
    trainer = pl.Trainer(default_root_dir=str(root), max_steps=3, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", devices=1, callbacks=[callback])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    trainer.fit(model, data)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    kept = len(list(dirpath.glob("*.ckpt")))
    size = statistics.mean(p.stat().st_size for p in dirpath.glob("*.ckpt"))
    return {"variant": variant, "save_s": statistics.median(seconds), "peak_rss": peak, "rss_before": before,
            "disk_per_kept": disk_bytes(dirpath, root / "storage") / kept, "size": size, "kept": kept,
            "network": len(guard.attempts)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=520)
    parser.add_argument("--variant", choices=VARIANTS)
    parser.add_argument("--skip-lamindb", action="store_true")
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.mb)))
        return
    rows = {}
    for variant in VARIANTS:
        if variant == "lamindb" and args.skip_lamindb:
            continue
        out = subprocess.run([sys.executable, __file__, "--variant", variant, "--mb", str(args.mb)], check=True,
                             capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        rows[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    plain = rows["plain"]
    print(f"\ncheckpoint of {plain['size'] / 2**20:.0f} MB, 3 saves, save_top_k=2 (median blocking time per save)")
    print(f"{'variant':<12}{'save s':>9}{'vs plain':>10}{'disk/kept ckpt':>16}{'added peak RSS':>16}{'network':>9}")
    for name, r in rows.items():
        print(f"{name:<12}{r['save_s']:>9.2f}{r['save_s'] / plain['save_s']:>9.2f}x"
              f"{r['disk_per_kept'] / r['size']:>15.2f}x{(r['peak_rss'] - plain['peak_rss']) / 2**20:>13.0f} MB"
              f"{r['network']:>9}")


if __name__ == "__main__":
    main()
