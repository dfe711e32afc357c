"""The private Lightning pieces the package uses, each in one place: these fail when Lightning changes them."""
import inspect

import pytest
import torch
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import AsyncCheckpointIO, TorchCheckpointIO


def test_async_checkpoint_io_writes_through_its_inner_io(tmp_path) -> None:
    from lamin_lightning.references import LaminCheckpointIO

    inner = TorchCheckpointIO()
    outer = AsyncCheckpointIO(inner)
    assert outer._checkpoint_io is inner  # the attribute the wrapper replaces
    io = LaminCheckpointIO(outer)
    assert type(outer._checkpoint_io).__name__ == "_Completion" and outer.checkpoint_io.inner is inner
    path = tmp_path / "a.ckpt"
    io.save_checkpoint({"x": torch.ones(2)}, path)
    write = io.pending_write(path)
    assert write is None or write.wait(10)  # the write marked itself complete
    outer.teardown()
    assert io.pending_write(path) is None and torch.load(path)["x"].sum() == 2


def test_async_checkpoint_io_runs_work_in_order_on_its_executor(tmp_path) -> None:
    from lamin_lightning.references import LaminCheckpointIO

    outer = AsyncCheckpointIO(TorchCheckpointIO())
    io = LaminCheckpointIO(outer)
    assert outer._executor is None and not io.defer(lambda: None)  # nothing to run after before the first write
    path, seen = tmp_path / "a.ckpt", []
    io.save_checkpoint({"x": torch.ones(2)}, path)
    assert outer._executor is not None  # the attribute `defer` and `drain` use: one thread, in submission order
    assert io.defer(lambda: seen.append(path.exists()))
    io.drain()
    assert seen == [True]  # ran after the write handed over before it
    assert io.defer(lambda: 1 / 0)  # an error of deferred work reaches the training thread at `drain`
    with pytest.raises(ZeroDivisionError):
        io.drain()
    io.drain()  # raised once
    outer.teardown()


def test_lightning_cli_reads_ckpt_path_hyperparameters_only_from_files() -> None:
    import lamin_lightning.references  # noqa: F401  (wraps LightningCLI._parse_ckpt_path)

    wrapped = LightningCLI._parse_ckpt_path
    assert wrapped.reads_references
    original = wrapped.__closure__[0].cell_contents
    assert "Path(ckpt_path).is_file()" in inspect.getsource(original)  # why references need the wrapper
