"""Without a connected LaminDB instance, fit stops at setup with the command that fixes it, before any batch."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent("""
    import sys
    from lamin_lightning.testing import NetworkGuard, TinyData, TinyModel, tiny_trainer
    guard = NetworkGuard().install()
    import lamin_lightning as ll

    class Counting(TinyModel):
        batches = 0
        def training_step(self, batch, batch_idx):
            Counting.batches += 1
            return super().training_step(batch, batch_idx)

    root = sys.argv[1]
    try:
        tiny_trainer(root, [ll.Checkpoint(dirpath=root + "/ckpts")], logger=False).fit(Counting(), TinyData())
    except RuntimeError as error:
        print("ERROR:", error)
    print("BATCHES:", Counting.batches)
    print("NETWORK:", len(guard.attempts))
""")


def test_fit_without_instance_fails_before_training(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "LAMIN_CURRENT_INSTANCE"}
    env["LAMIN_SETTINGS_DIR"] = env["LAMIN_LIGHTNING_TEST"] = str(tmp_path / "empty-settings")  # no instance here
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ERROR: No LaminDB instance is connected" in result.stdout
    assert "lamin init --storage" in result.stdout
    assert "BATCHES: 0" in result.stdout
    assert "NETWORK: 0" in result.stdout
    assert not list(tmp_path.rglob("*.ckpt"))
