"""Retrieval-conditioned samples against class-conditioned ones, zero-shot text queries and a swapped database.

Two UNets trained by ``tinyldm train-diffusion`` for the same number of steps on the same course scenes: one with
``--condition retrieval`` (``--retrieval``, default ``data/unet-retrieval.safetensors``) and one with ``--condition
class`` (``--class-unet``; the shipped ``data/unet-class.safetensors`` had a longer, two-stage training, so pass one
made with the retrieval model's steps for a fair comparison). The judge reads every sample:

* **class vs. retrieval**: ``recipes.sample_test`` on both, the same 24 classes x ``--per-class`` samples, DDIM 20,
  s = 3, the same noise; the retrieval model's condition is the k neighbours (in the course database) of a held-out
  scene of the class. The training cost of one step of each model is timed too (interleaved, batch 64), so "equal
  steps" can be read as time.
* **zero-shot text**: prompts in six sentence forms that no training caption uses, embedded by SceneCLIP's text
  tower, as the context alone (k copies), followed by its k - 1 nearest database images, and its k nearest images
  alone (the prompt used only to search).
* **database swap**: the database cut to its red and blue scenes, queried with held-out scenes of every colour; the
  share of samples the judge reads as red or blue (the queries themselves are red or blue a third of the time).

Command and time (2 CPU cores, quiet machine):

    .venv/bin/python benchmarks/retrieval_quality.py --class-unet build/runs/diffusion-class-4000/model.safetensors
    # about 5 minutes
    .venv/bin/python benchmarks/retrieval_quality.py --quick      # smoke test
"""

from __future__ import annotations

import argparse
import copy
import json

import torch

import _common as C
from tinyldm import data
from tinyldm.metrics import attribute_accuracy, class_attributes
from tinyldm.pipeline import generate
from tinyldm.pretrained import (COURSE_CLASS_UNET, COURSE_RETRIEVAL_UNET, course_autoencoder, course_image_encoder,
                                course_judge)
from tinyldm.recipes import course_database, course_scenes, sample_test
from tinyldm.retrieval import RetrievalCondition
from tinyldm.train import EpsLoss
from tinyldm.conditioning import LabelCondition
from tinyldm.unet import UNet

PHRASINGS = ["draw a {color} {shape} for me", "please draw me a {shape} that is {color}",
             "i would like one single {color} {shape}", "{shape} colour {color}",
             "my favourite picture is the {color} {shape}", "generate a {color} {shape} please"]


def step_time(model: UNet, loss: EpsLoss, batch: dict, device, repeats: int) -> list[float]:
    """Seconds per training step (forward, loss, backward, AdamW) of a copy of ``model``: the model itself, which
    is evaluated afterwards, keeps its weights."""
    model = copy.deepcopy(model).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)

    def step():
        value, _ = loss(model, batch, g)
        value.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return C.interleaved_medians({"step": step}, device, repeats)["step"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--retrieval", default=str(COURSE_RETRIEVAL_UNET))
    p.add_argument("--class-unet", default=str(COURSE_CLASS_UNET))
    p.add_argument("--per-class", type=int, default=10)
    p.add_argument("--s", type=float, default=3.0)
    C.add_common_args(p)
    args = p.parse_args()
    device = C.setup(args)
    per_class = 1 if args.quick else args.per_class
    C.banner("Retrieval vs. class conditioning; zero-shot text; database swap", device)
    ae, judge, encoder = course_autoencoder(), course_judge(), course_image_encoder()
    unet_r = UNet.load(args.retrieval, autoencoder=ae, image_encoder=encoder)
    unet_c = UNet.load(args.class_unet, autoencoder=ae)
    trained = unet_r.info.get("database") or {}
    db = course_database(encoder, n=trained.get("n", 20_000) if not args.quick else 256, progress=False)
    k = unet_r.info.get("k", 4)
    print(f"retrieval UNet: {args.retrieval} ({unet_r.info.get('steps')} steps, k = {k}, database {len(db)}, "
          f"as in training: {db.fingerprint == trained.get('fingerprint')})")
    print(f"class UNet:     {args.class_unet} ({unet_c.info.get('steps')} steps)", flush=True)

    # the cost of a training step of each (batch 64, the recipe's), interleaved
    b = 64
    batch = {"latent": torch.randn(b, 4, 16, 16), "label": torch.arange(b) % data.NUM_CLASSES,
             "neighbours": db.embeddings[torch.randint(len(db), (b, k))]}
    tr = step_time(unet_r, EpsLoss(unet_r.schedule, condition=RetrievalCondition(db.dim, k)), batch, device,
                   2 if args.quick else 10)
    tc = step_time(unet_c, EpsLoss(unet_c.schedule, condition=LabelCondition(data.NUM_CLASSES)), batch,
                   device, 2 if args.quick else 10)
    print(f"training step, batch 64: retrieval {C.spread(tr)}, class {C.spread(tc)}, ratio "
          f"{C.median(tr) / C.median(tc):.2f}x", flush=True)

    results = {}
    for name, unet in (("class", unet_c), ("retrieval", unet_r)):
        results[name] = sample_test(unet, ae, judge, per_class=per_class, s=args.s, image_encoder=encoder,
                                    database=db)
        print(f"{name}: {json.dumps({a: round(v, 4) if isinstance(v, float) else v for a, v in results[name].items()})}",
              flush=True)

    condition = RetrievalCondition(db.dim, k)
    prompts, labels = [], []
    for c in range(data.NUM_CLASSES):
        color, shape = data.class_name(c).split()
        for template in PHRASINGS[: 1 if args.quick else len(PHRASINGS)]:
            prompts.append(template.format(color=color, shape=shape)), labels.append(c)
    labels = torch.tensor(labels)
    t = encoder.text_embeds(prompts)
    text = {}
    for name, context in (("text alone", t[:, None].expand(-1, k, -1)),
                          ("text + its k - 1 neighbours", db.query(t, k, keep_query=True)),
                          ("its k neighbours", db.query(t, k))):
        images = generate(unet_r, ae, condition.given(context), condition.null(len(t)), s=args.s, seed=3)
        text[name] = attribute_accuracy(judge, images, class_attributes(labels))
        print(f"zero-shot {name}: n = {len(t)}, {json.dumps({a: round(v, 4) for a, v in text[name].items()})}",
              flush=True)

    scenes = course_scenes(len(db), seed=2)
    colors = torch.tensor([list(data.COLORS).index(scenes.objects(int(i))[0][0].color) for i in db.ids])
    kept = torch.tensor([list(data.COLORS).index("red"), list(data.COLORS).index("blue")])
    swapped = db.subset(torch.isin(colors, kept))
    n_swap = 24 if args.quick else 240
    queries = course_scenes(n_swap, seed=4)
    q = encoder.embed(torch.stack([queries[i]["image"] for i in range(n_swap)]))
    images = generate(unet_r, ae, condition.given(swapped.query(q, k)), condition.null(n_swap), s=args.s, seed=2)
    follows = torch.isin(judge.predict(images)["color"], kept).float().mean().item()
    base = torch.tensor([queries.objects(i)[0][0].color in ("red", "blue") for i in range(n_swap)]).float().mean()
    print(f"database swap (red and blue only, {len(swapped)} scenes): {follows:.1%} of {n_swap} samples red or blue "
          f"(queries red or blue: {base:.1%})")

    print()
    rows = [[name, unet.info.get("steps"), f"{r['shape']:.1%}", f"{r['color']:.1%}", f"{r['all']:.1%}"]
            for (name, r), unet in zip(results.items(), (unet_c, unet_r))]
    print(C.markdown_table(["condition", "steps", "shape", "colour", "both right"], rows))
    print()
    print(C.markdown_table(["query", "n", "shape", "colour", "both right"],
                           [[name, len(t), f"{a['shape']:.1%}", f"{a['color']:.1%}", f"{a['all']:.1%}"]
                            for name, a in text.items()]
                           + [["swapped database (red, blue)", n_swap, "", f"{follows:.1%} follow", ""]]))
    ratio = results["retrieval"]["all"] / max(results["class"]["all"], 1e-9)
    print(f"\nretrieval / class, both right: {ratio:.2f}x, with {unet_r.info.get('steps')} and "
          f"{unet_c.info.get('steps')} steps recorded (a file made with --init records its last stage's); training "
          f"step time ratio {C.median(tr) / C.median(tc):.2f}x")
    C.footer([], args.quick)


if __name__ == "__main__":
    main()
