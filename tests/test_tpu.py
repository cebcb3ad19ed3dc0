"""tpu/pod.py --dry-run prints the exact gcloud commands (nothing runs)."""
import os
import shlex
import subprocess
import sys

from lmx.scale import distributed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = ["--name", "lmx-pod", "--zone", "us-central2-b", "--project", "proj", "--dry-run"]
TPU = ["gcloud", "compute", "tpus", "tpu-vm"]
WHERE = ["lmx-pod", "--zone=us-central2-b", "--project=proj"]


def _dry(action, *args):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tpu", "pod.py"), action, *BASE,
                          *args],
                         capture_output=True, text=True, check=True).stdout
    return [shlex.split(line) for line in out.splitlines()]


def test_create_and_delete():
    assert _dry("create", "--accelerator", "v4-32", "--spot") == [
        TPU + ["create", *WHERE, "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base",
               "--spot"]]
    assert _dry("delete") == [TPU + ["delete", *WHERE, "--quiet"]]


def test_setup_ships_this_checkout_to_every_worker():
    archive, scp, install, mount = _dry("setup", "--bucket", "my-bucket")
    assert archive == ["git", "archive", "--format=tar.gz", "--output=/tmp/lmx.tar.gz", "HEAD"]
    assert scp == TPU + ["scp", "/tmp/lmx.tar.gz", "lmx-pod:~/lmx.tar.gz", "--worker=all",
                         "--zone=us-central2-b", "--project=proj"]
    assert install[:9] == TPU + ["ssh", *WHERE, "--worker=all"]
    # the README's TPU VM install: the locked versions plus the [tpu] extra (jax[tpu], libtpu)
    assert "pip install -q -c requirements/lock.txt -e '.[tpu]' -f " in install[9]
    assert mount[8:] == ["--worker=all", "--command=mkdir -p ~/bucket && (mountpoint -q "
                         "~/bucket || gcsfuse --implicit-dirs my-bucket ~/bucket)"]


def test_run_starts_the_launcher_on_all_workers_and_logs_follow_worker_0():
    (run,) = _dry("run", "--config", "experiments/banking77_lora.py", "--workdir",
                  "/home/me/bucket/runs/b77", "--", "--config.train.batch_size=256")
    assert run[:9] == TPU + ["ssh", *WHERE, "--worker=all"]
    assert run[9] == (
        "--command=cd ~/lmx && LMX_DISTRIBUTED=1 nohup .venv/bin/python -m lmx.main "
        "--config=experiments/banking77_lora.py --workdir=/home/me/bucket/runs/b77 "
        "--config.train.batch_size=256 > ~/lmx-run.log 2>&1 < /dev/null &")
    (logs,) = _dry("logs")
    assert logs == TPU + ["ssh", *WHERE, "--worker=0", "--command=tail -n 100 -F ~/lmx-run.log"]


def test_cluster_detection_from_the_environment():
    assert distributed.cluster_from_env({}) == ""
    assert distributed.cluster_from_env({"LMX_DISTRIBUTED": "1"}) == "auto"
    assert distributed.cluster_from_env({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}) == "slurm"
    assert distributed.cluster_from_env({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) == ""
    assert distributed.cluster_from_env({"TPU_WORKER_HOSTNAMES": "a,b"}) == "tpu"
    assert distributed.cluster_from_env({"JAX_COORDINATOR_ADDRESS": "h:1"}) == "env"
