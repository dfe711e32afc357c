"""Sharded checkpoints of the strategies that need CUDA: `FSDPStrategy(state_dict_type="sharded")` and
`DeepSpeedStrategy(stage=2)`, on every GPU there is (at most 2), in real subprocesses (`sharded_app.py`). Each kept
folder is one folder artifact with all its files, and `fit(ckpt_path="lamin://…@last")` resumes from it. Without
CUDA (Lightning's FSDPStrategy refuses CPU; DeepSpeed needs CUDA) or without the `deepspeed` package they skip, saying
why; `bench/gpu_check.sh` runs them on a GPU machine."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lamin_lightning.testing import use_test_instance

APP = Path(__file__).with_name("sharded_app.py")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


needs_cuda = pytest.mark.skipif(not _cuda(), reason="needs CUDA: Lightning's FSDPStrategy refuses CPU and DeepSpeed "
                                                     "needs CUDA; run bench/gpu_check.sh on a GPU machine")


def run_app(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run([sys.executable, str(APP), *args], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@needs_cuda
@pytest.mark.parametrize("strategy", ["fsdp", "deepspeed"])
def test_gpu_sharded_folders_are_folder_artifacts_and_resume(tmp_path: Path, strategy: str) -> None:
    if strategy == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        pytest.skip("needs the deepspeed package (not a dependency of lamin_lightning): pip install deepspeed")
    use_test_instance()
    import lamindb as ln

    dirpath = tmp_path / "ckpts"
    run_app(tmp_path, str(dirpath), "--strategy", strategy)
    folders = {p.name: p for p in dirpath.glob("*.ckpt")}
    assert folders and all(p.is_dir() for p in folders.values()), folders  # the strategy wrote folders
    artifacts = {Path(a.key).name: a for a in ln.Artifact.filter(key__startswith=f"{dirpath}/checkpoints/")}
    assert set(artifacts) == set(folders)
    for name, folder in folders.items():
        files = [p for p in folder.rglob("*") if p.is_file()]
        assert (artifacts[name].n_files, artifacts[name].size) == (len(files), sum(p.stat().st_size for p in files))
    assert sum(a.features.get_values()["is_last_model"] for a in artifacts.values()) == 1
    resumed = tmp_path / "resumed"
    result = run_app(tmp_path, str(resumed), "--strategy", strategy, "--epochs", "4",
                     "--ckpt-path", f"lamin://{dirpath}/checkpoints@last")
    assert "global_step=8" in result.stdout and "epoch=3-step=8.ckpt" in {p.name for p in resumed.glob("*.ckpt")}
    assert ln.Artifact.get(key=f"{dirpath}/checkpoints/last.ckpt") in \
        ln.Artifact.get(key=f"{resumed}/checkpoints/last.ckpt").run.input_artifacts.all()


from test_object_storage import folder_md5, s3, s3_folders, sharded_env  # noqa: E402,F401  (`s3`: moto's server)


@needs_cuda
@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["fsdp", "deepspeed"])
def test_gpu_sharded_folders_in_s3(s3: dict, tmp_path: Path, strategy: str) -> None:
    """The same strategies with `dirpath="s3://runs/gpu-…"` (moto's server on loopback): S3 holds each kept folder,
    each is one folder artifact with the same files and bytes, and a resume by reference goes on from it."""
    if strategy == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        pytest.skip("needs the deepspeed package (not a dependency of lamin_lightning): pip install deepspeed")
    use_test_instance()
    import lamindb as ln

    url = f"s3://runs/gpu-{strategy}"

    def fit(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, str(APP), *args, "--strategy", strategy], cwd=tmp_path,
                              env=sharded_env(s3), capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    fit(url)
    objects = s3_folders(s3, f"gpu-{strategy}")
    artifacts = {Path(a.key).name: a for a in ln.Artifact.filter(key__startswith=f"{url}/checkpoints/")}
    assert objects and set(artifacts) == set(objects), (sorted(objects), sorted(artifacts))
    for name, artifact in artifacts.items():
        stored = Path(artifact.path)
        files = {p.relative_to(stored).as_posix(): p for p in stored.rglob("*") if p.is_file()}
        assert artifact.n_files == len(files) == len(objects[name]) and set(files) == set(objects[name]), name
    result = fit(str(tmp_path / "resumed"), "--epochs", "4", "--ckpt-path", f"lamin://{url}/checkpoints@last")
    assert "global_step=8" in result.stdout, result.stdout
