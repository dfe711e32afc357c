"""`make demo`: train a tiny model into a local SQLite LaminDB instance in ./.demo, offline, and show the artifacts."""
import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEMO = Path(os.environ.get("LAMIN_LIGHTNING_DEMO", HERE / ".demo"))  # tests/test_first_hour.py runs it elsewhere
shutil.rmtree(DEMO, ignore_errors=True)  # every run starts from scratch
os.environ["LAMIN_SETTINGS_DIR"] = str(DEMO / "settings")  # never ~/.lamin; set before lamindb is imported
os.environ.setdefault("PYTHONWARNINGS", "ignore")

from lamin_lightning.testing import NetworkGuard, TinyData, TinyModel, init_local_instance  # noqa: E402

guard = NetworkGuard().install()  # the whole demo runs with the network refused
init_local_instance(DEMO / "storage")  # before lamindb is imported: else lamindb_setup sets Django up twice, and says so

import lamindb as ln  # noqa: E402
from lightning.pytorch import Trainer  # noqa: E402
from lightning.pytorch.loggers import CSVLogger  # noqa: E402

import lamin_lightning as ll  # noqa: E402

ln.settings.verbosity = "error"  # keep the demo output to the table
ll.save_lightning_features()

checkpoint = ll.Checkpoint(monitor="val_loss", save_top_k=2, save_last=True)
trainer = Trainer(max_epochs=5, limit_train_batches=4, limit_val_batches=2, logger=CSVLogger(DEMO / "logs", name="demo"),
                  callbacks=[checkpoint], enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
trainer.fit(TinyModel(), TinyData())

prefix = checkpoint.checkpoint_key_prefix
print(f"\nArtifacts under {prefix}/ in the LaminDB instance at {DEMO / 'storage'}:\n")
header = f"{'key':<28}{'size':>8}{'score':>9}{'model_rank':>12}{'is_best_model':>15}{'is_last_model':>15}"
print(header + "\n" + "-" * len(header))
for artifact in ln.Artifact.filter(key__startswith=prefix + "/").order_by("key"):
    values = artifact.features.get_values()
    score = values.get("score")
    print(f"{artifact.key.removeprefix(prefix + '/'):<28}{artifact.size:>8}"
          f"{'' if score is None else f'{score:.4f}':>9}{str(values.get('model_rank', '')):>12}"
          f"{str(values.get('is_best_model', '')):>15}{str(values.get('is_last_model', '')):>15}")
print(f"\nbest: {ln.Artifact.filter(key__startswith=prefix).filter(is_best_model=True).one().key}")
print(f"network connections attempted: {len(guard.attempts)}")
sys.exit(1 if guard.attempts else 0)
