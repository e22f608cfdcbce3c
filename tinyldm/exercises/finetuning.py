"""Exercises of notebooks 09 and 10: how far a finetune moved the weights, a class table for new classes; the masked
image, zero-initialised input channels, and one step of latent blending."""

from __future__ import annotations

import torch

from ..data.masks import masked_image
from .core import Case, Exercise, Mistake, register
from .noising import SCHEDULE, _g

# -- 09.relative_change ------------------------------------------------------------------------------------------------


def _weights(seed: int):
    g = _g(seed)
    base = [torch.randn(8, 4, 3, 3, generator=g), torch.randn(8, generator=g), 3 * torch.randn(16, 8, generator=g)]
    moved = [w + s * torch.randn(w.shape, generator=g) for w, s in zip(base, (0.1, 1.0, 0.01))]
    return moved, base


register(Exercise(
    name="09.relative_change",
    title="how far a finetune moved",
    stub='''def relative_change(weights, base):
    """||theta - theta_0|| / ||theta_0||: the distance of the finetuned weights from the base's, relative to the
    size of the base's, with all the tensors of a part taken together as one long vector.

    weights, base: lists of tensors of the same shapes (a part's parameters after and before). Returns a float.
    """
    raise NotImplementedError''',
    reference=lambda weights, base: (torch.cat([(w - b).flatten() for w, b in zip(weights, base)]).norm()
                                     / torch.cat([b.flatten() for b in base]).norm()).item(),
    cases=lambda: [Case(_weights(60), "three tensors moved by different amounts"),
                   Case(([torch.ones(3)], [torch.ones(3)]), "weights that did not move")],
    mistakes=[
        Mistake(lambda w, b: sum(((x - y).norm() / y.norm()).item() for x, y in zip(w, b)) / len(w),
                "It averages the tensors' own ratios: take all the numbers of the part as one vector."),
        Mistake(lambda w, b: torch.cat([(x - y).flatten() for x, y in zip(w, b)]).norm().item(),
                "It is the distance itself: divide by the size of the base's weights."),
        Mistake(lambda w, b: (torch.cat([(x - y).flatten() for x, y in zip(w, b)]).norm()
                              / torch.cat([x.flatten() for x in w]).norm()).item(),
                "Relative to the finetuned weights: theta_0, the base's, is the reference."),
    ],
    hints=["torch.cat([t.flatten() for t in tensors]) makes one vector; .norm() is its length."],
))


# -- 09.new_class_table ------------------------------------------------------------------------------------------------

register(Exercise(
    name="09.new_class_table",
    title="a class table for new classes",
    stub='''def new_class_table(table, n):
    """The class table of a model finetuned on n new classes: n + 1 rows (the last the new null label), each
    starting as the old null label's row, so that at the first step the model computes for every label what
    the base computes unconditionally.

    table: [m + 1, d], the base's table (row m its null label); n: int. Returns [n + 1, d].
    """
    raise NotImplementedError''',
    reference=lambda table, n: table[-1].expand(n + 1, -1).clone(),
    cases=lambda: [Case((torch.randn(25, 8, generator=_g(61)), 15), "24 scene classes to 15 face classes"),
                   Case((torch.randn(3, 4, generator=_g(62)), 5), "2 classes to 5")],
    mistakes=[
        Mistake(lambda table, n: table[0].expand(n + 1, -1).clone(),
                "The rows start as the first class's: the null label is the last row."),
        Mistake(lambda table, n: torch.zeros(n + 1, table.shape[1]),
                "Zero rows add nothing to the time embedding, which is not what the base computes for its null "
                "label: copy the null label's row."),
        Mistake(lambda table, n: table[-1].expand(n, -1).clone(), "One row short: n classes plus the null label."),
    ],
    hints=["Which row of the old table is the null label's? Every new row starts as a copy of it."],
))


# -- 10.masked_image ---------------------------------------------------------------------------------------------------

def _mask_cases():
    g = _g(63)
    x = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
    mask = torch.zeros(2, 1, 8, 8)
    mask[0, :, 2:6, 1:4] = 1
    mask[1, :, :, 5:] = 1
    soft = mask.clone()
    soft[0, :, 0, :4] = 0.5
    soft[1, :, 1, :3] = 0.3
    return [Case((x, mask), "two images with hard masks"), Case((x, soft), "soft mask values 0.3 and 0.5")]


register(Exercise(
    name="10.masked_image",
    title="the image an inpainting model is shown",
    stub='''def masked_image(x, mask):
    """The image with its hole blanked out, Stable Diffusion's convention: x * (mask < 0.5), so the hole
    becomes 0 (mid-grey) and a soft mask value of 0.5 or more counts as the hole.

    x: [b, 3, H, W] in [-1, 1]; mask: [b, 1, H, W] in [0, 1], 1 = the hole. Returns [b, 3, H, W].
    """
    raise NotImplementedError''',
    reference=masked_image,
    cases=_mask_cases,
    mistakes=[
        Mistake(lambda x, m: x * m, "It keeps the hole and blanks the rest: the mask is 1 where the image is unknown."),
        Mistake(lambda x, m: x * (1 - m),
                "Right for hard masks, not for soft ones: threshold the mask (a pixel is in the hole where mask >= "
                "0.5)."),
        Mistake(lambda x, m: x * (m <= 0.5), "A mask value of exactly 0.5 counts as the hole: mask < 0.5 is kept."),
    ],
    hints=["Compare the mask with 0.5: which pixels are kept, and what becomes of the others?"],
))


# -- 10.widen_conv_in --------------------------------------------------------------------------------------------------

def _conv_cases():
    g = _g(64)
    return [Case((torch.randn(16, 4, 3, 3, generator=g), 5), "4 -> 9 input channels (inpainting)"),
            Case((torch.randn(8, 4, 3, 3, generator=g), 128), "4 -> 132 (a parsing map, 8 parts x 16 pixels)")]


register(Exercise(
    name="10.widen_conv_in",
    title="zero-initialised input channels",
    stub='''def widen_conv_in(weight, k):
    """The weight of the first convolution with k more input channels appended after the old ones, so that the
    widened network computes exactly what the old one did whatever the new channels hold.

    weight: [out, in, 3, 3]; k: int. Returns [out, in + k, 3, 3].
    """
    raise NotImplementedError''',
    reference=lambda w, k: torch.cat([w, torch.zeros(w.shape[0], k, *w.shape[2:])], dim=1),
    cases=_conv_cases,
    mistakes=[
        Mistake(lambda w, k: torch.cat([w, 0.1 * torch.randn(w.shape[0], k, *w.shape[2:], generator=_g(0))], dim=1),
                "The new channels have random weights, so the widened network no longer computes what the base "
                "computes: which value makes a new channel count for nothing?"),
        Mistake(lambda w, k: torch.cat([torch.zeros(w.shape[0], k, *w.shape[2:]), w], dim=1),
                "The new channels come first: they are appended after the latent's, [z_t, mask, masked latent]."),
    ],
    hints=["torch.cat along dim 1 (the input channels)."],
))


# -- 10.blend_step -----------------------------------------------------------------------------------------------------

def _blend_cases():
    g, ab = _g(65), SCHEDULE.alpha_bar
    z, z_known, eps = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
    keep = torch.zeros(2, 1, 8, 8)
    keep[:, :, :, :4] = 1
    return [Case((z, z_known, keep, 600, ab, eps), "t' = 600"), Case((z, z_known, keep, 50, ab, eps), "t' = 50"),
            Case((z, z_known, keep, 0, ab, eps), "t' = 0, after the last step")]


def _blend(z, z_known, keep, t, ab, eps, known_at=None, flip=False):
    a = ab[t if known_at is None else known_at]
    known = a.sqrt() * z_known + (1 - a).sqrt() * eps
    keep = 1 - keep if flip else keep
    return keep * known + (1 - keep) * z


register(Exercise(
    name="10.blend_step",
    title="one step of latent blending",
    stub='''def blend_step(z, z_known, keep, t, alpha_bar, eps):
    """Latent blending after a sampler step landed on t (t = 0 after its last step): the known cells replaced by
    the known latent noised to level t, q_sample(z_known, t, eps); the others left as the sampler made them.

    z, z_known, eps: [b, c, h, w]; keep: [b, 1, h, w], 1 = a known cell; t: int in 0..T;
    alpha_bar: float32 [T + 1] (alpha_bar[0] = 1). Returns [b, c, h, w].
    """
    raise NotImplementedError''',
    reference=_blend,
    cases=_blend_cases,
    mistakes=[
        Mistake(lambda z, zk, keep, t, ab, eps: _blend(z, zk, keep, t, ab, eps, flip=True),
                "The known latent goes into the hole: keep is 1 where the latent is known."),
        Mistake(lambda z, zk, keep, t, ab, eps: keep * zk + (1 - keep) * z,
                "The known part is pasted in clean: at t > 0 it must carry the noise of level t, or the sample "
                "sees two noise levels at once."),
        Mistake(lambda z, zk, keep, t, ab, eps: _blend(z, zk, keep, t, ab, eps, known_at=min(t + 1, 1000)),
                "Off by one in t: the known part is noised to the level the step landed on, t."),
    ],
    hints=["Noise the known latent to level t as q(x_t | x_0) does, with the eps given; take it where keep is 1 and "
           "the sampler's z elsewhere.",
           "At t = 0, alpha_bar[0] = 1: the formula gives z_known itself, no special case needed."],
))
