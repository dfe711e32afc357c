"""Broken journals and racing syncs (issue 23, items 2 and 7): a journal reader that never crashes, journals without a
header set aside, and `lamin-lightning sync` run three times at once beside a live fit. `tests/README.md` tabulates them."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from faults import BIN, ckpt_files, run_script, stored, sync
from lamin_lightning.testing import TinyData, TinyModel, tiny_trainer, use_test_instance

EPOCHS = 3
# valid JSON that is not a journal record, and bytes that are not UTF-8: each line is skipped with a warning
BAD_LINES = [b"42", b"null", b"[1, 2]", b'{"entry": {"op": "save"}}', b'{"done": "0123456789abcdef"}', b'{"x": 1}',
             b"\xff\xfe not UTF-8"]


def journal_files(dirpath: Path) -> list[Path]:
    return sorted((dirpath / ".lamin_lightning").glob("*.jsonl"))


def fit(dirpath: Path, epochs: int = EPOCHS):
    import lamin_lightning as ll

    callback = ll.Checkpoint(dirpath=dirpath, monitor="val_loss", save_top_k=-1, every_n_epochs=1)
    trainer = tiny_trainer(dirpath.parent, [callback], logger=False, max_epochs=epochs)
    trainer.fit(TinyModel(), TinyData())
    assert trainer.current_epoch == epochs  # trained to the end
    return callback


def pending_fit(dirpath: Path, monkeypatch) -> None:
    "A fit while LaminDB refuses every artifact: each checkpoint stays journaled, and the journal is kept."
    import lamindb as ln
    from django.db.utils import OperationalError

    def refuse(self, *args, **kwargs):
        raise OperationalError("disk I/O error")

    with monkeypatch.context() as patched:
        patched.setattr(ln.Artifact, "save", refuse)
        fit(dirpath)
    assert len(journal_files(dirpath)) >= 1 and stored(f"{dirpath}") == {}


def assert_published_once(dirpath: Path, names: set[str] | None = None) -> None:
    "Each checkpoint file (or each of `names`) is in LaminDB exactly once, with the file's bytes; nothing else is."
    names = ckpt_files(dirpath) if names is None else names
    db = stored(f"{dirpath}")
    assert set(db) == names, f"on disk only: {names - set(db)}, in LaminDB only: {set(db) - names}"
    for name, artifacts in db.items():
        assert len(artifacts) == 1, f"{name} is in LaminDB {len(artifacts)} times"
        assert artifacts[0]["_bytes"] == (dirpath / name).read_bytes(), name


def run_sync(*args: str | Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([str(BIN / "lamin-lightning"), "sync", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("replayed_by", ["sync", "next fit"])
def test_malformed_lines_are_skipped(tmp_path: Path, monkeypatch, caplog, replayed_by: str) -> None:
    "2a. Seven lines that are not records among a pending journal's: each skipped with a warning, the rest published."
    use_test_instance()
    dirpath = tmp_path / "ckpts"
    pending_fit(dirpath, monkeypatch)
    files = ckpt_files(dirpath)
    assert len(files) == EPOCHS
    (journal,) = journal_files(dirpath)
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join([*lines[:2], *(line + b"\n" for line in BAD_LINES), *lines[2:]]))  # after entry 1
    if replayed_by == "sync":
        done = sync(dirpath)
        assert done.returncode == 0, done.stdout + done.stderr[-3000:]
        assert "Traceback" not in done.stderr
        warnings = done.stderr
    else:  # the next fit into the same folder replays it at setup, then trains
        fit(dirpath, epochs=1)
        warnings = caplog.text
    for number in range(3, 3 + len(BAD_LINES)):  # line 1 is the header, line 2 the first entry
        assert f"skipped line {number} of {journal}" in warnings, warnings[-3000:]
    assert warnings.count("skipped line") == len(BAD_LINES)
    assert_published_once(dirpath, files if replayed_by == "sync" else None)
    assert journal_files(dirpath) == []


def test_torn_last_line(tmp_path: Path, monkeypatch, caplog) -> None:
    """2b. The last line cut mid-write (as a crash leaves it): silent; the checkpoint it described is still published
    from its intent (journaled before the write), once, with its features; the lines a replay appends after it stay
    readable (a replay stopped by a store error halfway loses none of its `done` lines)."""
    use_test_instance()
    import lamindb as ln
    from django.db.utils import OperationalError

    from lamin_lightning.journal import Contents
    from lamin_lightning.publisher import sync as sync_here

    dirpath = tmp_path / "ckpts"
    pending_fit(dirpath, monkeypatch)
    (journal,) = journal_files(dirpath)
    lines = journal.read_bytes().splitlines(keepends=True)
    saves = [n for n, line in enumerate(lines) if json.loads(line).get("entry", {}).get("op") == "save"]
    last = lines[saves[-1]]  # a crash while writing it: the run's end entry, written after it, never comes
    torn = json.loads(last)["entry"]
    journal.write_bytes(b"".join(lines[:saves[-1]]) + last[:len(last) // 2])  # the last entry, cut halfway
    first, second = Contents.read(journal).entries
    save = ln.Artifact.save

    def refuse_second(self, *args, **kwargs):
        if self.key == second.key:
            raise OperationalError("disk I/O error")
        return save(self, *args, **kwargs)

    with monkeypatch.context() as patched, caplog.at_level("WARNING", logger="lamin_lightning"):
        patched.setattr(ln.Artifact, "save", refuse_second)
        report = sync_here(dirpath)
        assert (report.published, report.pending) == (1, 2)  # the second, then the torn one (from its intent)
        contents = Contents.read(journal)  # the `done` line appended after the torn one is whole
        assert [e.id for e in contents.open_entries] == [second.id] and first.id in contents.done
    assert "skipped line" not in caplog.text  # a torn last line is expected: silent
    done = sync(dirpath)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "skipped line" not in done.stderr
    files = ckpt_files(dirpath)
    assert torn["path"] in files and len(files) == EPOCHS
    assert_published_once(dirpath, files)  # the torn entry's checkpoint too, with its bytes
    artifact = ln.Artifact.get(uid=f"{torn['id']}0000")  # as the fit would have published it: its uid and features
    values = artifact.features.get_values()
    assert (values["epoch"], values["is_last_model"]) == (EPOCHS - 1, True) and "score" in values
    assert journal_files(dirpath) == []


@pytest.mark.parametrize("content", [b"", b'{"lamin_lightning_jour', b'{"x": 1}\n'],
                         ids=["zero-length", "torn header", "no header"])
@pytest.mark.slow
def test_unreadable_journal_set_aside(tmp_path: Path, content: bytes) -> None:
    """2c. A journal without a readable header never stops a fit into its folder; it is set aside as `.unreadable`
    (kept), listed by `sync` with the reason (exit 2) until `--forget` deletes it."""
    use_test_instance()
    dirpath = tmp_path / "ckpts"
    (dirpath / ".lamin_lightning").mkdir(parents=True)
    bad = dirpath / ".lamin_lightning" / "20260101-000000-deadbeef.jsonl"
    bad.write_bytes(content)
    fit(dirpath)
    assert_published_once(dirpath)  # the fit set up and trained as if it were not there
    aside = bad.with_name(bad.name + ".unreadable")
    assert not bad.exists() and aside.read_bytes() == content  # kept, byte for byte
    reason = "is empty" if not content else "has no readable header"
    for _ in range(2):  # listed at every sync until it is forgotten
        done = run_sync(dirpath)
        assert done.returncode == 2, done.stdout + done.stderr[-3000:]
        assert f"unreadable: {aside} {reason}" in done.stdout, done.stdout
        assert "Traceback" not in done.stderr
    forgot = run_sync(dirpath, "--forget")
    assert forgot.returncode == 0, forgot.stdout + forgot.stderr[-3000:]
    assert f"forgotten: {aside}" in forgot.stdout and not aside.exists()
    assert run_sync(dirpath).returncode == 0
    assert_published_once(dirpath)


LIVE_FIT = """
import sys
from pathlib import Path
import lamin_lightning as ll
from lamin_lightning.testing import TinyData, TinyModel, tiny_trainer
dirpath = Path(sys.argv[1])
callback = ll.Checkpoint(dirpath=dirpath, monitor="val_loss", save_top_k=2, save_last=True, every_n_epochs=1)
tiny_trainer(dirpath.parent, [callback], logger=False, max_epochs=12).fit(TinyModel(), TinyData())
"""


@pytest.mark.slow
def test_three_syncs_beside_a_live_fit(tmp_path: Path, monkeypatch) -> None:
    """7. Three `lamin-lightning sync DIR` at once, beside a live fit, over six pending journals: each journal is
    published by one of them, the others skip it; no crash, valid exit codes, nothing lost or duplicated."""
    use_test_instance()
    root = tmp_path / "runs"
    folders = [root / name / "ckpts" for name in ("a", "b", "c")]
    for dirpath in folders:
        for _ in range(2):  # two pending journals per folder (the second fit's setup replays the first in vain)
            pending_fit(dirpath, monkeypatch)
        assert len(journal_files(dirpath)) == 2
    expected = {dirpath: ckpt_files(dirpath) for dirpath in folders}
    script = tmp_path / "live_fit.py"
    script.write_text("from lamin_lightning.testing import NetworkGuard\nNetworkGuard().install()\n"
                      + textwrap.dedent(LIVE_FIT))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    live = root / "live" / "ckpts"
    fit_process = subprocess.Popen([sys.executable, str(script), str(live)], env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
    syncs = [subprocess.Popen([str(BIN / "lamin-lightning"), "sync", str(root)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [(s.wait(timeout=300), *s.communicate()) for s in syncs]
    fit_out, fit_err = fit_process.communicate(timeout=300)
    assert fit_process.returncode == 0, fit_err[-3000:]
    for code, out, err in results:
        assert "Traceback" not in err and "FileNotFoundError" not in err, err[-3000:]
        assert code in (0, 1), out + err[-3000:]  # 1 only if LaminDB refused a write (a busy SQLite)
        assert re.search(r"^published \d+; \d+ still pending; 0 abandoned$", out, re.MULTILINE), out
    published = sum(int(re.search(r"^published (\d+);", out, re.MULTILINE)[1]) for _, out, _ in results)
    assert published >= sum(map(len, expected.values()))  # each checkpoint of the six journals, once
    final = run_sync(root)
    assert final.returncode == 0, final.stdout + final.stderr[-3000:]
    for dirpath, files in expected.items():
        assert_published_once(dirpath, files)
        assert journal_files(dirpath) == []
    assert_published_once(live)
    assert journal_files(live) == []


KILLED_AT = {  # write number (1: epoch=0, 2: last.ckpt, 3: epoch=1, 4: last.ckpt again) and what is on disk at the kill
    "top-k file cut short": (3, "cut"),
    "old last.ckpt unchanged": (4, "before"),
    "top-k file complete": (3, "after"),
    "last.ckpt complete": (4, "after"),
    "best.ckpt relinked": (3, "linked"),  # each save is the best (monitor="step", mode="max"): killed once relinked
    "top-k file complete, AsyncCheckpointIO": (3, "after"),  # killed on the IO thread, once the file is complete
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(KILLED_AT))
def test_kill_between_intent_and_entry(tmp_path: Path, case: str) -> None:
    """2b. A real fit SIGKILLed at its third or fourth write, before, during or just after Lightning writes the file
    (before the entry line), or just after it points best.ckpt at the new best: `sync` publishes exactly what Lightning left complete, once, with the fit's features; a
    file cut short stays unpublished, with one warning; an unchanged last.ckpt keeps its published epoch."""
    use_test_instance()
    import lamindb as ln

    write, when = KILLED_AT[case]
    dirpath = tmp_path / "ckpts"
    killed = run_script(f'''
        import io, os, signal
        import torch
        from lightning.pytorch.plugins.io import AsyncCheckpointIO, TorchCheckpointIO
        import lamin_lightning as ll
        from lamin_lightning.testing import TinyData, TinyModel, tiny_trainer, use_test_instance
        use_test_instance()

        class KilledIO(TorchCheckpointIO):
            "Lightning's IO, killed at write {write}: before it, halfway through it, or once it is complete."
            writes = 0
            def save_checkpoint(self, checkpoint, path, storage_options=None):
                KilledIO.writes += 1
                if KilledIO.writes == {write} and {when!r} == "before":
                    os.kill(os.getpid(), signal.SIGKILL)
                if KilledIO.writes == {write} and {when!r} == "cut":
                    buffer = io.BytesIO(); torch.save(checkpoint, buffer)
                    with open(path, "wb") as file:
                        file.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                    os.kill(os.getpid(), signal.SIGKILL)
                super().save_checkpoint(checkpoint, path, storage_options)
                if KilledIO.writes == {write} and {when!r} == "after":
                    os.kill(os.getpid(), signal.SIGKILL)

        link = ll.Checkpoint._link_checkpoint
        def killed_link(trainer, filepath, linkpath):
            link(trainer, filepath, linkpath)
            if linkpath.endswith("best.ckpt") and KilledIO.writes == {write}:
                os.kill(os.getpid(), signal.SIGKILL)
        ll.Checkpoint._link_checkpoint = staticmethod(killed_link)
        best = dict(save_best=True, monitor="step", mode="max") if {when!r} == "linked" else dict(monitor="val_loss")
        callback = ll.Checkpoint(dirpath={str(dirpath)!r}, save_top_k=-1, save_last=True, every_n_epochs=1, **best)
        io_ = AsyncCheckpointIO(KilledIO()) if {"Async" in case!r} else KilledIO()
        tiny_trainer({str(tmp_path)!r}, [callback], logger=False, max_epochs=3, plugins=[io_]).fit(
            TinyModel(), TinyData())
        print("not killed")
        ''', cwd=tmp_path)
    assert killed.returncode == -9, killed.stdout + killed.stderr[-3000:]
    prefix = f"{dirpath}/checkpoints/"
    before = {a.key.removeprefix(prefix): a.features.get_values()["epoch"] for a in ln.Artifact.filter(key__startswith=prefix)}
    published = {"epoch=0-step=2.ckpt": 0, "last.ckpt": 0, **({"epoch=1-step=4.ckpt": 1} if write == 4 else {}),
                 **({"epoch=1-step=4.ckpt": 1, "best.ckpt": 0} if when == "linked" else {})}
    if "Async" in case:  # published in the background: some of them, by the kill
        assert before.items() <= published.items()
    else:
        assert before == published
    (journal,) = journal_files(dirpath)  # the intent of the killed write, and nothing after it
    done = sync(dirpath)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stdout + done.stderr[-3000:]
    assert journal_files(dirpath) == []
    after = {a.key.removeprefix(prefix): (a.features.get_values()["epoch"], Path(a.path).read_bytes())
             for a in ln.Artifact.filter(key__startswith=prefix)}  # one current artifact per key
    assert len(after) == ln.Artifact.filter(key__startswith=prefix).count()
    epochs = {name: epoch for name, (epoch, _) in after.items()}
    if when == "cut":
        assert epochs == {"epoch=0-step=2.ckpt": 0, "last.ckpt": 0}  # the cut file is not published
        assert "epoch=1-step=4.ckpt was being written when its fit stopped and is incomplete" in done.stderr
        assert (dirpath / "epoch=1-step=4.ckpt").exists()  # and stays on disk
    elif when == "linked":  # best.ckpt's current artifact: the new best's bytes and epoch
        assert epochs == {"epoch=0-step=2.ckpt": 0, "epoch=1-step=4.ckpt": 1, "last.ckpt": 0, "best.ckpt": 1}
    elif when == "before":
        assert epochs == {"epoch=0-step=2.ckpt": 0, "epoch=1-step=4.ckpt": 1, "last.ckpt": 0}
        assert "incomplete" not in done.stderr  # nothing was written: nothing to say
    else:
        assert epochs == {"epoch=0-step=2.ckpt": 0, "epoch=1-step=4.ckpt": 1, "last.ckpt": 1 if write == 4 else 0}
        assert after["epoch=1-step=4.ckpt" if write == 3 else "last.ckpt"][1] == \
            (dirpath / ("epoch=1-step=4.ckpt" if write == 3 else "last.ckpt")).read_bytes()
    for name, (_, data) in after.items():
        assert data == (dirpath / name).read_bytes(), name  # each key's current artifact holds the bytes on disk
