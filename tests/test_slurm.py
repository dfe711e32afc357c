"""Resume anywhere under a real scheduler: a one-node SLURM cluster on loopback (`slurm.py`), a training job submitted
with `sbatch --requeue --signal=USR1@N`, SLURM's USR1 sent to it, Lightning's `scontrol requeue`, the job released at
once (`scontrol update StartTime=now`), its scratch disk wiped by the job script: the second attempt resumes at the step
of the newest checkpoint LaminDB holds. Skipped, with the reason, where SLURM cannot be installed or started."""
import sys
import time
from pathlib import Path

import pytest

from lamin_lightning.testing import use_test_instance

from slurm import SlurmUnavailable, slurm_cluster
from test_resume import TRAIN, steps, wait_for


@pytest.fixture
def cluster():
    try:
        with slurm_cluster() as running:
            yield running
    except SlurmUnavailable as reason:
        pytest.skip(str(reason))


def state(cluster, job: str) -> str:
    return cluster.run("squeue", "-h", "-j", job, "-o", "%T", check=False).strip()


@pytest.mark.slow
def test_requeued_slurm_job_resumes_at_the_newest_checkpoint(cluster, tmp_path: Path) -> None:
    use_test_instance()
    import lamindb as ln

    tmp_path.chmod(0o755)
    scratch, log, out = tmp_path / "scratch", tmp_path / "train.log", tmp_path / "slurm.out"
    (tmp_path / "train.py").write_text(TRAIN)
    batch = tmp_path / "job.sh"
    batch.write_text(f"""#!/bin/bash
#SBATCH --requeue
#SBATCH --signal=USR1@50
#SBATCH --time=10
#SBATCH --open-mode=append
#SBATCH --output={out}
rm -rf {scratch}  # every attempt starts on a node whose scratch disk is empty
echo "attempt $SLURM_RESTART_COUNT of job $SLURM_JOB_ID"
srun {sys.executable} {tmp_path / 'train.py'} {scratch} {log} 120
""")
    job = cluster.run("sbatch", "--parsable", str(batch), timeout=30).strip().split(";")[0]
    try:
        wait_for(lambda: "step 12" in steps(log), 120, f"step 12 of the first attempt\n{cluster.logs()}")
        cluster.run("scancel", "--signal=USR1", job)  # what --signal=USR1@50 sends before the time limit
        signalled = time.monotonic()
        prefix = f"{scratch / 'ckpts'}/checkpoints"
        wait_for(lambda: ln.Artifact.filter(key=f"{prefix}/hpc_ckpt_1.ckpt").exists(), 20, "the hpc checkpoint")
        published = time.monotonic()
        wait_for(lambda: state(cluster, job) == "PENDING", 60, "the requeued job")  # Lightning's scontrol requeue
        print(f"real SLURM: signal -> published {published - signalled:.3f} s")
        assert "Restarts=1" in cluster.run("scontrol", "show", "job", job)
        cluster.run("scontrol", "update", f"jobid={job}", "StartTime=now")
        wait_for(lambda: state(cluster, job) == "", 180, f"the second attempt to finish\n{out.read_text()}")
    finally:
        cluster.run("scancel", job, check=False)
    hpc = ln.Artifact.get(key=f"{prefix}/hpc_ckpt_1.ckpt")
    hpc_step = hpc.features.get_values()["step"]
    assert hpc.run.reference == job and hpc.description == "preemption checkpoint"
    starts = [line for line in steps(log) if line.startswith("start")]
    assert starts == ["start 0", f"start {hpc_step}"], (steps(log), out.read_text())
    assert steps(log)[-1] == "done" and "attempt 1 of job" in out.read_text()
    resumed = ln.Artifact.filter(key=f"{prefix}/last.ckpt", run__reference=job).order_by("-created_at").first()
    assert resumed.run != hpc.run and resumed.features.get_values()["step"] == 120
    assert list(resumed.run.input_artifacts.values_list("uid", flat=True)) == [hpc.uid]
