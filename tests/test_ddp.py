"""Real DDP under LightningCLI: two CPU processes (gloo) on one node, and two nodes started by `torchrun` on
loopback. Only global rank 0 publishes, nothing twice, no hang."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from faults import stored
from lamin_lightning.testing import use_test_instance

APP = Path(__file__).with_name("cli_app.py")


def write_config(tmp_path: Path, dirpath: Path, checkpoint: dict | None = None, **trainer: object) -> None:
    config = {
        "trainer": {
            "default_root_dir": str(tmp_path), "max_epochs": 4, "limit_train_batches": 2, "limit_val_batches": 1,
            "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0,
            "accelerator": "cpu", "strategy": "ddp",
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                       "init_args": {"save_dir": str(tmp_path / "logs"), "name": "ddp"}},
            "callbacks": [{"class_path": "lamin_lightning.Checkpoint",
                           "init_args": {"dirpath": str(dirpath), "monitor": "val_loss", "save_top_k": 2,
                                         "save_last": True, **(checkpoint or {})}}],
            **trainer,
        },
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))


def assert_published_once(dirpath: Path) -> None:
    "One artifact per file on disk, with one best, one last, ranks 0 and 1, config and hparams once, nothing pending."
    import lamindb as ln

    prefix = f"{dirpath}/checkpoints"
    db = stored(prefix)
    assert set(db) == {p.name for p in dirpath.glob("*.ckpt")} and all(len(a) == 1 for a in db.values())
    assert sum(a[0]["is_best_model"] for a in db.values()) == 1
    assert sum(a[0]["is_last_model"] for a in db.values()) == 1
    assert sorted(a[0]["model_rank"] for n, a in db.items() if n != "last.ckpt") == [0, 1]
    scores = {n: a[0]["score"] for n, a in db.items() if n != "last.ckpt"}
    assert min(scores, key=scores.get) == next(n for n, a in db.items() if a[0]["is_best_model"])
    assert ln.Artifact.filter(key=f"{dirpath}/config.yaml").count() == 1
    assert ln.Artifact.filter(key=f"{prefix}/hparams.yaml").count() == 1
    assert not (dirpath / ".lamin_lightning").exists()  # no journal left, no entry pending


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("async_publish", [None, "process"], ids=["default", "process"])
def test_ddp_two_processes(tmp_path: Path, async_publish: str | None) -> None:
    use_test_instance()
    dirpath = tmp_path / "ckpts"
    write_config(tmp_path, dirpath, {"async_publish": async_publish}, devices=2)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "MASTER_PORT": str(free_port())}
    result = subprocess.run([sys.executable, str(APP), "fit", "--config", "config.yaml"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "world_size: 2" in result.stderr or "distributed_backend=gloo" in result.stderr  # really two processes
    assert_published_once(dirpath)


def test_torchrun_two_nodes(tmp_path: Path) -> None:
    "`torchrun --nnodes 2`, one CPU process per node, each node a process group of its own on loopback."
    use_test_instance()
    dirpath = tmp_path / "ckpts"
    write_config(tmp_path, dirpath, devices=1, num_nodes=2)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    port = free_port()
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1", "--node-rank",
         str(rank), "--master-addr", "127.0.0.1", "--master-port", str(port), str(APP), "fit", "--config",
         "config.yaml"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for rank in (0, 1)]
    try:
        outcomes = [node.communicate(timeout=240) for node in nodes]  # a hang fails here
    finally:
        for node in nodes:
            node.kill()
    for node, (_, err) in zip(nodes, outcomes, strict=True):
        assert node.returncode == 0, err[-3000:]
    assert "GLOBAL_RANK: 1" in outcomes[0][1] + outcomes[1][1] or "world_size: 2" in outcomes[0][1] + outcomes[1][1]
    assert_published_once(dirpath)
