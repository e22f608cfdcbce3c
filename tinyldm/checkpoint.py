"""Saving and loading, safely and atomically.

Two kinds of file:

- a *model file* (``.safetensors``): the weights of one network plus its config as JSON in the
  safetensors metadata. This is what the course ships in ``data/`` and what users share. Loading it
  never runs code: safetensors holds tensors and strings only.
- a *training state* (``.pt``): everything a killed run needs to resume (weights, EMA, optimizer,
  step, random states, loss history). Written with ``torch.save`` and read back with
  ``torch.load(weights_only=True)``, which refuses anything but tensors and plain containers, so a
  file someone handed you cannot execute code when loaded.

Every write goes to a temporary file in the same folder and is moved into place with
``os.replace``, which is atomic: a run killed mid-write leaves the previous file intact.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from safetensors import safe_open

FORMAT = "tinyldm"
FORMAT_VERSION = "1"


class CheckpointError(ValueError):
    """A file is not a tinyldm checkpoint, or not one for what the caller asked for."""


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it onto ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes the file private (0600); give it the permissions a plain open() would have
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_model_file(path: str | os.PathLike, kind: str, config: dict[str, Any],
                    state: dict[str, torch.Tensor], extra: dict[str, Any] | None = None) -> Path:
    """Write ``state`` (a state dict) with ``kind`` and ``config`` in the metadata, atomically."""
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind,
                "config": json.dumps(config), "extra": json.dumps(extra or {})}
    # safetensors refuses tensors that share memory or are non-contiguous views
    tensors = {k: v.detach().contiguous().clone().cpu() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


def load_model_file(path: str | os.PathLike, kind: str
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """Read a model file written by :func:`save_model_file`; return (state, config, extra).

    Raises :class:`CheckpointError` when the file is missing, is not safetensors, was not written
    by tinyldm, or holds another kind of model than ``kind``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a safetensors checkpoint ({e})") from e
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a safetensors file but not a tinyldm checkpoint "
                              f"(metadata has no format={FORMAT!r})")
    if metadata.get("kind") != kind:
        raise CheckpointError(f"{path} holds a {metadata.get('kind')!r} model, expected a {kind!r}")
    return state, json.loads(metadata["config"]), json.loads(metadata.get("extra", "{}"))


def check_state_matches(path: str | os.PathLike, model: torch.nn.Module,
                        state: dict[str, torch.Tensor]) -> None:
    """Raise a CheckpointError naming the first mismatches between ``state`` and ``model``."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in state.items()}
    problems = [f"missing {k}" for k in want if k not in have][:3]
    problems += [f"unexpected {k}" for k in have if k not in want][:3]
    problems += [f"{k}: file has {have[k]}, model expects {want[k]}"
                 for k in want if k in have and have[k] != want[k]][:3]
    if problems:
        raise CheckpointError(f"{path} does not fit this model config: " + "; ".join(problems))


def save_training_state(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Atomically ``torch.save`` a dict of tensors, numbers, strings, lists and dicts."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load_training_state(path: str | os.PathLike) -> dict[str, Any]:
    """Load a training state with ``weights_only=True`` (no code can run from the file)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no training state at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for foreign or corrupt files
        raise CheckpointError(f"{path} is not a tinyldm training state ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a tinyldm training state")
    return state


class SavableModel:
    """Mixin for the course's networks: ``save`` / ``load`` one safetensors model file.

    A subclass sets ``kind`` (the name written into the file) and ``config_class`` (its config
    dataclass, with ``to_dict()``), and keeps its config in ``self.config``.
    """

    kind: str
    config_class: type

    def save(self, path: str | os.PathLike, **extra) -> Path:
        """Weights + config (+ ``extra`` JSON-able facts such as PSNR or the step) to one file, atomically."""
        return save_model_file(path, self.kind, self.config.to_dict(), self.state_dict(), extra)

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu"):
        """Load a file written by ``save``; the config comes from the file. Returns the model in eval mode."""
        state, config, _ = load_model_file(path, cls.kind)
        model = cls(cls.config_class(**config))
        check_state_matches(path, model, state)
        model.load_state_dict(state)
        return model.to(map_location).eval()
