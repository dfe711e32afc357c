"""Real DDP: two CPU processes (gloo) under LightningCLI; only rank 0 publishes, nothing twice, no hang."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from faults import stored
from lamin_lightning.testing import use_test_instance

APP = Path(__file__).with_name("cli_app.py")


def test_ddp_two_processes(tmp_path: Path) -> None:
    use_test_instance()
    import lamindb as ln

    dirpath = tmp_path / "ckpts"
    config = {
        "trainer": {
            "default_root_dir": str(tmp_path), "max_epochs": 4, "limit_train_batches": 2, "limit_val_batches": 1,
            "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0,
            "accelerator": "cpu", "devices": 2, "strategy": "ddp",
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                       "init_args": {"save_dir": str(tmp_path / "logs"), "name": "ddp"}},
            "callbacks": [{"class_path": "lamin_lightning.Checkpoint",
                           "init_args": {"dirpath": str(dirpath), "monitor": "val_loss", "save_top_k": 2,
                                         "save_last": True}}],
        },
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "MASTER_PORT": str(20000 + os.getpid() % 20000)}
    result = subprocess.run([sys.executable, str(APP), "fit", "--config", "config.yaml"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "world_size: 2" in result.stderr or "distributed_backend=gloo" in result.stderr  # really two processes

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
