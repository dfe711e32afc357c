"""A model-parallel fit on two CPU processes (gloo) for the sharded-checkpoint tests: FSDP2's `fully_shard` on the
layer, `ModelParallelStrategy(save_distributed_checkpoint=True)`, so each checkpoint is a folder of shards.

`python sharded_app.py DIRPATH [--ckpt-path REF] [--epochs N] [--files-only] [--refuse-from-epoch N]
[--strategy model_parallel|fsdp|deepspeed] [--save-best] [--async-publish] [--die-at-save N --die-rank R] [--count-hashing FILE]
[--record-uploads FILE] [--storage URI]`; refuses every non-loopback connection. `fsdp`
(`FSDPStrategy(state_dict_type="sharded")`) and `deepspeed` need CUDA, on every GPU there is (at most 2). `--refuse-from-epoch` injects a fault: from that training epoch on, every `Artifact.save`
raises, as a store that refuses writes to the end of the fit. `--die-at-save N --die-rank R` (a fault): rank R SIGKILLs
itself right after writing its shard of the N-th save. `--count-hashing FILE` writes to FILE.RANK how many times lamindb's
`hash_dir` ran on that rank, and which files our hashing read there (wrappers that count, then call the real ones)."""
import argparse
import sys

from lamin_lightning.testing import NetworkGuard

guard = NetworkGuard().install()

import lightning.pytorch as pl  # noqa: E402
from lightning.pytorch.strategies import ModelParallelStrategy  # noqa: E402
from torch.distributed.fsdp import fully_shard  # noqa: E402

from lamin_lightning import Checkpoint  # noqa: E402
from lamin_lightning.testing import TinyData, TinyModel  # noqa: E402


class ShardedModel(TinyModel):
    "TinyModel with its layer sharded across the data-parallel ranks."

    def configure_model(self) -> None:
        fully_shard(self.layer, mesh=self.device_mesh["data_parallel"])


class RefuseFrom(pl.Callback):
    "From training epoch `epoch` on, every `Artifact.save` raises (a fault injected)."

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            import lamindb as ln

            def refuse(*args, **kwargs):
                raise OSError("the store refuses writes (a fault injected)")
            ln.Artifact.save = refuse


def die_at_save(save: int, rank: int) -> None:
    "Rank `rank` SIGKILLs itself right after writing its shard of the `save`-th distributed checkpoint (a fault)."
    import os
    import signal

    from torch.distributed.checkpoint import FileSystemWriter

    write_data, calls = FileSystemWriter.write_data, [0]

    def write_then_die(self, *args, **kwargs):
        written = write_data(self, *args, **kwargs)  # this rank's shard is on disk
        calls[0] += 1
        if calls[0] == save and int(os.environ.get("LOCAL_RANK", "0")) == rank:
            os.kill(os.getpid(), signal.SIGKILL)
        return written
    FileSystemWriter.write_data = write_then_die


def count_hashing(path: str) -> None:
    """Count the calls of lamindb's folder hashing (`hash_dir`) in this process, and record each file our own hashing
    read; written to `path` (JSON) at exit. Wrappers that count, then call the real function."""
    import atexit
    import json

    import lamindb.models.artifact as artifact_module
    import lamindb_setup.core.hashing as hashing

    import lamin_lightning.folders as folders

    hash_dir, hash_file_once, seen = hashing.hash_dir, folders.hash_file_once, {"hash_dir": 0, "read": []}

    def counted(*args, **kwargs):
        seen["hash_dir"] += 1
        return hash_dir(*args, **kwargs)

    def recorded(file, *args, **kwargs):
        seen["read"].append(str(file))
        return hash_file_once(file, *args, **kwargs)
    hashing.hash_dir = artifact_module.hash_dir = counted
    folders.hash_file_once = recorded
    atexit.register(lambda: open(path, "w").write(json.dumps(seen)))


def record_uploads(path: str) -> None:
    "Append `rank remote-path` to `path` for each file this process uploads through s3fs (a spy: it still uploads)."
    import os

    import s3fs

    put_file = s3fs.S3FileSystem._put_file

    async def recorded(self, lpath, rpath, *args, **kwargs):
        with open(path, "a") as file:
            file.write(f"{os.environ.get('LOCAL_RANK', '0')} {rpath}\n")
        return await put_file(self, lpath, rpath, *args, **kwargs)

    s3fs.S3FileSystem._put_file = recorded


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dirpath")
    parser.add_argument("--ckpt-path")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--files-only", action="store_true", help="save_distributed_checkpoint=False: one file")
    parser.add_argument("--refuse-from-epoch", type=int)
    parser.add_argument("--save-best", action="store_true", help="keep best.ckpt, a link to the best folder")
    parser.add_argument("--async-publish", action="store_true")
    parser.add_argument("--die-at-save", type=int)
    parser.add_argument("--die-rank", type=int, default=1)
    parser.add_argument("--count-hashing")
    parser.add_argument("--record-uploads", help="append `rank path` of each s3fs upload to this file")
    parser.add_argument("--storage", help="the instance's storage location to write to (an S3 one the test made)")
    parser.add_argument("--strategy", choices=["model_parallel", "fsdp", "deepspeed"], default="model_parallel")
    args = parser.parse_args()
    if args.die_at_save is not None:
        die_at_save(args.die_at_save, args.die_rank)
    if args.count_hashing is not None:  # one file per rank
        count_hashing(f"{args.count_hashing}.{__import__('os').environ.get('LOCAL_RANK', '0')}")
    if args.record_uploads:
        record_uploads(args.record_uploads)
    if args.storage:
        import lamindb as ln
        import lamindb_setup as ln_setup

        ln_setup.settings.instance._is_on_hub = False  # test only: lamindb asks the hub before it uses cloud storage
        ln.settings.storage = args.storage
    accelerator, devices, model = "cpu", 2, ShardedModel(hidden=8)
    if args.strategy == "model_parallel":
        strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1,
                                         save_distributed_checkpoint=not args.files_only)
    else:
        import torch
        from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy

        accelerator, devices, model = "cuda", min(2, torch.cuda.device_count()), TinyModel(hidden=8)
        strategy = FSDPStrategy(state_dict_type="sharded") if args.strategy == "fsdp" else DeepSpeedStrategy(stage=2)
    callback = Checkpoint(dirpath=args.dirpath, monitor="val_loss", save_top_k=2, save_last=True,
                          save_best=args.save_best or None, async_publish=args.async_publish or None)
    trainer = pl.Trainer(accelerator=accelerator, devices=devices, strategy=strategy, max_epochs=args.epochs,
                         limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[callback] + ([] if args.refuse_from_epoch is None else [RefuseFrom(args.refuse_from_epoch)]))
    trainer.fit(model, TinyData(hidden=8), ckpt_path=args.ckpt_path)
    if trainer.is_global_zero:
        print(f"global_step={trainer.global_step} best={callback.best_model_path}", flush=True)


if __name__ == "__main__":
    main()
    if guard.attempts:
        sys.exit(f"network calls attempted: {guard.attempts}")
