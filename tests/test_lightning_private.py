"""The private Lightning pieces the package uses, each in one place: these fail when Lightning changes them."""
import inspect

import pytest
import torch
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import AsyncCheckpointIO, TorchCheckpointIO


def test_async_checkpoint_io_writes_through_its_inner_io(tmp_path) -> None:
    from lamin_lightning.checkpoint_io import LaminCheckpointIO

    inner = TorchCheckpointIO()
    outer = AsyncCheckpointIO(inner)
    assert outer._checkpoint_io is inner  # the attribute `upstream.inner_io` reads and `set_inner_io` replaces
    io = LaminCheckpointIO(outer)
    assert type(outer._checkpoint_io).__name__ == "_Completion" and outer.checkpoint_io.inner is inner
    path = tmp_path / "a.ckpt"
    io.save_checkpoint({"x": torch.ones(2)}, path)
    write = io.writes.pending(path)
    assert write is None or write.wait(10)  # the write marked itself complete
    outer.teardown()
    assert io.writes.pending(path) is None and torch.load(path)["x"].sum() == 2


def test_async_checkpoint_io_runs_work_in_order_on_its_executor(tmp_path) -> None:
    from lamin_lightning.checkpoint_io import LaminCheckpointIO

    outer = AsyncCheckpointIO(TorchCheckpointIO())
    io = LaminCheckpointIO(outer)
    assert outer._executor is None and not io.writes.defer(lambda: None)  # nothing to run after before the first write
    path, seen = tmp_path / "a.ckpt", []
    io.save_checkpoint({"x": torch.ones(2)}, path)
    assert outer._executor is not None  # `upstream.io_executor`, which `defer` and `drain` use: one thread, in order
    assert io.writes.defer(lambda: seen.append(path.exists()))
    io.writes.drain()
    assert seen == [True]  # ran after the write handed over before it
    assert io.writes.defer(lambda: 1 / 0)  # an error of deferred work reaches the training thread at `drain`
    with pytest.raises(ZeroDivisionError):
        io.writes.drain()
    io.writes.drain()  # raised once
    outer.teardown()


def test_lightning_cli_reads_ckpt_path_hyperparameters_only_from_files() -> None:
    import lamin_lightning.references  # noqa: F401  (wraps LightningCLI._parse_ckpt_path)

    wrapped = LightningCLI._parse_ckpt_path
    assert wrapped.reads_references
    original = wrapped.__closure__[0].cell_contents
    assert "Path(ckpt_path).is_file()" in inspect.getsource(original)  # why references need the wrapper


def test_lightning_cli_ckpt_path_is_wrapped_once() -> None:
    "`upstream.wrap_cli_ckpt_path` replaces LightningCLI's `_parse_ckpt_path`, and only once."
    from lamin_lightning.upstream import wrap_cli_ckpt_path

    before = LightningCLI._parse_ckpt_path
    wrap_cli_ckpt_path(lambda parse: (_ for _ in ()).throw(AssertionError("wrapped twice")))
    assert LightningCLI._parse_ckpt_path is before


def test_model_checkpoint_hooks_we_override_exist() -> None:
    "The protected hooks of `ModelCheckpoint` that `Checkpoint` overrides, with the parameters it takes."
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lamin_lightning.upstream import MODEL_CHECKPOINT_HOOKS

    params = {h: list(inspect.signature(getattr(ModelCheckpoint, h)).parameters) for h in MODEL_CHECKPOINT_HOOKS}
    assert params == {
        "_save_checkpoint": ["self", "trainer", "filepath"],
        "_save_last_checkpoint": ["self", "trainer", "monitor_candidates"],
        "_remove_checkpoint": ["self", "trainer", "filepath"],
        "_should_remove_checkpoint": ["self", "trainer", "previous", "current"],
    }


def test_model_checkpoint_state_we_read_exists(tmp_path) -> None:
    "The protected members of `ModelCheckpoint` the publishing base reads (`upstream.MODEL_CHECKPOINT_STATE`)."
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lamin_lightning.upstream import MODEL_CHECKPOINT_STATE

    callback = ModelCheckpoint(dirpath=tmp_path)
    assert all(hasattr(callback, name) for name in MODEL_CHECKPOINT_STATE)
    assert callback._last_checkpoint_saved == "" and callable(ModelCheckpoint._link_checkpoint)
    assert hasattr(callback._fs, "copy")


def test_ckpt_path_last_asks_find_last_checkpoints_before_setup(tmp_path) -> None:
    "`upstream.LastCheckpoints` overrides `_find_last_checkpoints`, which `ckpt_path='last'` asks before any setup."
    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.trainer.connectors.checkpoint_connector import _CheckpointConnector

    from lamin_lightning.upstream import LastCheckpoints

    assert "_find_last_checkpoints" in vars(ModelCheckpoint)
    assert "callback._find_last_checkpoints(self.trainer)" in inspect.getsource(_CheckpointConnector._parse_ckpt_path)
    elsewhere = tmp_path / "elsewhere.ckpt"
    elsewhere.write_bytes(b"x")
    asked = []

    class Asked(LastCheckpoints, ModelCheckpoint):
        def last_checkpoints(self, trainer, found):
            asked.append(trainer)
            return found | {str(elsewhere)}

    trainer = Trainer(callbacks=[Asked(dirpath=tmp_path / "ckpts")], logger=False)
    from lightning.pytorch.trainer.states import TrainerFn
    trainer.state.fn = TrainerFn.FITTING
    path = trainer._checkpoint_connector._parse_ckpt_path(TrainerFn.FITTING, "last", model_provided=True,
                                                          model_connected=True)
    assert path == str(elsewhere) and len(asked) == 1


def test_distributed_checkpoint_names_each_shard_by_its_writer(tmp_path) -> None:
    """torch's `FileSystemWriter` names a rank's shard files `__{rank}_{n}.distcp` (what `upstream.shard_writer` reads
    to let each rank upload its own shards); a save on one process, without a process group, writes rank 0's."""
    import warnings

    import torch.distributed.checkpoint as dcp

    from lamin_lightning.upstream import shard_writer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.distributed is disabled, unavailable or uninitialized"
        dcp.save({"weights": torch.arange(4.0)}, checkpoint_id=tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [".metadata", "__0_0.distcp"], names
    assert [shard_writer(n) for n in names] == [None, 0]
