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

import hashlib
import json
import pickle
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


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that :func:`atomic_path` leaves when a process is killed mid-write (they are never
    read: the file they would have replaced is intact). Returns what was removed."""
    folder = Path(folder)
    stale = [p for p in folder.glob(".*.tmp") if p.is_file()] if folder.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


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
        if "weights_only" in str(e) or isinstance(e, pickle.UnpicklingError):
            # torch's own message suggests weights_only=False: never do that with a file you were handed
            reason = ("it holds pickled Python objects besides tensors and plain containers, and loading those "
                      "could run code from the file, so tinyldm refuses")
        else:
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'unreadable'}"
        raise CheckpointError(f"{path} is not a tinyldm training state ({reason}). Training states are written by "
                              f"tinyldm's Trainer; start the run again with --restart to replace it.") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a tinyldm training state")
    return state


def fingerprint(model: torch.nn.Module) -> str:
    """A short hash of a model's weights: a latent cache made with other weights is not reused, and a model file
    records its partners' fingerprints (see :func:`check_partner`)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


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
        """Load a file written by ``save``; the config comes from the file. Returns the model in eval mode, with the
        facts saved beside the weights (``extra``: steps, the command, partners' fingerprints) in ``model.info``."""
        state, config, extra = load_model_file(path, cls.kind)
        try:
            model_config = cls.config_class(**config)
        except TypeError as e:  # a field this version does not know, or lacks
            raise CheckpointError(f"{path} holds a {cls.kind} config that this version of tinyldm cannot read "
                                  f"({e}); make the file again with this version's training command") from None
        model = cls(model_config)
        check_state_matches(path, model, state)
        model.load_state_dict(state)
        model.info = {**extra, "path": str(path)}
        return model.to(map_location).eval()


def check_partner(model: torch.nn.Module, partner: torch.nn.Module, key: str, what: str,
                  allow_other: bool = False) -> None:
    """Raise a CheckpointError when ``model`` was trained with another ``partner`` than this one.

    A model file records the fingerprints of the frozen networks it was trained with (a UNet: the autoencoder whose
    latents it learned, the text encoder whose hidden states it attends to) in its ``info[key]``. Another partner has
    another latent space or embedding space, and the model's samples would be garbage, so the pairing is checked
    unless ``allow_other`` (for experts who know the spaces agree). Models without the record pass.
    """
    info = getattr(model, "info", None) or {}
    want = info.get(key)
    if want is None or allow_other:
        return
    have = fingerprint(partner)
    if want != have:
        source = info.get("path", "this model")
        raise CheckpointError(
            f"{source} was trained with the {what} whose fingerprint is {want}, but the {what} given has fingerprint "
            f"{have}: its outputs would not mean what the model learned. Use the {what} it was trained with "
            f"(`tinyldm info {source}` shows the command that made it), or pass allow_other_{key}=True if you know "
            f"the two agree (for example a decoder fine-tuned with the encoder frozen).")
