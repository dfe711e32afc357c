"""Checkpoints are hashed as they are written: lamindb never reads a checkpoint file again to hash it."""
from pathlib import Path

import pytest
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.plugins.io import AsyncCheckpointIO

from lamin_lightning.testing import TinyData, TinyModel, tiny_trainer, use_test_instance


class OwnIO(TorchCheckpointIO):
    "A user's own IO: we cannot know how it writes, so lamindb hashes its files."


@pytest.mark.parametrize("io, async_publish", [("torch", False), ("torch", True), ("async", False), ("own", False)])
def test_checkpoints_are_hashed_once_as_written(tmp_path: Path, monkeypatch, io: str, async_publish: bool) -> None:
    use_test_instance()
    import lamindb as ln
    import lamindb.models.artifact as artifact_module
    from lamindb_setup.core.hashing import hash_file

    import lamin_lightning as ll

    reads: list[str] = []

    def counting(path, *args, **kwargs):
        reads.append(str(path))
        return hash_file(path, *args, **kwargs)

    monkeypatch.setattr(artifact_module, "hash_file", counting)
    plugins = {"torch": [], "async": [AsyncCheckpointIO()], "own": [OwnIO()]}[io]
    dirpath = tmp_path / "ckpts"
    callback = ll.Checkpoint(dirpath=dirpath, monitor="val_loss", save_top_k=2, save_last=True,
                             async_publish=async_publish)
    tiny_trainer(tmp_path, [callback], logger=False, max_epochs=4, plugins=plugins).fit(TinyModel(), TinyData())
    checkpoint_reads = [p for p in reads if p.endswith(".ckpt")]
    artifacts = ln.Artifact.filter(key__startswith=f"{dirpath}/checkpoints/", suffix=".ckpt")
    assert {Path(a.key).name for a in artifacts} == {p.name for p in dirpath.glob("*.ckpt")}
    for artifact in artifacts:  # the hash taken in memory is the one lamindb would compute from the file
        size, digest, kind = hash_file(Path(artifact.path))
        assert (artifact.size, artifact.hash, artifact._hash_type) == (size, digest, kind)
        assert Path(artifact.path).read_bytes() == (dirpath / Path(artifact.key).name).read_bytes()
    if io == "own":
        assert checkpoint_reads  # not Lightning's own writer: lamindb reads and hashes the files
    else:
        assert checkpoint_reads == []
