"""Parallel trials: several fits at once, each in its own process, publishing into one SQLite instance."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from faults import assert_consistent

from lamin_lightning.testing import use_test_instance

FIT = textwrap.dedent("""
    import json, sys
    from lamin_lightning.testing import NetworkGuard, TinyData, TinyModel, tiny_trainer
    guard = NetworkGuard().install()
    import lamin_lightning as ll

    dirpath = sys.argv[1]
    callback = ll.Checkpoint(dirpath=dirpath, monitor="train_loss", save_top_k=5, save_last=True, every_n_train_steps=1)
    tiny_trainer(dirpath, [callback], logger=False, max_epochs=1, max_steps=25, limit_train_batches=25,
                 limit_val_batches=0).fit(TinyModel(), TinyData(n=200))
    print(json.dumps({"best_k": {p: float(s) for p, s in callback.best_k_models.items()},
                      "best": callback.best_model_path, "attempts": len(guard.attempts)}))
""")


def test_three_fits_at_once_publish_everything_without_locked_warnings(tmp_path: Path) -> None:
    use_test_instance()
    import lamin_lightning as ll

    ll.save_lightning_features()
    folders = [tmp_path / f"trial-{i}" for i in range(3)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    children = [subprocess.Popen([sys.executable, "-c", FIT, str(folder)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=env) for folder in folders]
    for child, folder in zip(children, folders, strict=True):
        out, err = child.communicate(timeout=300)
        assert child.returncode == 0, err[-3000:]
        assert "database is locked" not in err, err[-3000:]  # each fit waited for the others' commits instead
        state = json.loads(out.strip().splitlines()[-1])
        assert state["attempts"] == 0
        assert not (folder / ".lamin_lightning").exists()  # nothing pending when fit returned
        assert_consistent(folder, f"{folder}/checkpoints", state["best_k"], state["best"])
