"""The GPU check runs (at tiny sizes, on the CPU) and writes its table: what a GPU run will execute, minus the sizes."""
import subprocess
import sys

from tinyldm.config import REPO_ROOT


def test_the_gpu_check_runs_at_tiny_size_on_the_cpu(tmp_path):
    out = tmp_path / "gpu_check.md"
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--tiny", "--no-compile", "--threads", "1",
                           "--out", str(out)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                          env={"TINYLDM_BUILD": str(tmp_path / "build"), "PATH": "/usr/bin:/bin",
                               "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    table = out.read_text()
    for row in ("course class UNet, train_diffusion bf16", "course UNet: tinyldm, eager", "course UNet: diffusers, eager",
                "SD v1 UNet 256 px: tinyldm, eager", "SD v1 UNet 512 px: diffusers, eager",
                "sampling 32 px: tinyldm generate", "sampling 32 px: diffusers"):
        assert row in table, row
    assert "FAILED" not in table


def test_retrain_course_runs_its_whole_path_at_tiny_size(tmp_path, monkeypatch):
    import json

    from tinyldm.cli import main

    monkeypatch.setattr("tinyldm.recipes.BUILD_DIR", tmp_path / "build")
    assert main(["retrain-course", "--tiny", "--device", "cpu", "--out", str(tmp_path / "gpu")]) == 0
    results = json.loads((tmp_path / "gpu" / "results.json").read_text())
    assert set(results) == {"autoencoder-course", "text-scenes", "unet-course", "unet-class", "unet-text",
                            "unet-retrieval"}
    assert "all" in results["unet-class"] and "held_out" in results["unet-text"]
    assert (tmp_path / "gpu" / "unet-retrieval.safetensors").exists()
