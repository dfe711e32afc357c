"""`Checkpoint` against a LaminDB instance on a real PostgreSQL server (started by `tests/pg.py`), offline.

The LaminDB part runs in a fresh Python process (this file run as a script), so lamindb reads its own settings folder
and database at import; it prints one JSON line that the test checks here.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

RESULT = "LAMIN_LIGHTNING_PG_RESULT "
URL_VARIABLE = "LAMIN_LIGHTNING_PG_URL"


# --- the child process --------------------------------------------------------------------------------------------
def _fit(tmp: Path, name: str, **kwargs) -> dict:
    "One fit with a `Checkpoint` into `tmp/name`; what Lightning kept and what the database says about it."
    import lamindb as ln
    from django.db import connection

    import lamin_lightning as ll
    from lamin_lightning.testing import TinyData, TinyModel, tiny_trainer

    started = time.monotonic()
    callback = ll.Checkpoint(dirpath=name, monitor="val_loss", save_top_k=2, save_last=True, every_n_epochs=1,
                             **kwargs)
    tiny_trainer(tmp / f"{name}-root", [callback], logger=False, max_epochs=4).fit(TinyModel(), TinyData())
    prefix = f"{name}/checkpoints/"
    artifacts = ln.Artifact.filter(key__startswith=prefix)
    query = lambda **flag: sorted(a.key for a in ln.Artifact.filter(key__startswith=prefix).filter(**flag))  # noqa: E731
    with connection.cursor() as cursor:  # every record, whatever lamindb's default filters hide (trash, versions)
        cursor.execute(f"SELECT key FROM {ln.Artifact._meta.db_table} WHERE key LIKE %s ORDER BY key", [prefix + "%"])
        records = [key for (key,) in cursor.fetchall()]
    return dict(
        seconds=round(time.monotonic() - started, 1),
        prefix=prefix,
        records=records,
        best_model_path=callback.best_model_path,
        last_model_path=callback.last_model_path,
        best_k_models={path: float(score) for path, score in callback.best_k_models.items()},
        mode=callback.mode,
        on_disk=sorted(p.name for p in Path(callback.dirpath).glob("*.ckpt")),
        artifacts=[dict(key=a.key, values=a.features.get_values(), exists=Path(a.path).exists()) for a in artifacts],
        best_keys=query(is_best_model=True),
        last_keys=query(is_last_model=True),
    )


def child_main() -> None:
    from lamin_lightning.testing import NetworkGuard

    guard = NetworkGuard().install()  # first thing: only loopback (the database) may be reached
    tmp = Path.cwd()  # the parent runs us in a temporary folder: lamindb_setup marks the cwd with .lamin/
    import lamindb_setup as ln_setup

    started = time.monotonic()
    ln_setup.init(storage=str(tmp / "storage"), db=os.environ.pop(URL_VARIABLE))
    init_seconds = round(time.monotonic() - started, 1)
    import lamindb as ln

    import lamin_lightning as ll

    ll.save_lightning_features()
    result = dict(
        init_seconds=init_seconds,
        dialect=ln_setup.settings.instance.dialect,
        sync=_fit(tmp, "sync"),
        background=_fit(tmp, "background", async_publish=True),
        artifact_count=ln.Artifact.filter().count(),
        network_attempts=len(guard.attempts),
    )
    print(RESULT + json.dumps(result), flush=True)


# --- the test -----------------------------------------------------------------------------------------------------
def check_fit(fit: dict) -> None:
    "One artifact per kept checkpoint with the right flags and ranks; evicted checkpoints have none."
    name = lambda path: Path(path).name  # noqa: E731
    by_key: dict[str, list[dict]] = {}
    for artifact in fit["artifacts"]:
        by_key.setdefault(artifact["key"], []).append(artifact)
    checkpoints = {k: v for k, v in by_key.items() if k.endswith(".ckpt")}

    kept = {name(p) for p in fit["best_k_models"]} | {name(fit["last_model_path"])}
    assert len(fit["best_k_models"]) == 2 and name(fit["last_model_path"]) == "last.ckpt"
    assert set(fit["on_disk"]) == kept, fit["on_disk"]  # Lightning deleted the evicted files
    assert {fit["prefix"] + n for n in kept} == set(checkpoints), f"artifacts {sorted(checkpoints)}, kept {kept}"
    assert all(len(v) == 1 for v in checkpoints.values()), {k: len(v) for k, v in checkpoints.items()}
    assert all(a["exists"] for (a,) in checkpoints.values())
    assert sorted(fit["records"]) == sorted(a["key"] for a in fit["artifacts"])  # no retired version or trash left

    ordered = sorted(fit["best_k_models"], key=fit["best_k_models"].get, reverse=fit["mode"] == "max")
    rank = {name(path): r for r, path in enumerate(ordered)}  # 0 = best
    score = {name(path): value for path, value in fit["best_k_models"].items()}
    best = name(fit["best_model_path"])
    assert best == name(ordered[0])
    for key, (artifact,) in checkpoints.items():
        values, file = artifact["values"], key.rsplit("/", 1)[1]
        assert values.get("is_best_model") is (file == best), (key, values)
        assert values.get("is_last_model") is (file == "last.ckpt"), (key, values)
        assert values.get("model_rank") == rank.get(file), (key, values)  # last.ckpt: no rank
        if file in score:
            assert values.get("score") == pytest.approx(score[file]), (key, values)
    assert fit["best_keys"] == [fit["prefix"] + best]
    assert fit["last_keys"] == [fit["prefix"] + "last.ckpt"]


@pytest.mark.slow
def test_checkpoints_on_postgres(tmp_path: Path) -> None:
    from pg import child_env, postgres_or_skip, postgres_version

    with postgres_or_skip() as url:
        password = urlparse(url).password
        assert password
        work = tmp_path / "work"
        work.mkdir()
        env = child_env(tmp_path / "settings", URL_VARIABLE, url)
        started = time.monotonic()
        done = subprocess.run([sys.executable, str(Path(__file__).resolve())], cwd=work, env=env,
                              capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL)
        seconds = time.monotonic() - started

    output = done.stdout + done.stderr
    assert password not in output, "the database password appeared in the log output"
    assert done.returncode == 0, output[-6000:]
    (line,) = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    result = json.loads(line[len(RESULT):])
    print(f"\n{postgres_version()}; subprocess {seconds:.1f} s (init {result['init_seconds']} s, "
          f"fits {result['sync']['seconds']} s + {result['background']['seconds']} s)")
    assert result["dialect"] == "postgresql"
    assert result["network_attempts"] == 0
    check_fit(result["sync"])
    check_fit(result["background"])


if __name__ == "__main__":
    child_main()
