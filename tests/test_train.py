import math

import pytest
import torch
from torch import nn

from tinyldm.autoencoder import Autoencoder, AutoencoderConfig, autoencoder_loss
from tinyldm.checkpoint import CheckpointError, load_training_state
from tinyldm.data import Scenes
from tinyldm.train import StepBatches, TrainConfig, Trainer, TrainingDiverged


def tiny_ae():
    torch.manual_seed(0)
    return Autoencoder(AutoencoderConfig(base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                                         mid_attention=False))


DATA = Scenes(size=32, length=24, seed=3)
CFG = dict(batch_size=4, lr=1e-3, warmup_steps=2, progress=False, ema_decay=0.9)


def deterministic_loss(model, batch, generator):
    x = batch["image"]
    return (model.decode(model.encode(x).mode()) - x).pow(2).mean(), {}


def test_loss_goes_down_on_one_batch():
    data = Scenes(size=32, length=4, seed=1)
    config = TrainConfig(steps=80, **{**CFG, "lr": 3e-3})
    history = Trainer(tiny_ae(), autoencoder_loss, data, config, device="cpu").fit()
    assert history[-1]["loss"] < 0.3 * history[0]["loss"]
    assert {"loss", "lr", "rec", "kl", "psnr", "grad_norm", "step"} <= set(history[-1])


def test_resume_equals_uninterrupted(tmp_path):
    # autoencoder_loss samples z ~ q(z|x): the random numbers must also line up after resuming
    full = Trainer(tiny_ae(), autoencoder_loss, DATA, TrainConfig(steps=6, **CFG), device="cpu")
    full.fit()

    first = Trainer(tiny_ae(), autoencoder_loss, DATA, TrainConfig(steps=6, ckpt_every=3, **CFG),
                    out_dir=tmp_path, device="cpu")
    first.fit(steps=3)  # "killed" after step 3; last.pt holds step 3
    second = Trainer(tiny_ae(), autoencoder_loss, DATA, TrainConfig(steps=6, ckpt_every=3, **CFG),
                     out_dir=tmp_path, device="cpu", resume=True)
    assert second.step == 3
    second.fit()

    assert [h["loss"] for h in second.history] == [h["loss"] for h in full.history]
    for a, b in zip(second.model.state_dict().values(), full.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(second.ema.state_dict().values(), full.ema.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_gradient_accumulation_equals_full_batch():
    runs = []
    for accum in (1, 2, 4):
        t = Trainer(tiny_ae(), deterministic_loss, DATA,
                    TrainConfig(steps=1, grad_accum=accum, grad_clip=None, **CFG), device="cpu")
        t.fit()
        runs.append(t)
    for other in runs[1:]:
        assert other.history[0]["loss"] == pytest.approx(runs[0].history[0]["loss"], rel=1e-6)
        # compare the gradients, not the weights after an Adam step: Adam divides by |g|, which turns
        # float rounding in the near-zero gradients of biases before a GroupNorm into sign flips
        for a, b in zip(other.model.parameters(), runs[0].model.parameters()):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-6)


def test_diverging_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    def explodes_at_step_4(model, batch, generator):
        loss, logs = deterministic_loss(model, batch, generator)
        return (loss * math.nan if explodes_at_step_4.calls >= 3 else loss), logs
    explodes_at_step_4.calls = 0

    class Count:
        def __call__(self, trainer, step):
            explodes_at_step_4.calls = step

    trainer = Trainer(tiny_ae(), explodes_at_step_4, DATA, TrainConfig(steps=10, ckpt_every=1, **CFG),
                      out_dir=tmp_path, device="cpu", callbacks=[Count()])
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 4 .*last good checkpoint is kept"):
        trainer.fit()
    assert load_training_state(tmp_path / "last.pt")["step"] == 3


def test_step_batches_are_a_function_of_seed_and_step():
    full = list(StepBatches(10, 4, seed=5, start_step=0, steps=6))
    tail = list(StepBatches(10, 4, seed=5, start_step=3, steps=3))
    assert full[3:] == tail
    flat = sum(full, [])
    assert sorted(flat[:10]) == list(range(10))  # each epoch is a permutation
    assert flat[:10] != flat[10:20]  # and a new one every epoch


def test_bad_train_config():
    with pytest.raises(ValueError, match=r"batch_size \(6\) must be divisible by grad_accum \(4\)"):
        TrainConfig(batch_size=6, grad_accum=4)
    with pytest.raises(ValueError, match="precision must be 'fp32' or 'bf16', got 'fp8'"):
        TrainConfig(precision="fp8")
    with pytest.raises(ValueError, match=r"cooldown_steps must be in 0..steps \(10\), got 11"):
        TrainConfig(steps=10, cooldown_steps=11)


def test_lr_schedule_warmup_stable_cooldown():
    config = TrainConfig(steps=10, lr=1.0, warmup_steps=4, cooldown_steps=5, progress=False)
    lrs = [Trainer(nn.Linear(1, 1), deterministic_loss, DATA, config, device="cpu").lr_at(s) for s in range(10)]
    # warm-up: (s + 1) / 4; constant; cool-down: (10 - s) / 5, reaching 0.2 at the last step (not 0: a step
    # with lr 0 would be wasted)
    assert lrs == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 0.8, 0.6, 0.4, 0.2])
    no_cooldown = TrainConfig(steps=10, lr=1.0, warmup_steps=0, progress=False)
    assert Trainer(nn.Linear(1, 1), deterministic_loss, DATA, no_cooldown, device="cpu").lr_at(9) == 1.0


def test_resume_with_cooldown_added_equals_uninterrupted(tmp_path):
    # the lr is constant before the cool-down, so a run trained without one can be extended with one
    full = Trainer(tiny_ae(), autoencoder_loss, DATA, TrainConfig(steps=6, cooldown_steps=3, **CFG), device="cpu")
    full.fit()
    first = Trainer(tiny_ae(), autoencoder_loss, DATA, TrainConfig(steps=3, ckpt_every=3, **CFG),
                    out_dir=tmp_path, device="cpu")
    first.fit()
    second = Trainer(tiny_ae(), autoencoder_loss, DATA, TrainConfig(steps=6, cooldown_steps=3, **CFG),
                     out_dir=tmp_path, device="cpu", resume=True)
    second.fit()
    assert [h["lr"] for h in second.history] == [h["lr"] for h in full.history]
    for a, b in zip(second.model.state_dict().values(), full.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_nan_before_the_first_checkpoint_says_so_and_names_the_data(tmp_path):
    def nan_loss(model, batch, generator):
        return deterministic_loss(model, batch, generator)[0] * math.nan, {}
    trainer = Trainer(tiny_ae(), nan_loss, DATA, TrainConfig(steps=4, ckpt_every=2, **CFG), out_dir=tmp_path,
                      device="cpu")
    with pytest.raises(TrainingDiverged) as info:
        trainer.fit()
    message = str(info.value)
    assert "at step 1" in message and "no checkpoint was written yet (the first comes at step 2)" in message
    assert "out_dir" not in message and "check the data" in message
    without = Trainer(tiny_ae(), nan_loss, DATA, TrainConfig(steps=4, **CFG), device="cpu")
    with pytest.raises(TrainingDiverged, match="give the Trainer an out_dir to keep one"):
        without.fit()


def test_resuming_another_runs_state_names_the_file_the_difference_and_restart(tmp_path):
    Trainer(tiny_ae(), autoencoder_loss, DATA, TrainConfig(steps=1, **CFG), out_dir=tmp_path, device="cpu").fit()
    wider = Autoencoder(AutoencoderConfig(base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                                          mid_attention=False))
    with pytest.raises(CheckpointError) as info:
        Trainer(wider, autoencoder_loss, DATA, TrainConfig(steps=2, **CFG), out_dir=tmp_path, device="cpu",
                resume=True)
    message = str(info.value)
    assert str(tmp_path / "last.pt") in message and "model base_channels: 8 there, 16 now" in message
    assert "--restart" in message and len(message.splitlines()) == 1  # no dump of state-dict keys
    with pytest.raises(CheckpointError, match=r"trained with batch_size=4 and this run asks for batch_size=8"):
        Trainer(tiny_ae(), autoencoder_loss, DATA, TrainConfig(steps=2, **{**CFG, "batch_size": 8}),
                out_dir=tmp_path, device="cpu", resume=True)


def test_a_kill_during_a_checkpoint_write_leaves_nothing_behind_on_the_next_start(tmp_path):
    Trainer(tiny_ae(), autoencoder_loss, DATA, TrainConfig(steps=1, **CFG), out_dir=tmp_path, device="cpu").fit()
    orphan = tmp_path / ".last.pt.x1y2z3.tmp"  # what atomic_path leaves when the process dies mid-write
    orphan.write_bytes(b"half a checkpoint")
    trainer = Trainer(tiny_ae(), autoencoder_loss, DATA, TrainConfig(steps=2, **CFG), out_dir=tmp_path,
                      device="cpu", resume=True)
    assert not orphan.exists() and trainer.step == 1


def test_bf16_autocast_trains_on_the_cpu():
    config = TrainConfig(steps=3, precision="bf16", **CFG)
    trainer = Trainer(tiny_ae(), deterministic_loss, DATA, config, device="cpu")
    seen = []
    original = trainer.loss_fn

    def spy(model, batch, generator):
        seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        return original(model, batch, generator)
    trainer.loss_fn = spy
    history = trainer.fit()
    assert all(seen) and len(seen) == 3
    assert all(math.isfinite(h["loss"]) for h in history)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # the weights stay fp32
    fp32 = Trainer(tiny_ae(), deterministic_loss, DATA, TrainConfig(steps=1, **CFG), device="cpu").fit()
    assert history[0]["loss"] == pytest.approx(fp32[0]["loss"], rel=0.05)  # same computation, lower precision
    assert history[0]["loss"] != fp32[0]["loss"]  # ... and it really ran in bf16


def test_worker_processes_give_the_same_run_as_the_main_process():
    runs = []
    for workers in (0, 2):
        t = Trainer(tiny_ae(), autoencoder_loss, DATA, TrainConfig(steps=3, num_workers=workers, **CFG),
                    device="cpu")
        t.fit()
        runs.append(t)
    assert [h["loss"] for h in runs[0].history] == [h["loss"] for h in runs[1].history]
    for a, b in zip(runs[0].model.state_dict().values(), runs[1].model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_the_gpu_options_run_on_the_cpu_and_train_the_same_model():
    """channels_last, torch.compile and reading the loss back every few steps change how a step runs, not what it
    computes: the same history and weights as the plain run, up to float rounding."""
    from tinyldm.schedule import NoiseSchedule
    from tinyldm.train import EpsLoss
    from tinyldm.unet import UNet, UNetConfig

    data = [{"latent": torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(i))} for i in range(16)]
    runs = []
    for options in ({}, {"channels_last": True, "compile": True, "log_every": 3}):
        torch.manual_seed(0)
        model = UNet(UNetConfig.tiny())
        tc = TrainConfig(steps=4, batch_size=4, warmup_steps=1, progress=False, **options)
        trainer = Trainer(model, EpsLoss(NoiseSchedule()), data, tc, device="cpu")
        trainer.fit()
        runs.append(trainer)
    plain, fast = runs
    assert [h["step"] for h in fast.history] == [1, 2, 3, 4]
    assert [h["loss"] for h in fast.history] == pytest.approx([h["loss"] for h in plain.history], rel=1e-4)
    for a, b in zip(fast.model.parameters(), plain.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
