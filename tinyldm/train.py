"""One trainer for every network of the course (autoencoder, denoiser, text encoder).

It owns what every run needs and nothing model-specific: AdamW with linear warm-up, gradient
clipping, gradient accumulation, EMA weights, bf16 autocast on GPUs, a progress bar with the loss,
atomic checkpoints every ``ckpt_every`` steps, and resume. The model-specific part is a loss
function ``loss_fn(model, batch, generator) -> (loss, logs)``: for the denoiser it is Algorithm 1.

Resuming gives the same result as an uninterrupted run because nothing depends on hidden state:
the batch of step k is a function of (seed, k) (a fresh permutation of the data every epoch), and
the random numbers of step k come from generators seeded with (seed, k).

Several processes (``torchrun``, :mod:`tinyldm.distributed`) train as one: a step's batch is cut into
``grad_accum * world_size`` chunks, process r takes chunks r * grad_accum ... (r + 1) * grad_accum - 1, and chunk j
draws its random numbers from a generator seeded with (seed, k, j). So N processes with ``grad_accum = A`` take the
items and the random numbers that one process takes with ``grad_accum = N * A``, and DDP's averaged gradient is that
process's accumulated one: the same weights, up to the order of float sums.
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from . import distributed
from .checkpoint import FORMAT, CheckpointError, load_training_state, remove_stale_temporaries, save_training_state
from .config import autocast, default_device
from .schedule import NoiseSchedule

LossFn = Callable[[nn.Module, Any, torch.Generator], tuple[torch.Tensor, dict[str, float]]]
Callback = Callable[["Trainer", int], None]


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf or exceeded ``max_loss``; the last good checkpoint is kept."""


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 32  # images per optimizer step, summed over accumulation micro-batches
    lr: float = 2e-4
    warmup_steps: int = 100  # lr rises linearly from 0, which keeps Adam's first steps small
    # lr falls linearly to 0 over the last cooldown_steps (warmup-stable-decay): the weights settle into the
    # minimum the constant lr was bouncing around. Constant before that, so a constant-lr run can be resumed
    # with a cool-down added and end exactly where an uninterrupted run with the cool-down would.
    cooldown_steps: int = 0
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float | None = 1.0  # max global gradient norm; None turns clipping off
    grad_accum: int = 1  # micro-batches per step: batch_size / grad_accum images each
    ema_decay: float | None = 0.999  # None: no EMA copy
    precision: str = "fp32"  # "bf16": autocast matmuls/convs to bfloat16 (GPUs); weights stay fp32
    seed: int = 0
    ckpt_every: int = 500  # steps between checkpoints (and one at the end), when out_dir is set
    max_loss: float = 1e4  # a loss above this counts as exploded
    num_workers: int = 0  # DataLoader worker processes; 0 loads in the training process
    progress: bool = True
    # Read the loss back from the device every log_every steps (and before every checkpoint): one host sync per
    # log_every steps instead of one per micro-batch, which keeps a GPU busy; the history still has every step.
    # None: every step on a CPU (where reading back costs nothing), every 25 steps on a GPU.
    log_every: int | None = None
    # GPU speed: channels_last memory format for the convolutions, torch.compile, TF32 matmuls on CUDA. AdamW is
    # fused and the EMA a foreach update whenever the device allows.
    channels_last: bool = False
    compile: bool = False
    tf32: bool = True

    def __post_init__(self):
        if self.steps < 0 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError(f"steps >= 0, batch_size >= 1 and grad_accum >= 1 expected, got "
                             f"steps={self.steps}, batch_size={self.batch_size}, grad_accum={self.grad_accum}")
        if not 0 <= self.cooldown_steps <= self.steps:
            raise ValueError(f"cooldown_steps must be in 0..steps ({self.steps}), got {self.cooldown_steps}")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size ({self.batch_size}) must be divisible by grad_accum ({self.grad_accum})")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}")
        if self.log_every is not None and self.log_every < 1:
            raise ValueError(f"log_every must be None or >= 1, got {self.log_every}")
        self.adam_betas = tuple(self.adam_betas)

    @property
    def micro_batch(self) -> int:
        return self.batch_size // self.grad_accum


class EpsLoss:
    """Algorithm 1 of DDPM (training), one call per batch; the line numbers are the paper's.

        1: repeat
        2:   x_0 ~ q(x_0)                         (a batch of cached latents; with its condition y, if any)
        3:   t ~ Uniform({1, ..., T})
        4:   eps ~ N(0, I)
        5:   gradient step on  || eps - eps_theta(sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, t, y) ||^2
        6: until converged                      (the Trainer's loop)

    ``batch[x_key]`` holds x_0 ``[b, c, h, w]``. Without ``condition`` the model is called as ``model(x_t, t)``;
    with one (a :mod:`tinyldm.conditioning` condition) as ``model(x_t, t, **condition(batch, generator))``,
    where the condition replaces y by the null condition with probability p_uncond (classifier-free guidance).

    ``snr_gamma`` (off by default, so line 5 is the paper's): Min-SNR weighting (Hang et al. 2023), each item's
    squared error times min(snr_t, gamma) / snr_t. It stops the many easy low-noise steps (snr_t > gamma) from
    dominating the gradient, so the mid-noise steps, where shapes are decided, train faster.

    ``x0_cap`` (off by default): each item's squared error times clamp(1 / snr_t, 1, x0_cap). Where noise dominates
    (snr_t < 1), ||eps - eps_theta||^2 / snr_t is the error of the x_0 that eps_theta implies, so the loss there
    asks for a right x_0 (capped at x0_cap times the eps error), not only a right eps: an eps error of e at
    alpha_bar_t ~ 0 is an x_0 error of e / sqrt(snr_t). What is decided at high noise (the layout; for an inpainting
    model, that the fill continues the known part) otherwise weighs almost nothing in the plain loss.
    """

    def __init__(self, schedule: NoiseSchedule | None = None, x_key: str = "latent", condition=None,
                 snr_gamma: float | None = None, x0_cap: float | None = None):
        if snr_gamma is not None and not snr_gamma > 0:
            raise ValueError(f"snr_gamma must be None or > 0, got {snr_gamma}")
        if x0_cap is not None and not x0_cap >= 1:
            raise ValueError(f"x0_cap must be None or >= 1, got {x0_cap}")
        if snr_gamma is not None and x0_cap is not None:
            raise ValueError("snr_gamma and x0_cap are two weightings of the loss: give one of them")
        self.schedule = schedule or NoiseSchedule()
        self.x_key, self.condition, self.snr_gamma, self.x0_cap = x_key, condition, snr_gamma, x0_cap

    def __call__(self, model: nn.Module, batch: dict, generator: torch.Generator):
        x_0 = batch[self.x_key]                                                     # line 2
        t = self.schedule.sample_t(len(x_0), generator=generator, device=x_0.device)  # line 3
        eps = torch.randn(x_0.shape, generator=generator, device=x_0.device, dtype=x_0.dtype)  # line 4
        # line 2's y (the null condition with probability p_uncond), drawn last so t and eps are the same
        # random numbers as in the unconditional loss
        y = self.condition(batch, generator) if self.condition is not None else {}
        x_t = self.schedule.q_sample(x_0, t, eps)  # sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps
        error = (eps - model(x_t, t, **y).float()).pow(2)  # line 5 (in fp32 also under bf16 autocast)
        if self.snr_gamma is None and self.x0_cap is None:
            return error.mean(), {}
        snr = self.schedule.snr(t)
        if self.snr_gamma is not None:
            weight = snr.clamp(max=self.snr_gamma) / snr  # Min-SNR: 1 where snr_t <= gamma, gamma / snr_t above
        else:
            weight = (1 / snr).clamp(1, self.x0_cap)  # the x_0 error where noise dominates, capped
        return (weight.view(-1, *[1] * (error.ndim - 1)) * error).mean(), {}


def _model_config(model: nn.Module) -> dict | None:
    """The model's config as a plain dict, if it has one (the course's networks do)."""
    config = getattr(model, "config", None)
    return config.to_dict() if hasattr(config, "to_dict") else None


def _step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step) % 2**63


def _chunk_seed(seed: int, step: int, chunk: int) -> int:
    """The seed of chunk ``chunk`` of step ``step``'s batch: chunk 0 has the step's own seed."""
    return (_step_seed(seed, step) + chunk * 0x9E3779B97F4A7C15) % 2**63


class StepBatches(Sampler):
    """Yields the index batches of steps ``start, start + 1, ...``: a new permutation each epoch,
    fixed by (seed, epoch), so the batches of any step can be recomputed without replaying.

    Each step's batch is ``chunks`` chunks of ``batch_size`` items; the sampler yields the chunks ``take`` of every
    step (default: all), in order. A process of a distributed run takes its own chunks."""

    def __init__(self, n: int, batch_size: int, seed: int, start_step: int = 0, steps: int | None = None,
                 chunks: int = 1, take: list[int] | None = None):
        if n < 1:
            raise ValueError("the dataset is empty")
        self.n, self.batch_size, self.seed, self.start, self.steps = n, batch_size, seed, start_step, steps
        self.chunks, self.take = chunks, list(range(chunks)) if take is None else list(take)
        self._epoch, self._perm = -1, None

    def _index(self, position: int) -> int:
        epoch = position // self.n
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(_step_seed(self.seed, 10**9 + epoch))
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=g)
        return int(self._perm[position % self.n])

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start
        while self.steps is None or step < self.start + self.steps:
            for j in self.take:
                first = (step * self.chunks + j) * self.batch_size
                yield [self._index(p) for p in range(first, first + self.batch_size)]
            step += 1

    def __len__(self):
        if self.steps is None:
            raise TypeError("an endless sampler has no length")
        return self.steps * len(self.take)


def to_device(batch: Any, device: torch.device) -> Any:
    """Move the tensors of a (nested) batch to ``device``; leave strings and numbers alone."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


class Trainer:
    """Train ``model`` on ``dataset`` by minimising ``loss_fn``.

    ``out_dir`` (optional) receives ``last.pt`` (the training state) every ``ckpt_every`` steps; with
    ``resume=True`` an existing ``last.pt`` there is loaded and training continues from its step.
    ``callbacks`` are called as ``cb(trainer, step)`` after every optimizer step (for sample grids,
    exporting a model file, ...). ``history`` holds one dict per step: step, loss, lr, and the logs.

    Started by torchrun, the Trainer trains with DistributedDataParallel (see the module docstring): the model it
    holds stays the plain module (``self.net`` is what the loss calls), and only process 0 writes checkpoints, shows
    the progress bar and calls the callbacks.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, dataset: Dataset, config: TrainConfig | None = None,
                 out_dir: str | Path | None = None, device: str | torch.device | None = None,
                 resume: bool = False, callbacks: list[Callback] = (), collate_fn=None):
        self.config = c = config or TrainConfig()
        self.device = distributed.setup(device if device is not None else default_device())
        self.rank, self.world = distributed.rank(), distributed.world_size()
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = c.tf32
        self.model = model.to(self.device, memory_format=torch.channels_last if c.channels_last else
                              torch.contiguous_format)
        self.loss_fn, self.dataset, self.collate_fn = loss_fn, dataset, collate_fn
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.callbacks = list(callbacks)
        decay, no_decay = [], []
        for p in model.parameters():
            if p.requires_grad:
                # biases and norm gains are 1-D; decaying them only hurts (the usual AdamW practice)
                (decay if p.ndim >= 2 else no_decay).append(p)
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": c.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=c.lr, betas=c.adam_betas, fused=self.device.type == "cuda")
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False) if c.ema_decay is not None else None
        # what the loss calls: the model, in DDP across processes, compiled on request
        self.net = _DDP(self.model, device_ids=[self.device] if self.device.type == "cuda" else None) \
            if self.world > 1 else self.model
        if c.compile:
            self.net = torch.compile(self.net)
        self.step, self.history = 0, []
        if self.out_dir is not None:
            remove_stale_temporaries(self.out_dir)  # half-written files of a run killed while saving
        if resume and self.checkpoint_path is not None and self.checkpoint_path.exists():
            self.load_state(self.checkpoint_path)

    # -- state ------------------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path | None:
        return self.out_dir / "last.pt" if self.out_dir is not None else None

    def state_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "step": self.step, "model": self.model.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "optimizer": self.optimizer.state_dict(), "history": self.history,
                "train_config": asdict(self.config), "model_config": _model_config(self.model)}

    def save_state(self, path: str | Path | None = None) -> Path:
        """Write the training state atomically (process 0 of a distributed run; the others wait for it)."""
        path = path or self.checkpoint_path
        if path is None:
            raise ValueError("no path given and the trainer has no out_dir")
        if distributed.is_main():
            save_training_state(path, self.state_dict())
        distributed.barrier()
        return Path(path)

    def load_state(self, path: str | Path) -> None:
        """Resume from a training state written by ``save_state``; a state of another run is refused with a message
        that says what differs."""
        state = load_training_state(path)
        self._check_same_run(path, state)
        self.model.load_state_dict(state["model"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.history = state["step"], list(state["history"])

    def _check_same_run(self, path, state: dict) -> None:
        differs = []
        saved_model, model = state.get("model_config"), _model_config(self.model)
        if saved_model is not None and model is not None:
            differs += [f"model {k}: {saved_model.get(k)!r} there, {model.get(k)!r} now"
                        for k in sorted(set(saved_model) | set(model)) if saved_model.get(k) != model.get(k)]
        want = {k: tuple(v.shape) for k, v in self.model.state_dict().items()}
        have = {k: tuple(v.shape) for k, v in state["model"].items()}
        if want != have and not differs:
            n = len(set(want) ^ set(have)) + sum(want[k] != have[k] for k in set(want) & set(have))
            differs.append(f"the network has another architecture ({n} weights differ in name or shape)")
        if differs:
            raise CheckpointError(
                f"{path} is the training state of another run: " + "; ".join(differs[:6])
                + ("; ..." if len(differs) > 6 else "")
                + ". Run again with --restart to start this run over (the old state is replaced), or pick another "
                  "--run-dir to keep both.")
        saved_train = state.get("train_config", {})
        changed = [k for k in ("batch_size", "grad_accum", "seed") if k in saved_train
                   and saved_train[k] != getattr(self.config, k)]
        if changed:
            raise CheckpointError(
                f"{path} was trained with " + ", ".join(f"{k}={saved_train[k]!r}" for k in changed)
                + " and this run asks for " + ", ".join(f"{k}={getattr(self.config, k)!r}" for k in changed)
                + ": resuming would not give the run either setting describes. Use the same settings, --restart, "
                  "or another --run-dir.")

    # -- the loop ---------------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        """The lr of optimizer step ``step`` (0-based): linear warm-up, constant, linear cool-down to 0."""
        c = self.config
        warm = min(1.0, (step + 1) / c.warmup_steps) if c.warmup_steps > 0 else 1.0
        cool = min(1.0, (c.steps - step) / c.cooldown_steps) if c.cooldown_steps > 0 else 1.0
        return c.lr * min(warm, max(0.0, cool))

    def _batches(self, steps: int):
        c = self.config
        # this process's chunks of every step: r * grad_accum ... (r + 1) * grad_accum - 1 of grad_accum * world
        sampler = StepBatches(len(self.dataset), c.micro_batch // self.world, c.seed, self.step, steps,
                              chunks=c.grad_accum * self.world,
                              take=[self.rank * c.grad_accum + k for k in range(c.grad_accum)])
        return iter(DataLoader(self.dataset, batch_sampler=sampler, num_workers=c.num_workers,
                               collate_fn=self.collate_fn, pin_memory=self.device.type == "cuda"))

    def fit(self, steps: int | None = None) -> list[dict[str, float]]:
        """Train until ``config.steps`` (or ``steps`` more); return the history."""
        c = self.config
        if c.micro_batch % self.world:
            raise ValueError(f"batch_size / grad_accum ({c.micro_batch}) must be divisible by the number of processes "
                             f"({self.world}): each takes an equal share of every micro-batch")
        steps = max(0, c.steps - self.step) if steps is None else steps
        end = self.step + steps
        batches = self._batches(steps)
        self.model.train()
        main = distributed.is_main()
        bar = tqdm(total=end, initial=self.step, desc="train", disable=not (c.progress and main),
                   dynamic_ncols=True)
        pending: list[dict] = []  # the logs of steps whose loss is still on the device
        log_every = c.log_every or (1 if self.device.type == "cpu" else 25)
        while self.step < end:
            pending.append(self._train_step(batches))
            self.step += 1
            bar.update(1)
            save = self.out_dir is not None and (self.step % c.ckpt_every == 0 or self.step == end)
            if len(pending) >= log_every or save or self.step == end:
                self._read_back(pending)  # before a checkpoint: a diverged run never overwrites a good one
                bar.set_postfix(loss=f"{self.history[-1]['loss']:.4f}")
                pending = []
            if save:
                self.save_state()
            if main:
                for cb in self.callbacks:
                    cb(self, self.step)
            self.model.train()  # a callback may have switched to eval to sample
        bar.close()
        return self.history

    def _read_back(self, pending: list[dict]) -> None:
        """Move the pending steps' losses (and gradient norms) from the device into the history, with one host
        sync, and stop if one of them diverged."""
        keys = [k for k in ("loss", "grad_norm") if k in pending[0]]
        values = torch.stack([torch.stack([torch.as_tensor(p[k], device=self.device).float() for k in keys])
                              for p in pending]).tolist()
        for logs, row in zip(pending, values):
            logs.update(zip(keys, row))
            self._check_loss(logs["loss"], logs["step"] - 1)
            if "grad_norm" in logs:
                self._check_loss(logs["grad_norm"], logs["step"] - 1, what="gradient norm")
            self.history.append(logs)

    def _train_step(self, batches) -> dict:
        c, step = self.config, self.step
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        total, logs = torch.zeros((), device=self.device), {}
        for k in range(c.grad_accum):
            # every random draw of a chunk (noise, t, dropout) is a function of (seed, step, chunk)
            seed = _chunk_seed(c.seed, step, self.rank * c.grad_accum + k)
            torch.manual_seed(seed)
            generator = torch.Generator(self.device).manual_seed(seed)
            batch = to_device(next(batches), self.device)
            # DDP averages the gradients across processes after the last micro-batch only
            sync = self.net.no_sync() if self.world > 1 and k < c.grad_accum - 1 else contextlib.nullcontext()
            with sync:
                with autocast(self.device, c.precision):
                    loss, micro_logs = self.loss_fn(self.net, batch, generator)
                (loss / c.grad_accum).backward()  # the mean over micro-batches is the full-batch loss
            total += loss.detach().float() / c.grad_accum
            for key, v in micro_logs.items():
                logs[key] = logs.get(key, 0.0) + v / c.grad_accum
        if c.grad_clip is not None:
            logs["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
        self.optimizer.step()
        self._update_ema(step)
        return {"step": step + 1, "loss": distributed.all_reduce_mean(total), "lr": lr, **logs}

    def _check_loss(self, value: float, step: int, what: str = "loss") -> None:
        if math.isfinite(value) and (what != "loss" or value <= self.config.max_loss):
            return
        if self.checkpoint_path is None:
            kept = "no checkpoint is kept (give the Trainer an out_dir to keep one)"
        elif self.checkpoint_path.exists():
            kept = f"the last good checkpoint is kept at {self.checkpoint_path}"
        else:
            kept = (f"no checkpoint was written yet (the first comes at step "
                    f"{min(self.config.ckpt_every, self.config.steps)})")
        raise TrainingDiverged(
            f"{what} became {value} at step {step + 1} (max_loss={self.config.max_loss}); {kept}. "
            f"Try a lower lr (now {self.config.lr}), more warm-up, or gradient clipping; and check the data "
            f"(NaN or inf values, images outside [-1, 1], latents that were not scaled).")

    @torch.no_grad()
    def _update_ema(self, step: int) -> None:
        if self.ema is None:
            return
        # ramp the decay up so the average is not dominated by the random initial weights
        decay = min(self.config.ema_decay, (1 + step) / (10 + step))
        ema, params = list(self.ema.parameters()), [p.detach() for p in self.model.parameters()]
        torch._foreach_lerp_(ema, params, 1.0 - decay)  # one fused update of all tensors, not one kernel each
        for e, b in zip(self.ema.buffers(), self.model.buffers()):
            e.copy_(b)


class _DDP(DistributedDataParallel):
    """DDP that answers for its module's attributes too (``net.config``), so a loss can use either."""

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)
