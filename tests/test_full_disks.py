"""A store or a checkpoint folder on a disk that fills up (or turns read-only), before or during a fit: `fit()`
returns, nothing is lost, no temporary file or locked half-journal is left, and `sync` finishes the work once there is
room again (issue 23, items 3, 4 and 6). The disks are small `tmpfs` mounts, made and removed by each test."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from faults import BIN, run_script

TESTS = Path(__file__).parent


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    "A 64 MiB tmpfs at `tmp_path/disk`, unmounted at teardown; skipped where mounting is not allowed."
    yield from _mounted(tmp_path / "disk", "64m")


def _mounted(folder: Path, size: str) -> Iterator[Path]:
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        while subprocess.run(["mountpoint", "-q", str(folder)]).returncode == 0:  # a read-only bind, then the tmpfs
            subprocess.run(["umount", "-l", str(folder)], check=True)


def fill(folder: Path) -> None:
    "Write zeros into `folder/filler` until its disk is full."
    block = b"\0" * (1 << 20)
    with open(folder / "filler", "wb", buffering=0) as out:
        try:
            while True:
                out.write(block)
        except OSError as error:
            assert error.errno == errno.ENOSPC
    with open(folder / "filler", "ab", buffering=0) as out:  # the last partial block's room too
        try:
            while True:
                out.write(b"\0" * 512)
        except OSError:
            pass


def child_env(settings: Path) -> dict[str, str]:
    "An environment whose LaminDB settings live in `settings`: the instance of these tests, not the suite's."
    env = {k: v for k, v in os.environ.items() if k != "LAMIN_CURRENT_INSTANCE"}
    return env | {"LAMIN_SETTINGS_DIR": str(settings), "LAMIN_LIGHTNING_TEST": str(settings),
                  "LAMIN_CACHE_DIR": str(settings / "cache"), "PYTHONWARNINGS": "ignore"}


def in_child(code: str, cwd: Path, env: dict[str, str]) -> dict:
    "Run `code` in a fresh Python with `env` and the network refused; it prints one JSON line last."
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        result = run_script(f"import sys; sys.path.insert(0, {str(TESTS)!r})\n" + textwrap.dedent(code), cwd=cwd)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


FIT = """
import json, os, warnings
from pathlib import Path
import lightning.pytorch as pl
import lamindb as ln, lamindb_setup as ln_setup
import lamin_lightning as ll
from lamin_lightning.testing import TinyData, TinyModel, init_local_instance, tiny_trainer
from lamin_lightning.features import save_lightning_features
from test_full_disks import fill

disk, dirpath, fault, when = Path({disk!r}), Path({dirpath!r}), {fault!r}, {when!r}
init_local_instance(disk / "storage")
save_lightning_features()

def break_store():
    if fault == "full":
        fill(disk)
    else:  # the store's folder turns read-only: a read-only bind mount over it (SQLite's open file stays writable)
        import subprocess
        subprocess.run(["mount", "--bind", str(disk), str(disk)], check=True)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(disk)], check=True)

class AtEpoch(pl.Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 2 and when == "mid":
            break_store()

if when == "before":
    break_store()
callback = ll.Checkpoint(dirpath=dirpath, monitor="val_loss", save_top_k=2, every_n_epochs=1)  # no last.ckpt: item 5
trainer = tiny_trainer(dirpath.parent, [callback, AtEpoch()], logger=False, max_epochs=5)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    trainer.fit(TinyModel(), TinyData())  # returns: strict=False
print(json.dumps(dict(
    epoch=trainer.current_epoch, slug=ln_setup.settings.instance.slug,
    best_k={{os.path.basename(k): float(v) for k, v in callback.best_k_models.items()}},
    best=os.path.basename(callback.best_model_path),
    warnings=[str(w.message) for w in caught if "LaminDB" in str(w.message)],
    journals=[str(p) for p in (dirpath / ".lamin_lightning").glob("*.jsonl")],
    debris=[p.name for p in (disk / "storage" / ".lamindb").glob(".*.ckpt")],
)))
"""

CHECK = """
import json
from pathlib import Path
import lamindb as ln
from faults import assert_consistent

dirpath = Path({dirpath!r})
assert_consistent(dirpath, f"{{dirpath}}/checkpoints", {{str(dirpath / k): v for k, v in {best_k!r}.items()}},
                  str(dirpath / {best!r}))
runs = ln.Run.filter(transform__kind="script")
print(json.dumps([dict(uid=r.uid, status=r.status, finished=r.finished_at is not None,
                       outputs=r.output_artifacts.count()) for r in runs]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["full", "readonly"])
@pytest.mark.parametrize("when", ["mid", "before"])
def test_store_full_or_read_only(tmp_path: Path, disk: Path, fault: str, when: str) -> None:
    "Items 3 and 6: the store's disk full or read-only, mid-fit or before it: `fit()` returns, `sync` finishes."
    settings, dirpath = tmp_path / "settings", tmp_path / "ckpts"
    env = child_env(settings)
    fitted = in_child(FIT.format(disk=str(disk), dirpath=str(dirpath), fault=fault, when=when), tmp_path, env)
    assert fitted["epoch"] == 5  # every epoch trained
    assert fitted["journals"], "the refused publications are journaled"
    assert fitted["debris"] == []  # item 6: no temporary file of a failed copy in .lamindb/
    if when == "before":  # one clear warning, naming the database and the cause
        said = [w for w in fitted["warnings"] if "refused to record the fit's run" in w]
        assert len(said) == 1 and str(disk / "storage") in said[0] and "lamin-lightning sync" in said[0], fitted
    if fault == "full":
        (disk / "filler").unlink()  # room again
    else:
        subprocess.run(["umount", str(disk)], check=True)  # the read-only bind goes: writable again
    env["LAMIN_CURRENT_INSTANCE"] = fitted["slug"]
    synced = subprocess.run([str(BIN / "lamin-lightning"), "sync", str(dirpath)], env=env, capture_output=True,
                            text=True, timeout=300)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert list((dirpath / ".lamin_lightning").glob("*.jsonl")) == []
    runs = in_child(CHECK.format(dirpath=str(dirpath), best_k=fitted["best_k"], best=fitted["best"]), tmp_path, env)
    assert len(runs) == 1, runs  # the fit's one run: made at setup, or by `sync` when the store refused it
    assert runs[0]["status"] == "completed" and runs[0]["finished"], runs
    assert runs[0]["outputs"] >= len(fitted["best_k"])


def fit_until_full(tmp_path: Path, name: str, make_callback) -> tuple[int, type | None, Path]:
    "Fit into a checkpoint folder on a 24 KiB tmpfs (three checkpoints of two pages each); the epoch it stopped at."
    import lightning.pytorch as pl

    from lamin_lightning.testing import TinyData, TinyModel, tiny_trainer

    folder = tmp_path / name
    next(mounter := _mounted(folder, "24k"))
    mounters.append(mounter)
    callback = make_callback(folder)
    trainer = tiny_trainer(tmp_path / f"{name}-root", [callback], logger=False, max_epochs=8)
    error = None
    try:
        trainer.fit(TinyModel(), TinyData())
    except Exception as caught:
        error = type(caught)
    assert isinstance(callback, pl.callbacks.ModelCheckpoint)
    return trainer.current_epoch, error, folder


mounters: list[Iterator[Path]] = []  # the tmpfs mounts of a test, unmounted by `unmounted`


@pytest.fixture
def unmounted() -> Iterator[None]:
    yield
    for mounter in mounters:
        next(mounter, None)  # its `finally` unmounts
    mounters.clear()


def test_full_checkpoint_folder_behaves_as_model_checkpoint(tmp_path: Path, unmounted: None) -> None:
    "Item 4: the same epoch and error as plain ModelCheckpoint; what was complete is published; no locked half-journal."
    import lightning.pytorch as pl

    import lamin_lightning as ll
    from faults import stored
    from lamin_lightning.journal import Contents
    from lamin_lightning.publisher import sync
    from lamin_lightning.testing import use_test_instance

    use_test_instance()
    options = dict(save_top_k=-1, every_n_epochs=1)
    plain = fit_until_full(tmp_path, "plain", lambda d: pl.callbacks.ModelCheckpoint(dirpath=d, **options))
    ours = fit_until_full(tmp_path, "ours", lambda d: ll.Checkpoint(dirpath=d, **options))
    assert plain[1] is not None  # the folder really filled up
    assert ours[:2] == plain[:2], (ours, plain)
    folder = ours[2]
    for journal in (folder / ".lamin_lightning").glob("*.jsonl"):  # whatever is left can be replayed: not locked
        assert journal.stat().st_size > 0 and Contents.read(journal).header, journal
    sync(folder)
    published = stored(f"{folder}/checkpoints")
    size = (folder / "epoch=0-step=2.ckpt").stat().st_size  # the one Lightning cut short has fewer bytes
    complete = {p.name for p in folder.glob("*.ckpt") if p.stat().st_size == size}
    assert len(complete) == ours[0] and complete <= set(published), (complete, published)  # the last one too
    assert list((folder / ".lamin_lightning").glob("*.jsonl")) == []
