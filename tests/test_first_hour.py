"""What a newcomer meets in a fresh process: one-line errors that say what to do, and a console without lamindb's
set-up noise. Each case runs in a fresh Python, as a user's script would, with the network refused."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(code: str, cwd: Path, env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    script = cwd / "script.py"
    script.write_text(textwrap.dedent(code))
    return subprocess.run([sys.executable, str(script)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def fresh_env(tmp_path: Path) -> dict[str, str]:
    "No instance, settings in `tmp_path` (a fresh HOME for LaminDB)."
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMIN_")}
    env["LAMIN_SETTINGS_DIR"] = env["LAMIN_LIGHTNING_TEST"] = str(tmp_path / "settings")
    env["LAMIN_CACHE_DIR"] = str(tmp_path / "settings" / "cache")
    return env


def test_calls_without_instance_say_what_waits_for_one(tmp_path: Path) -> None:
    "No instance: `save_lightning_features`, `checkpoints`, a `lamin://` load: one line each, worded for the call."
    done = run("""
        from lamin_lightning.testing import NetworkGuard, TinyModel
        guard = NetworkGuard().install()
        import lamin_lightning as ll
        for name, call in (("features", ll.save_lightning_features), ("table", lambda: ll.checkpoints("runs/x")),
                           ("load", lambda: TinyModel.load_from_checkpoint("lamin://runs/x@best"))):
            try:
                call()
            except RuntimeError as error:  # NoInstance
                chained = error.__cause__ is not None or error.__context__ is not None
                print(f"{name}|{chained}|{error}")
        print("NETWORK", len(guard.attempts))
    """, tmp_path, fresh_env(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    lines = {line.split("|")[0]: line.split("|")[1:] for line in done.stdout.splitlines() if "|" in line}
    assert set(lines) == {"features", "table", "load"}, done.stdout + done.stderr[-3000:]
    for name, when in (("features", "before saving the features."), ("table", "before listing checkpoints."),
                       ("load", "before resolving lamin://runs/x@best.")):
        chained, message = lines[name]
        assert chained == "False", name  # raised by us, not at the end of a Django traceback
        assert message.startswith("No LaminDB instance is connected.") and "lamin init --storage" in message
        assert message.endswith(when) and "before training" not in message, message
    assert "NETWORK 0" in done.stdout


def test_fresh_instance_without_features(tmp_path: Path) -> None:
    "An instance where `save_lightning_features()` was never called: `@best` names the fix; then no type tip."
    done = run("""
        import sys
        from lamin_lightning.testing import NetworkGuard, TinyData, TinyModel, init_local_instance, tiny_trainer
        guard = NetworkGuard().install()
        init_local_instance("storage")
        import lamin_lightning as ll
        from lamin_lightning.references import ReferenceNotFound
        tiny_trainer(".", [ll.Checkpoint(dirpath="ckpts", monitor="val_loss")], logger=False).fit(TinyModel(), TinyData())
        for reference in ("lamin://ckpts@best", "lamin://ckpts@last"):
            try:
                TinyModel.load_from_checkpoint(reference)
            except ReferenceNotFound as error:
                print("REFUSED", error, flush=True)
        print("FEATURES-START", flush=True)
        ll.save_lightning_features()
        print("FEATURES-END", flush=True)
        print("NETWORK", len(guard.attempts))
    """, tmp_path, fresh_env(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    refused = [line for line in done.stdout.splitlines() if line.startswith("REFUSED")]
    assert len(refused) == 2, done.stdout + done.stderr[-3000:]
    for line, selector in zip(refused, ("best", "last")):
        assert f"no feature 'is_{selector}_model'" in line and "save_lightning_features()` once" in line, line
        assert "You can query either by available fields" not in line  # lamindb's 42 lines
    features = done.stdout.split("FEATURES-START")[1].split("FEATURES-END")[0]
    assert "tip:" not in features and "tip:" not in done.stderr, features  # "pass `type` to map feature …"
    assert "re-setting django" not in done.stdout + done.stderr
    assert "NETWORK 0" in done.stdout


def test_demo_console_has_no_django_reset(tmp_path: Path) -> None:
    "`make demo` on a fresh machine: the instance is made before lamindb is imported, so Django is set up once."
    env = fresh_env(tmp_path) | {"LAMIN_LIGHTNING_DEMO": str(tmp_path / "demo")}
    done = subprocess.run([sys.executable, str(HERE.parent / "demo.py")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Artifacts under" in done.stdout
    assert "re-setting django" not in done.stdout + done.stderr
