"""Measuring generated images: a judge that reads a scene's attributes, and a Frechet distance.

FID compares Inception-v3 features of real and generated images; Inception is a download and was
trained on photographs. The course measures in the feature space of a small network trained on
the procedural scenes themselves, the **judge**, which also *reads* the attributes of a generated
image (shape, colour, size of its first object) so conditional models can be scored:

- ``Judge``: a small CNN with one head per attribute; its pooled features ``[b, 128]`` are the
  feature space of the distance.
- ``frechet_distance(f_a, f_b)``: ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)), the
  distance between Gaussians fitted to two feature sets (Heusel et al. 2017). Here it is called
  FSD, the Frechet Scene Distance. Like FID it is biased upwards for small samples: compare
  numbers computed from the same number of images.
- ``attribute_accuracy``: how often the judge reads the attributes that were asked for.
- ``Segmenter`` and ``mean_iou``: a small network that reads a face-parsing map off a face, and how well two maps
  agree; together they measure how closely mask-conditioned samples follow their maps (:mod:`tinyldm.inpaint`).

The course's judge is trained by ``tinyldm train-judge`` (see ``tinyldm.pretrained``), on scenes
with light blur and noise so it also reads imperfect samples.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layers import group_norm, images_at, strided_cnn
from .checkpoint import SavableModel
from .data import COLORS, NUM_PARTS, PARTS, SHAPES, SIZES

KIND = "judge"
# what the scenes judge reads: the first object's shape, colour and size (name -> number of values)
ATTRIBUTES = {"shape": len(SHAPES), "color": len(COLORS), "size": len(SIZES)}


@dataclass(frozen=True)
class JudgeConfig:
    image_size: int = 64  # inputs of other sizes are resized to this
    widths: tuple[int, ...] = (16, 32, 64, 128)  # one stride-2 stage each: 64 -> 32 -> 16 -> 8 -> 4 px
    feature_dim: int = 128
    # one head per attribute, (name, number of values) in the order of the data's "attributes": the scenes'
    # ATTRIBUTES by default; JudgeConfig.faces() reads the face stand-in's FACE_ATTRIBUTES
    attributes: tuple[tuple[str, int], ...] = tuple(ATTRIBUTES.items())

    def __post_init__(self):
        object.__setattr__(self, "widths", tuple(self.widths))
        object.__setattr__(self, "attributes", tuple((str(k), int(n)) for k, n in self.attributes))
        if not self.attributes or any(n < 2 for _, n in self.attributes):
            raise ValueError(f"attributes must be (name, number of values >= 2) pairs, got {self.attributes!r}")

    @classmethod
    def faces(cls, **overrides) -> "JudgeConfig":
        """The judge of the face stand-in: one head per entry of :data:`tinyldm.data.FACE_ATTRIBUTES`."""
        from .data import FACE_ATTRIBUTES

        return cls(**{"attributes": tuple((k, len(v)) for k, v in FACE_ATTRIBUTES.items()), **overrides})

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(k for k, _ in self.attributes)

    def to_dict(self) -> dict:
        return asdict(self)


class Judge(SavableModel, nn.Module):
    """Images ``[b, 3, H, W]`` in [-1, 1] -> logits per attribute of the scene's first object."""

    kind, config_class = KIND, JudgeConfig

    def __init__(self, config: JudgeConfig | None = None):
        super().__init__()
        self.config = config or JudgeConfig()
        self.body = strided_cnn(self.config.widths)
        self.proj = nn.Linear(self.config.widths[-1], self.config.feature_dim)
        self.heads = nn.ModuleDict({name: nn.Linear(self.config.feature_dim, n) for name, n in self.config.attributes})

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``[b, 3, H, W]`` -> ``[b, feature_dim]`` (the space of the Frechet distance)."""
        return F.silu(self.proj(self.body(images_at(x, self.config.image_size)).mean(dim=(2, 3))))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.features(x)
        return {name: head(h) for name, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 256) -> dict[str, torch.Tensor]:
        """Predicted attribute indices: {"shape": [b], "color": [b], "size": [b]}."""
        was_training = self.training
        self.eval()
        outs = [self(chunk) for chunk in x.split(batch_size)]
        self.train(was_training)
        return {name: torch.cat([o[name] for o in outs]).argmax(1) for name in self.config.names}


def _degrade(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Light, random blur and noise, so the judge reads imperfect generated images too."""
    b = x.shape[0]
    u = torch.rand(b, 2, generator=generator, device=x.device)
    blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    x = torch.where((u[:, 0] < 0.3).view(b, 1, 1, 1), blurred, x)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x + (0.08 * u[:, 1]).view(b, 1, 1, 1) * noise


def judged_attributes(batch: dict) -> torch.Tensor:
    """What the judge learns to read, ``[b, A]``: a scene's first object's attributes (``"attributes"`` is
    ``[b, objects, 3]`` there), or a face's own (``[b, A]``)."""
    attributes = batch["attributes"]
    return attributes[:, 0] if attributes.ndim == 3 else attributes


def judge_loss(model: Judge, batch: dict, generator: torch.Generator):
    """Cross-entropy of each head against the attributes it reads (:func:`judged_attributes`)."""
    logits = model(_degrade(batch["image"], generator))
    target = judged_attributes(batch)
    names = model.config.names
    losses = {name: F.cross_entropy(logits[name], target[:, i]) for i, name in enumerate(names)}
    logs = {f"acc_{name}": (logits[name].argmax(1) == target[:, i]).float().mean().item()
            for i, name in enumerate(names)}
    return sum(losses.values()), logs


def class_attributes(labels) -> torch.Tensor:
    """Class labels ``[b]`` (shape * len(COLORS) + colour) -> attributes ``[b, 3]`` for :func:`attribute_accuracy`
    (shape, colour, and -1 for size: a class does not fix it)."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    n = len(SHAPES) * len(COLORS)
    if labels.ndim != 1 or bool(((labels < 0) | (labels >= n)).any()):
        raise ValueError(f"expected class labels [b] in 0..{n - 1}, got {labels.tolist()}"[:200])
    return torch.stack([labels // len(COLORS), labels % len(COLORS), torch.full_like(labels, -1)], dim=1)


@torch.no_grad()
def attribute_accuracy(judge: Judge, images: torch.Tensor, attributes: torch.Tensor) -> dict[str, float]:
    """Share of images that the judge reads as ``attributes`` ``[b, A]`` (one index per attribute of the judge, e.g.
    a scene's shape, colour, size; -1 = don't care). Also "all": every attribute given read right."""
    pred = judge.predict(images)
    ok_all = torch.ones(len(images), dtype=torch.bool)
    result = {}
    for i, name in enumerate(pred):  # the judge's attributes, in order
        want = attributes[:, i].cpu()
        care = want >= 0
        if care.any():
            ok = pred[name].cpu() == want
            result[name] = ok[care].float().mean().item()
            ok_all &= ok | ~care
    result["all"] = ok_all.float().mean().item()
    return result


def frechet_distance(f_a: torch.Tensor, f_b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to features ``[n_a, d]`` and ``[n_b, d]``.

    Tr((S_a S_b)^(1/2)) is computed as the sum of the square roots of the eigenvalues of
    S_a^(1/2) S_b S_a^(1/2), which is symmetric PSD, so ``eigh`` is stable (no complex parts).
    """
    if f_a.ndim != 2 or f_b.ndim != 2 or f_a.shape[1] != f_b.shape[1]:
        raise ValueError(f"expected features [n, d] with the same d, got {list(f_a.shape)} and {list(f_b.shape)}")
    if min(len(f_a), len(f_b)) < 2:
        raise ValueError("need at least 2 feature vectors on each side")
    a, b = f_a.double(), f_b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = torch.atleast_2d(torch.cov(a.T)), torch.atleast_2d(torch.cov(b.T))  # [d, d], also for d = 1
    w, v = torch.linalg.eigh(s_a)
    sqrt_a = (v * w.clamp_min(0).sqrt()) @ v.T
    cross = torch.linalg.eigvalsh(sqrt_a @ s_b @ sqrt_a).clamp_min(0).sqrt().sum()
    return ((mu_a - mu_b).pow(2).sum() + s_a.trace() + s_b.trace() - 2 * cross).item()


@torch.no_grad()
def fsd(judge: Judge, images_a: torch.Tensor, images_b: torch.Tensor, batch_size: int = 256) -> float:
    """Frechet Scene Distance: the Frechet distance of two image sets in the judge's feature space."""
    judge.eval()
    feats = [torch.cat([judge.features(c) for c in imgs.split(batch_size)]) for imgs in (images_a, images_b)]
    return frechet_distance(*feats)


# -- face parsing ------------------------------------------------------------------------------------------------------
SEGMENTER_KIND = "segmenter"


@dataclass(frozen=True)
class SegmenterConfig:
    image_size: int = 64  # inputs of other sizes are resized to this; the map comes back at the input's size
    widths: tuple[int, ...] = (16, 32, 64)  # one level each, at image_size / 2**level
    num_parts: int = NUM_PARTS

    def __post_init__(self):
        object.__setattr__(self, "widths", tuple(self.widths))
        if not self.widths or self.num_parts < 2 or self.image_size % 2 ** (len(self.widths) - 1):
            raise ValueError(f"expected widths (one per level), num_parts >= 2 and image_size divisible by "
                             f"2**(levels - 1); got {self}")

    def to_dict(self) -> dict:
        return asdict(self)


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), group_norm(c_out, 8), nn.SiLU(),
                         nn.Conv2d(c_out, c_out, 3, padding=1), group_norm(c_out, 8), nn.SiLU())


class Segmenter(SavableModel, nn.Module):
    """Images ``[b, 3, H, W]`` in [-1, 1] -> part logits ``[b, num_parts, H, W]``: a small UNet (a conv block per
    level, stride-2 down, nearest-neighbour up with the skip concatenated). Reads the face-parsing map of a face, in
    the classes of :data:`tinyldm.data.PARTS`; trained on the face stand-in by ``tinyldm train-segmenter``."""

    kind, config_class = SEGMENTER_KIND, SegmenterConfig

    def __init__(self, config: SegmenterConfig | None = None):
        super().__init__()
        self.config = cfg = config or SegmenterConfig()
        w = cfg.widths
        self.down = nn.ModuleList([_conv_block(3, w[0])] + [
            nn.Sequential(nn.Conv2d(w[i - 1], w[i], 3, stride=2, padding=1), _conv_block(w[i], w[i]))
            for i in range(1, len(w))])
        self.up = nn.ModuleList([_conv_block(w[i + 1] + w[i], w[i]) for i in reversed(range(len(w) - 1))])
        self.head = nn.Conv2d(w[0], cfg.num_parts, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        h, skips = images_at(x, self.config.image_size), []
        for block in self.down:
            h = block(h)
            skips.append(h)
        skips.pop()
        for block in self.up:
            h = block(torch.cat([F.interpolate(h, scale_factor=2.0, mode="nearest"), skips.pop()], dim=1))
        logits = self.head(h)
        return logits if logits.shape[-2:] == size else F.interpolate(logits, size=size, mode="bilinear",
                                                                      align_corners=False)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """The part of every pixel, int64 ``[b, H, W]`` (indices into ``PARTS``)."""
        was_training = self.training
        self.eval()
        out = torch.cat([self(chunk).argmax(1) for chunk in x.split(batch_size)])
        self.train(was_training)
        return out


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(round(2 * sigma)))
    k = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype) / sigma) ** 2)
    k = (k / k.sum()).view(1, 1, 1, -1).expand(x.shape[1], 1, 1, -1)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), k, groups=x.shape[1])
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), k.transpose(-1, -2), groups=x.shape[1])


# The blurs the segmenter learns to read through (Gaussian sigma in pixels, at 64 px): latent models draw a face's
# small parts (eyes, brows, mouth) as softly as their autoencoder decodes them, and a segmenter that only knew sharp
# faces would miss parts that are there.
SEGMENTER_BLURS = (0.0, 0.7, 1.0, 1.4)


def segmenter_loss(model: Segmenter, batch: dict, generator: torch.Generator):
    """Cross-entropy against the soft part masks ``batch["masks"]`` ``[b, P, H, W]`` (each pixel's shares sum to 1),
    on noisy images blurred by one of ``SEGMENTER_BLURS`` each, so that the segmenter also reads decoded samples."""
    x = _degrade(batch["image"], generator)
    level = torch.randint(len(SEGMENTER_BLURS), (len(x),), generator=generator, device=x.device)
    for k, sigma in enumerate(SEGMENTER_BLURS):
        if sigma > 0 and bool((level == k).any()):
            x[level == k] = _gaussian_blur(x[level == k], sigma)
    logits = model(x)
    target = batch["masks"]
    loss = -(target * F.log_softmax(logits, dim=1)).sum(1).mean()
    return loss, {"pixel_acc": (logits.argmax(1) == target.argmax(1)).float().mean().item()}


def mean_iou(pred: torch.Tensor, target: torch.Tensor, num_parts: int = NUM_PARTS,
             names: tuple[str, ...] = PARTS) -> dict:
    """How well two part maps agree: per part, intersection over union of its pixels, summed over all images (the
    dataset-level IoU of segmentation benchmarks); ``"miou"`` is the mean over the parts present in either map.
    pred, target: int64 ``[b, H, W]`` part indices. Returns ``{"miou": float, "parts": {name: IoU}}``."""
    if pred.shape != target.shape or pred.ndim != 3:
        raise ValueError(f"expected two part maps [b, H, W] of the same shape, got {list(pred.shape)} and "
                         f"{list(target.shape)}")
    parts = {}
    for k in range(num_parts):
        p, t = pred == k, target == k
        union = (p | t).sum().item()
        if union:
            parts[names[k] if k < len(names) else str(k)] = (p & t).sum().item() / union
    return {"miou": sum(parts.values()) / max(1, len(parts)), "parts": parts}
