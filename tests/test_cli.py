"""LightningCLI in a real subprocess: `class_path: lamin_lightning.Checkpoint` plus our SaveConfigCallback."""
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from lamin_lightning.testing import use_test_instance

APP = Path(__file__).with_name("cli_app.py")


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, str(APP), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def cli_config(tmp_path: Path, logs: str, max_epochs: int, **checkpoint: object) -> dict:
    "A LightningCLI config: a tiny quiet trainer, a CSVLogger under `tmp_path/logs`, and `lamin_lightning.Checkpoint`."
    return {
        "trainer": {
            "default_root_dir": str(tmp_path), "max_epochs": max_epochs, "limit_train_batches": 2,
            "limit_val_batches": 1, "enable_progress_bar": False, "enable_model_summary": False,
            "num_sanity_val_steps": 0,
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                       "init_args": {"save_dir": str(tmp_path / logs), "name": "cli"}},
            "callbacks": [{"class_path": "lamin_lightning.Checkpoint", "init_args": checkpoint}],
        },
    }


def test_cli_fit_stores_config_and_checkpoints(tmp_path: Path) -> None:
    use_test_instance()
    import lamindb as ln

    config = cli_config(tmp_path, "clilogs", max_epochs=3, monitor="val_loss", save_top_k=2, save_last=True)
    config["model"] = {"lr": 0.03}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = run_cli("fit", "--config", "config.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    stored = ln.Artifact.get(key="clilogs/cli/version_0/config.yaml")
    assert (stored.description, stored.kind) == ("Lightning CLI config", "config")
    content = yaml.safe_load(Path(stored.path).read_text())
    assert content["model"]["lr"] == 0.03
    assert content["trainer"]["callbacks"][0]["class_path"] == "lamin_lightning.Checkpoint"
    assert content["trainer"]["callbacks"][0]["init_args"]["save_top_k"] == 2

    prefix = "clilogs/cli/version_0/checkpoints/"
    keys = set(ln.Artifact.filter(key__startswith=prefix).values_list("key", flat=True))
    assert keys == {prefix + n for n in ("hparams.yaml", "last.ckpt", "epoch=1-step=4.ckpt", "epoch=2-step=6.ckpt")}
    best = ln.Artifact.filter(key__startswith=prefix).filter(is_best_model=True).one()
    assert best.key == prefix + "epoch=2-step=6.ckpt"
    assert best.features.get_values()["model_rank"] == 0
    assert ln.Artifact.filter(key__startswith=prefix).filter(is_last_model=True).one().key == prefix + "last.ckpt"


def test_cli_help_explains_checkpoint_arguments(tmp_path: Path) -> None:
    result = run_cli("fit", "--trainer.callbacks.help", "lamin_lightning.Checkpoint", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for argument, description in [
        ("--trainer.callbacks.run_uid_is_version", "put its uid in the key prefix"),
        ("--trainer.callbacks.features", "Your own features"),
        ("--trainer.callbacks.save_on_exception", "Save a checkpoint when training raises"),
        ("--trainer.callbacks.filename", "Checkpoint filename pattern"),
    ]:
        assert argument in out, argument
        assert description in " ".join(out.split()), description


def test_cli_without_checkpoint_fails_before_training(tmp_path: Path) -> None:
    use_test_instance()
    result = run_cli("fit", f"--trainer.default_root_dir={tmp_path}", "--trainer.max_epochs=1",
                     "--trainer.enable_checkpointing=false", cwd=tmp_path)
    assert result.returncode != 0
    assert "the trainer has none. Add one" in result.stderr
    assert "SaveConfigCallback.setup" in result.stderr or "in setup" in result.stderr  # raised at setup, before a batch
    assert not list(tmp_path.rglob("config.yaml"))  # nothing was saved before the error


def test_cli_resumes_by_reference_with_the_checkpoint_hyperparameters(tmp_path: Path) -> None:
    use_test_instance()
    import lamindb as ln

    config = cli_config(tmp_path, "logs", max_epochs=2, monitor="val_loss", save_last=True)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    first = run_cli("fit", "--config", "config.yaml", "--model.lr=0.03", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    last = ln.Artifact.get(key="logs/cli/version_0/checkpoints/last.ckpt")

    second = run_cli("fit", "--config", "config.yaml", "--trainer.max_epochs=4",
                     "--ckpt_path", "lamin://logs/cli/version_0@last", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Restoring states from the checkpoint path at lamin://logs/cli/version_0@last" in second.stderr + second.stdout
    saved = ln.Artifact.get(key="logs/cli/version_1/config.yaml")
    assert yaml.safe_load(Path(saved.path).read_text())["model"]["lr"] == 0.03  # merged from the checkpoint
    new_last = ln.Artifact.get(key="logs/cli/version_1/checkpoints/last.ckpt")
    assert torch.load(new_last.path, weights_only=True)["global_step"] == 8  # resumed at step 4
    inputs = set(new_last.run.input_artifacts.all())
    assert inputs == {last, saved}  # lineage: what it resumed from and its config
    assert new_last.run.transform.key == "cli_app.py"
