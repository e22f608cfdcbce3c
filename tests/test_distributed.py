"""Training on several processes (torchrun, DistributedDataParallel over gloo on the CPU): two processes train what
one process trains with the same batches and random numbers, and a killed distributed run resumes."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tinyldm.autoencoder import Autoencoder, AutoencoderConfig
from tinyldm.cli import main
from tinyldm.train import StepBatches
from tinyldm.unet import UNet


@pytest.fixture
def build(tmp_path, monkeypatch):
    monkeypatch.setattr("tinyldm.recipes.BUILD_DIR", tmp_path / "build")
    torch.manual_seed(0)
    Autoencoder(AutoencoderConfig.tiny()).save(tmp_path / "ae.safetensors")
    return tmp_path


def args(build, run, steps=6, extra=()):
    return ["train-diffusion", "--preset", "tiny", "--condition", "class", "--autoencoder", str(build / "ae.safetensors"),
            "--n-images", "24", "--batch-size", "8", "--steps", str(steps), "--ckpt-every", "2", "--warmup", "2",
            "--sample-every", "0", "--device", "cpu", "--run-dir", str(build / run),
            "--out", str(build / run / "model.safetensors"), *extra]


def torchrun(build, cli_args, wait=True):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "tinyldm.cli",
           *cli_args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TINYLDM_BUILD": str(build / "build")}
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def weights(path):
    return UNet.load(path).state_dict()


def test_chunks_of_a_step_are_the_single_process_batches_cut_up():
    whole = list(StepBatches(50, 8, seed=3, start_step=2, steps=3, chunks=1))
    cut = list(StepBatches(50, 4, seed=3, start_step=2, steps=3, chunks=2))
    ranks = [list(StepBatches(50, 2, seed=3, start_step=2, steps=3, chunks=4, take=[2 * r, 2 * r + 1]))
             for r in range(2)]
    for step in range(3):
        assert cut[2 * step] + cut[2 * step + 1] == whole[step]
        assert sum((ranks[r][2 * step] + ranks[r][2 * step + 1] for r in range(2)), []) == whole[step]


def test_two_processes_train_what_one_process_trains(build):
    torchrun(build, args(build, "ddp"))
    assert main(args(build, "one", extra=["--grad-accum", "2"])) == 0  # one process, the same two chunks per step
    ddp, one = weights(build / "ddp" / "model.safetensors"), weights(build / "one" / "model.safetensors")
    for name in one:
        torch.testing.assert_close(ddp[name], one[name], rtol=1e-4, atol=2e-5, msg=name)
    # the run was distributed: its state holds the run's two chunks' worth of batch
    assert torch.load(build / "ddp" / "last.pt", weights_only=True)["step"] == 6


def test_a_killed_distributed_run_resumes_where_it_was(build):
    steps = 40
    torchrun(build, args(build, "whole", steps))
    run = build / "killed"
    proc = torchrun(build, args(build, "killed", steps), wait=False)
    deadline = time.time() + 300
    while not (run / "last.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # mid-run: after its first checkpoint, long before its last step
    proc.wait()
    assert not (run / "model.safetensors").exists(), "the run finished before it could be killed"
    killed_at = torch.load(run / "last.pt", weights_only=True)["step"]
    assert 0 < killed_at < steps
    torchrun(build, args(build, "killed", steps))  # the same command again: it resumes
    resumed, whole = weights(run / "model.safetensors"), weights(build / "whole" / "model.safetensors")
    for name in whole:
        torch.testing.assert_close(resumed[name], whole[name], rtol=0, atol=0, msg=name)
