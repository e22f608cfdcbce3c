"""The ``tinyldm`` command: run the course, train the course's models, inspect files.

    tinyldm course [NOTEBOOK ...]        execute notebooks headless (walkthrough mode) into build/notebooks
    tinyldm train-autoencoder [options]  train an autoencoder on procedural scenes (resumable)
    tinyldm train-diffusion [options]    train the latent denoiser on cached latents (resumable); with --concat
                                         inpaint an inpainting model, with --concat parsing a face-parsing-map one
    tinyldm train-judge [options]        train the judge that scores generated scenes
    tinyldm train-segmenter [options]    train the face-parsing segmenter that scores mask-conditioned faces
    tinyldm train-text-encoder [options] train the offline CLIP-style text encoder on scene captions
    tinyldm evaluate UNET [options]      the judge's reading of 240 samples of a trained UNet (an inpainting model:
                                         against the training-free baselines; a parsing model: the IoU of its maps)
    tinyldm convert-sd SD --out DIR      Stable Diffusion v1 weights as tinyldm's own UNet and autoencoder files
    tinyldm export-sd [options]          a tinyldm UNet and autoencoder in Stable Diffusion's layouts
    tinyldm retrain-course --device cuda the course's models again, larger, on one GPU (about five minutes)
    tinyldm exercises list|progress      the course's exercises, and which of yours pass
    tinyldm exercises solve|reset NB...  copies of notebooks with the reference solutions; stubs back in place
    tinyldm info FILE                    what a tinyldm .safetensors file holds

Each training command writes its model file into its run folder (``--run-dir``, under ``build/runs/``) unless
``--out`` names another file: the course checkpoints in ``data/`` are replaced only when you say so. The small
checkpoints in ``data/`` are made by these commands; ``data/README.md`` lists the exact command lines, so anyone can
make them again. ``--seed`` fixes the initial weights and every random draw of training: the same command gives the
same weights on the same machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .config import BUILD_DIR, DATA_DIR
from .data.scenes import SIZES
from .recipes import CONDITIONS, COURSE_DATABASE, COURSE_SCENES, FINETUNE_LR
from .unet import PRESETS as UNET_PRESETS


DATA_HELP = ("the training images: scenes (procedural, the course's default), faces (the procedural face stand-in) "
             "or a folder of images such as FFHQ (any size; resized and centre-cropped; its last tenth held out)")


class UsageError(Exception):
    """A command line that cannot run as given: printed as one line, exit status 2."""


def _out(args) -> Path:
    """Where the model file goes: --out, or model.safetensors in the run folder."""
    return Path(args.out) if args.out else Path(args.run_dir) / "model.safetensors"


def _existing(path: str, flag: str, command: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{flag} {path}: no such file. Make it with `{command}`, or pass the file you have.")
    return path


def _names(value: str, flag: str) -> tuple[str, ...]:
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    bad = [v for v in names if v not in SIZES]
    if not names or bad:
        raise UsageError(f"{flag} {value!r}: expected a comma-separated list of {', '.join(SIZES)}")
    return names


def _cmd_course(args) -> int:
    import nbformat
    from nbclient import NotebookClient

    notebooks = [Path(p) for p in args.notebooks] or sorted(Path("notebooks").glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        print("no notebooks given or found in ./notebooks", file=sys.stderr)
        return 2
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    failed = []
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        start = time.perf_counter()
        print(f"running {path} ...", flush=True)
        client = NotebookClient(nb, timeout=args.timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent)}})
        try:
            client.execute()
            status = "ok"
        except Exception as e:  # keep going: one broken notebook should not hide the others
            status = f"FAILED ({type(e).__name__})"
            failed.append(path.name)
            print(str(e)[-2000:], file=sys.stderr)
        nbformat.write(nb, out_dir / path.name)
        print(f"  {status} in {time.perf_counter() - start:.0f} s -> {out_dir / path.name}", flush=True)
    print(f"\nexecuted notebooks are in {out_dir}/ (open them with `make lab` or `jupyter lab {out_dir}`)")
    return 1 if failed else 0


def _data(args) -> str:
    """--data: "scenes", "faces" or a folder of images that exists."""
    if args.data not in ("scenes", "faces") and not Path(args.data).is_dir():
        raise UsageError(f"--data {args.data!r}: expected 'scenes', 'faces' or a folder of images (no such folder)")
    return args.data


def _text_encoder(value: str):
    """--text-encoder: a SceneCLIP file (made by train-text-encoder), or a CLIP text model in a local folder or the
    Hugging Face cache (e.g. openai/clip-vit-large-patch14), or the text encoder of a Stable Diffusion folder."""
    from .checkpoint import CheckpointError
    from .convert import WeightsNotFound, load_text_encoder
    from .text import CLIPTextEncoder, SceneCLIP, TextEncoderNotFound

    path = Path(value)
    try:
        if path.suffix == ".safetensors":
            try:
                return SceneCLIP.load(_existing(value, "--text-encoder", "tinyldm train-text-encoder")
                                      ).requires_grad_(False)
            except CheckpointError:
                return load_text_encoder(path)  # not a SceneCLIP: the text encoder of an SD single file
        if (path / "text_encoder").is_dir() or (path / "model_index.json").is_file():
            return load_text_encoder(path)
        return CLIPTextEncoder.from_pretrained(value)
    except (TextEncoderNotFound, WeightsNotFound) as e:
        raise UsageError(f"--text-encoder {value}: {e}") from None


def _cmd_train_autoencoder(args) -> int:
    from .recipes import train_autoencoder
    from .train import TrainConfig

    tc = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup,
                     seed=args.seed, **_speed(args))
    ae, value = train_autoencoder(args.preset, size=args.size, crop=args.crop, whole_image_steps=args.whole_image_steps,
                                  max_objects=args.max_objects,
                                  n_images=args.n_images, train_config=tc, run_dir=args.run_dir,
                                  resume=not args.restart, device=args.device, out=_out(args),
                                  init=args.init, kl_weight=args.kl_weight, data=_data(args))
    print(f"saved {_out(args)}: PSNR {value:.2f} dB on held-out {args.size}px images ({args.data}), "
          f"scale_factor {ae.scale_factor.item():.4f}")
    return 0


def _image_encoder(args):
    """The retrieval image encoder of ``--image-encoder``: the image tower of a SceneCLIP file."""
    from .retrieval import SceneImageEncoder
    from .text import SceneCLIP

    return SceneImageEncoder(SceneCLIP.load(_existing(args.image_encoder, "--image-encoder",
                                                      "tinyldm train-text-encoder")))


def _judge(args, data: str):
    """--judge, or the course judge of ``data`` ("scenes" or "faces")."""
    from .metrics import Judge

    default = DATA_DIR / ("judge-faces.safetensors" if data == "faces" else "judge-scenes64.safetensors")
    return Judge.load(_existing(args.judge or default, "--judge", f"tinyldm train-judge --data {data}")).eval()


def _fsd_curve(args, ae):
    """--fsd-every: the FSD of 256 samples to 256 held-out images of the data, in the course judge's features,
    appended to RUN_DIR/fsd.jsonl."""
    import torch

    from .recipes import FSDCurve, image_data

    if args.data not in ("scenes", "faces"):
        raise UsageError("--fsd-every needs a judge of the data: --data scenes or faces")
    judge = _judge(args, args.data)
    held = image_data(args.data, args.image_size, 256, split="held_out")
    reference = torch.stack([held[i]["image"] for i in range(len(held))])
    return FSDCurve(ae, judge, reference, args.fsd_every, log=Path(args.run_dir) / "fsd.jsonl")


def _cmd_train_diffusion(args) -> int:
    from .autoencoder import Autoencoder
    from .recipes import FINETUNE_LR, train_diffusion
    from .schedule import ScheduleConfig
    from .train import TrainConfig

    lr = args.lr if args.lr is not None else (FINETUNE_LR if args.init else 1e-3)
    tc = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=lr, warmup_steps=args.warmup,
                     seed=args.seed, grad_accum=args.grad_accum, cooldown_steps=args.cooldown, **_speed(args))
    ae = Autoencoder.load(_existing(args.autoencoder, "--autoencoder", "tinyldm train-autoencoder"))
    text_encoder = _text_encoder(args.text_encoder) if args.condition == "text" else None
    schedule = ScheduleConfig.preset(args.schedule) if args.schedule else None
    image_encoder, database = None, None
    if args.condition == "retrieval":
        from .recipes import course_database

        image_encoder = _image_encoder(args)
        database = course_database(image_encoder, n=args.database_size)
    callbacks = [_fsd_curve(args, ae)] if args.fsd_every else []
    hold_out = [int(v) for v in args.hold_out.split(",") if v.strip()] if args.hold_out else []
    model, trainer = train_diffusion(ae, args.preset, n_images=args.n_images, max_objects=args.max_objects,
                                     train_config=tc, run_dir=args.run_dir, resume=not args.restart,
                                     device=args.device, out=_out(args), sample_every=args.sample_every,
                                     condition=args.condition, text_encoder=text_encoder, p_uncond=args.p_uncond,
                                     hold_out=hold_out, snr_gamma=args.snr_gamma, x0_cap=args.x0_cap,
                                     init=args.init,
                                     sizes=_names(args.sizes, "--sizes"), upright=args.upright,
                                     image_encoder=image_encoder, k=args.k, database=database,
                                     data=_data(args), image_size=args.image_size, flip=args.flip,
                                     caption=args.caption, schedule=schedule,
                                     freeze=[v.strip() for v in args.freeze.split(",") if v.strip()],
                                     gradient_checkpointing=args.grad_checkpointing, callbacks=callbacks,
                                     concat=args.concat, masks=_masks(args.masks), mask_variants=args.mask_variants,
                                     parsing_maps=args.parsing_maps)
    print(f"saved {_out(args)}: {model.num_parameters() / 1e6:.2f}M parameters, {trainer.step} steps")
    return 0


def _masks(value: str | None):
    """--masks: the mix of inpainting mask kinds, e.g. boxes=0.3,strokes=0.3,everything=0.25 (default: MaskConfig's)."""
    from .data.masks import MaskConfig
    from .data.scenes import DataError

    if not value:
        return None
    try:
        return MaskConfig.parse(value)
    except DataError as e:
        raise UsageError(f"--masks {value!r}: {e}") from None


def _cmd_train_judge(args) -> int:
    from .recipes import train_judge
    from .train import TrainConfig

    tc = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=50, ema_decay=None,
                     grad_clip=None, seed=args.seed)
    _, acc = train_judge(tc, device=args.device, out=_out(args), data=args.data, init=args.init)
    print(f"saved {_out(args)}: reads all attributes right on {acc:.1%} of 1000 held-out {args.data}")
    return 0


def _cmd_train_segmenter(args) -> int:
    from .recipes import train_segmenter
    from .train import TrainConfig

    tc = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=50, ema_decay=None,
                     seed=args.seed)
    _, miou = train_segmenter(tc, device=args.device, out=_out(args), init=args.init)
    print(f"saved {_out(args)}: mean IoU {miou:.3f} of its maps against the true ones on 500 held-out faces")
    return 0


def _cmd_train_text_encoder(args) -> int:
    from .recipes import train_text_encoder
    from .train import TrainConfig

    tc = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=50, ema_decay=None,
                     seed=args.seed)
    _, acc = train_text_encoder(tc, device=args.device, out=_out(args))
    print(f"saved {_out(args)}: zero-shot accuracy {acc:.1%} on 512 held-out scenes (24 prompts, chance 4.2%)")
    return 0


def _cmd_convert_sd(args) -> int:
    from .convert import WeightsNotFound, load_autoencoder, load_unet

    out = Path(args.out)
    try:
        unet, ae = load_unet(args.source), load_autoencoder(args.source)
    except WeightsNotFound as e:
        raise UsageError(str(e)) from None
    source = str(args.source)
    unet.save(out / "unet.safetensors", converted_from=source, command=" ".join(["tinyldm", *sys.argv[1:]]))
    ae.save(out / "autoencoder.safetensors", converted_from=source)
    print(f"saved {out}/unet.safetensors ({unet.num_parameters() / 1e6:.0f}M parameters) and "
          f"{out}/autoencoder.safetensors (scale_factor {ae.scale_factor.item():.5f}) from {source}; the text encoder "
          f"stays where it is: pass --text-encoder {source}")
    return 0


def _cmd_export_sd(args) -> int:
    from .autoencoder import Autoencoder
    from .convert import save_compvis, save_diffusers
    from .unet import UNet

    unet = UNet.load(_existing(args.unet, "--unet", "tinyldm train-diffusion"))
    ae = Autoencoder.load(_existing(args.autoencoder, "--autoencoder", "tinyldm convert-sd"))
    text = _text_encoder(args.text_encoder) if args.text_encoder else None
    if args.layout == "compvis":
        save_compvis(args.out, unet, ae, text)
    else:
        save_diffusers(args.out, unet, ae, text)
    print(f"wrote {args.out} in the {args.layout} layout")
    return 0


def _cmd_info(args) -> int:
    from safetensors import SafetensorError, safe_open

    path = Path(args.file)
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            n = len(list(f.keys()))
    except (SafetensorError, OSError, ValueError) as e:
        raise UsageError(f"{path} is not a readable safetensors file ({e}); it may be truncated or another format")
    if meta.get("format") != "tinyldm":
        print(f"{path}: a safetensors file with {n} tensors, not written by tinyldm (no format=tinyldm metadata)")
        return 0
    print(f"{path}: kind={meta.get('kind')!r}, {n} tensors")
    for key in ("config", "extra"):
        if key in meta:
            value = json.loads(meta[key])
            if isinstance(value, dict) and "captions" in value:
                value = {**value, "captions": f"<{len(value['captions'])} captions>"}
            print(f"{key}: {json.dumps(value, indent=1)}")
    return 0


def _cmd_evaluate(args) -> int:
    from .autoencoder import Autoencoder
    from .checkpoint import CheckpointError, check_partner
    from .recipes import sample_test
    from .text import SceneCLIP
    from .unet import UNet

    ae = Autoencoder.load(_existing(args.autoencoder, "--autoencoder", "tinyldm train-autoencoder"))
    unet = UNet.load(_existing(args.unet, "UNET", "tinyldm train-diffusion"))
    if unet.info.get("concat") is not None:
        return _evaluate_concat(args, unet, ae)
    faces = unet.info.get("source") == "faces"
    judge = _judge(args, "faces" if faces else "scenes")
    if faces:
        from .recipes import face_test

        check_partner(unet, ae, "autoencoder", "autoencoder")
        result = face_test(unet.eval(), ae, judge, n=args.n or 256, image_size=args.image_size,
                           s=args.s, steps=args.steps, seed=args.seed)
        print(json.dumps(_rounded({"unet": args.unet, "s": args.s, "steps": args.steps, "seed": args.seed,
                                   **result})))
        return 0
    text_encoder = image_encoder = database = None
    retrieval = unet.info.get("condition") == "retrieval"
    if retrieval:
        from .recipes import course_database

        image_encoder = _image_encoder(args)
    elif unet.config.context_dim is not None:
        text_encoder = SceneCLIP.load(_existing(args.text_encoder, "--text-encoder", "tinyldm train-text-encoder"))
    try:
        check_partner(unet, ae, "autoencoder", "autoencoder")
        if text_encoder is not None:
            check_partner(unet, text_encoder, "text_encoder", "text encoder")
        if image_encoder is not None:
            check_partner(unet, image_encoder, "image_encoder", "image encoder")
    except CheckpointError as e:
        raise UsageError(f"{e} (pass the files it was trained with: --autoencoder, --text-encoder, --image-encoder)")
    extra = {}
    if retrieval:
        trained_with = unet.info.get("database") or {}
        database = course_database(image_encoder, n=args.database_size or trained_with.get("n", 20_000))
        extra["database"] = {"n": len(database), "as_in_training": database.fingerprint == trained_with.get(
            "fingerprint")}
    result = sample_test(unet.eval(), ae, judge, text_encoder, per_class=args.per_class, s=args.s,
                         steps=args.steps, seed=args.seed, image_encoder=image_encoder, database=database)
    print(json.dumps(_rounded({"unet": args.unet, "s": args.s, "steps": args.steps, "seed": args.seed, **extra,
                               **result})))
    return 0


def _evaluate_concat(args, unet, ae) -> int:
    """evaluate for a model with extra input channels: an inpainting model against the training-free baselines on
    its base model (--base, default: the file it was finetuned from), a parsing model by the segmenter's IoU."""
    from .checkpoint import CheckpointError, check_partner
    from .unet import UNet

    try:
        check_partner(unet, ae, "autoencoder", "autoencoder")
    except CheckpointError as e:
        raise UsageError(f"{e} (pass the autoencoder it was trained with: --autoencoder)") from None
    if unet.info["concat"] == "parsing":
        from .metrics import Segmenter
        from .recipes import parsing_test

        segmenter = Segmenter.load(_existing(args.segmenter, "--segmenter", "tinyldm train-segmenter"))
        result = parsing_test(unet.eval(), ae, segmenter, n=args.n or 256, s=args.s, steps=args.steps,
                              seed=args.seed)
    else:
        from .recipes import inpainting_test

        base_path = args.base or unet.info.get("base")
        if not base_path:
            raise UsageError("the file does not name the plain model it was finetuned from: name the model the "
                             "training-free baselines run on with --base")
        base = UNet.load(_existing(base_path, "--base", "tinyldm train-diffusion"))
        judge = _judge(args, unet.info.get("source", "scenes"))
        result = inpainting_test(unet.eval(), base.eval(), ae, judge, n=args.n or 64, s=args.s, steps=args.steps,
                                 seed=args.seed)
        result = {"base": str(base_path), **result}
    print(json.dumps(_rounded({"unet": args.unet, "s": args.s, "steps": args.steps, "seed": args.seed, **result})))
    return 0


def _cmd_retrain_course(args) -> int:
    from .recipes import retrain_course

    results = retrain_course(args.out, device=args.device, scale=args.scale, tiny=args.tiny, seed=args.seed)
    print(json.dumps(results, indent=1))
    return 0


def _cmd_exercises(args) -> int:
    from .exercises import EXERCISES, progress
    from .exercises.core import in_course_order
    from .exercises.notebooks import reset, solve

    if args.action == "list":
        for name in in_course_order():
            print(f"{name:<26} {EXERCISES[name].title}")
    elif args.action == "progress":
        progress()
    elif not args.notebooks:
        raise UsageError(f"exercises {args.action} needs the notebooks to work on, e.g. notebooks/*.ipynb")
    elif args.action == "solve":
        for path in args.notebooks:
            print(f"{path} -> {solve(path, args.out)}")
    else:  # reset
        for path in args.notebooks:
            print(f"{path}: {reset(path)} exercise cells back to their stubs")
    return 0


def _rounded(value):
    """Shares to 4 decimals, in nested dicts, for printing."""
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return round(value, 4) if isinstance(value, float) else value


def _run_flags(p: argparse.ArgumentParser, name: str, steps: int, batch_size: int, lr: float) -> None:
    """What every training command takes: length, batch, lr, seed, device, the run folder and the model file."""
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--lr", type=float, default=lr,
                   help=None if lr is not None else "peak learning rate (default: 1e-3; with --init, finetuning: "
                                                    "%s)" % FINETUNE_LR)
    p.add_argument("--seed", type=int, default=0, help="initial weights and every random draw of training")
    p.add_argument("--device", default=None)
    p.add_argument("--run-dir", default=str(BUILD_DIR / "runs" / name),
                   help="the run's folder: training state, samples and (without --out) the model file")
    p.add_argument("--out", default=None, help=f"the model file (default: RUN_DIR/model.safetensors); replace a "
                                              f"course checkpoint only on purpose, e.g. --out {DATA_DIR.name}/...")


def _resumable_flags(p: argparse.ArgumentParser, warmup: int, ckpt_every: int) -> None:
    """The Trainer's options of the long, resumable commands (under torchrun they train on every process)."""
    p.add_argument("--warmup", type=int, default=warmup)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--ckpt-every", type=int, default=ckpt_every)
    p.add_argument("--restart", action="store_true", help="start over, replacing an existing run in --run-dir")
    p.add_argument("--log-every", type=int, default=None,
                   help="read the loss back from the device every N steps (default: every step on a CPU, every 25 on "
                        "a GPU, so that the host does not wait for it)")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format (faster convolutions "
                                                                 "on GPUs with tensor cores)")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (GPUs; the first steps compile)")
    p.add_argument("--no-tf32", action="store_true", help="keep float32 matmuls on CUDA exact (TF32 is on by default)")


def _speed(args) -> dict:
    """The TrainConfig fields of the resumable commands' flags."""
    return dict(ema_decay=args.ema, ckpt_every=args.ckpt_every, precision=args.precision, num_workers=args.workers,
                log_every=args.log_every, channels_last=args.channels_last, compile=args.compile,
                tf32=not args.no_tf32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tinyldm", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("course", help="execute notebooks headless in walkthrough mode")
    p.add_argument("notebooks", nargs="*")
    p.add_argument("--out", default=str(BUILD_DIR / "notebooks"))
    p.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    p.set_defaults(fn=_cmd_course)

    p = sub.add_parser("train-autoencoder", help="train an autoencoder on procedural scenes")
    p.add_argument("--preset", default="course")
    p.add_argument("--size", type=int, default=64, help="image side in pixels")
    p.add_argument("--crop", type=int, default=32, help="train on random crops of this side (0: whole images)")
    p.add_argument("--whole-image-steps", type=int, default=400,
                   help="with --crop, the last steps train on whole images (GroupNorm statistics differ on crops)")
    p.add_argument("--data", default="scenes", help=DATA_HELP)
    p.add_argument("--max-objects", type=int, default=2)
    p.add_argument("--n-images", type=int, default=50_000, help="distinct training images (at most)")
    p.add_argument("--init", default=None, help="fine-tune this saved autoencoder (its file sets the architecture)")
    p.add_argument("--kl-weight", type=float, default=None, help="weight of the KL term (default: the preset's)")
    _run_flags(p, "autoencoder", steps=4400, batch_size=32, lr=1e-3)
    _resumable_flags(p, warmup=100, ckpt_every=250)
    p.set_defaults(fn=_cmd_train_autoencoder)

    p = sub.add_parser("train-diffusion", help="train an eps-prediction UNet on cached latents (Algorithm 1)")
    p.add_argument("--preset", default="course", help="UNet preset, one of " + ", ".join(UNET_PRESETS))
    p.add_argument("--autoencoder", default=str(DATA_DIR / "autoencoder-course.safetensors"))
    p.add_argument("--data", default="scenes", help=DATA_HELP)
    p.add_argument("--image-size", type=int, default=64, help="image side in pixels (latents: side / f)")
    p.add_argument("--flip", action="store_true", help="also train on mirrored images (encoded once, cached)")
    p.add_argument("--caption", default="", help="the caption of a folder's images that have no NAME.txt beside them")
    p.add_argument("--schedule", default=None, choices=["linear", "scaled_linear", "cosine"],
                   help="noise schedule: DDPM's linear, Stable Diffusion's scaled_linear, or cosine (default: linear; "
                        "with --init the model's own)")
    p.add_argument("--fsd-every", type=int, default=0,
                   help="every N steps, the FSD of 256 samples to held-out images (scenes or faces), appended to "
                        "RUN_DIR/fsd.jsonl")
    p.add_argument("--judge", default=None, help="with --fsd-every: the judge (default: the course judge of --data)")
    p.add_argument("--grad-checkpointing", action="store_true",
                   help="recompute activations in the backward pass: far less memory for about a third more compute")
    p.add_argument("--freeze", default="", help="with --init: parts that keep their weights, e.g. down,mid,time_embed")
    p.add_argument("--n-images", type=int, default=20_000, help="images to encode and train on (at most)")
    p.add_argument("--max-objects", type=int, default=1)
    p.add_argument("--sizes", default=",".join(COURSE_SCENES["sizes"]),
                   help="the object sizes of the training scenes, from " + ", ".join(SIZES) + " (default: %(default)s)")
    p.add_argument("--upright", action=argparse.BooleanOptionalAction, default=COURSE_SCENES["upright"],
                   help="every object upright; --no-upright: at random rotations (default: %(default)s)")
    _run_flags(p, "diffusion", steps=8000, batch_size=64, lr=None)
    _resumable_flags(p, warmup=200, ckpt_every=500)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--cooldown", type=int, default=0,
                   help="the lr falls linearly to 0 over the last N steps (resuming a run with a cool-down added "
                        "gives the same result as an uninterrupted one)")
    p.add_argument("--sample-every", type=int, default=1000, help="steps between sample grids in run-dir/samples")
    p.add_argument("--condition", default="none", choices=CONDITIONS,
                   help="unconditional, class labels (with a null label), captions (cross-attention) or retrieved "
                        "neighbours (cross-attention to their image embeddings)")
    p.add_argument("--p-uncond", type=float, default=0.1, help="condition dropout for classifier-free guidance")
    p.add_argument("--text-encoder", default=str(DATA_DIR / "text-scenes.safetensors"),
                   help="with --condition text: the frozen text encoder: a SceneCLIP file, a CLIP folder or hub id "
                        "in the Hugging Face cache (openai/clip-vit-large-patch14), or a Stable Diffusion folder")
    p.add_argument("--image-encoder", default=str(DATA_DIR / "text-scenes.safetensors"),
                   help="with --condition retrieval: the SceneCLIP whose image tower embeds the scenes")
    p.add_argument("--k", type=int, default=4, help="with --condition retrieval: neighbours per image")
    p.add_argument("--database-size", type=int, default=COURSE_DATABASE["n"],
                   help="with --condition retrieval: scenes in the course database (disjoint from the training set)")
    p.add_argument("--snr-gamma", type=float, default=None,
                   help="Min-SNR loss weighting with this gamma (e.g. 5); default: the plain loss of Algorithm 1")
    p.add_argument("--x0-cap", type=float, default=None,
                   help="weight the loss by clamp(1 / snr_t, 1, X0_CAP): the error of the implied x_0 where noise "
                        "dominates (e.g. 20; what an inpainting finetune needs to learn the layout at high noise)")
    p.add_argument("--hold-out", default="", help="class labels to leave out of training, e.g. 16,22")
    p.add_argument("--init", default=None,
                   help="go on training this saved UNet (fresh optimizer and lr schedule; its file sets the network)")
    p.add_argument("--concat", default="none", choices=["none", "inpaint", "parsing"],
                   help="extra input channels beside the latent: inpaint (the mask and the masked image's latent: an "
                        "inpainting model) or parsing (a face-parsing map, --data faces); an --init without them gets "
                        "them zero-initialised")
    p.add_argument("--masks", default=None,
                   help="with --concat inpaint: the mix of mask kinds, e.g. boxes=0.25,strokes=0.25,outpaint=0.1,"
                        "object=0.15,everything=0.25 (the default)")
    p.add_argument("--mask-variants", type=int, default=4,
                   help="with --concat inpaint: masked copies of every training image, encoded once")
    p.add_argument("--parsing-maps", default=None,
                   help="with --concat parsing and a folder of photos: their face-parsing annotations in "
                        "CelebAMask-HQ's formats (a label image NAME.png per photo, or its per-part masks)")
    p.set_defaults(fn=_cmd_train_diffusion)

    p = sub.add_parser("train-judge", help="train the judge that scores generated scenes or faces (metrics)")
    p.add_argument("--data", default="scenes", choices=["scenes", "faces"], help="what the judge learns to read")
    p.add_argument("--init", default=None, help="go on training this saved judge")
    _run_flags(p, "judge", steps=3000, batch_size=64, lr=2e-3)
    p.set_defaults(fn=_cmd_train_judge)

    p = sub.add_parser("train-segmenter", help="train the face-parsing segmenter that scores mask-conditioned faces")
    p.add_argument("--init", default=None, help="go on training this saved segmenter")
    _run_flags(p, "segmenter", steps=2000, batch_size=32, lr=2e-3)
    p.set_defaults(fn=_cmd_train_segmenter)

    p = sub.add_parser("train-text-encoder", help="train the offline CLIP-style text encoder on scene captions")
    _run_flags(p, "text-encoder", steps=1000, batch_size=64, lr=1e-3)
    p.set_defaults(fn=_cmd_train_text_encoder)

    p = sub.add_parser("evaluate", help="sample a trained UNet (24 classes x --per-class) and print what the "
                                        "judge reads: shape and colour right, or the shape mix")
    p.add_argument("unet", help="a UNet file made by train-diffusion")
    p.add_argument("--autoencoder", default=str(DATA_DIR / "autoencoder-course.safetensors"))
    p.add_argument("--judge", default=None, help="the judge file (default: the course judge of the model's data, "
                                                 "data/judge-scenes64.safetensors or data/judge-faces.safetensors)")
    p.add_argument("--n", type=int, default=None, help="face models: samples for the FSD (default 256); inpainting "
                                                       "models: held-out images per mask kind (default 64)")
    p.add_argument("--base", default=None, help="inpainting models: the plain model the training-free baselines run "
                                                "on (default: the one it was finetuned from, as its file records)")
    p.add_argument("--segmenter", default=str(DATA_DIR / "segmenter-faces.safetensors"),
                   help="parsing models: the face-parsing segmenter that reads the samples' maps")
    p.add_argument("--image-size", type=int, default=None,
                   help="face models: sample at this size (default: the size the model was trained at)")
    p.add_argument("--text-encoder", default=str(DATA_DIR / "text-scenes.safetensors"))
    p.add_argument("--image-encoder", default=str(DATA_DIR / "text-scenes.safetensors"),
                   help="retrieval models: the SceneCLIP whose image tower made the database")
    p.add_argument("--database-size", type=int, default=None,
                   help="retrieval models: scenes in the course database (default: as in training)")
    p.add_argument("--per-class", type=int, default=10, help="samples per class")
    p.add_argument("--s", type=float, default=3.0, help="guidance scale (conditional models)")
    p.add_argument("--steps", type=int, default=20, help="DDIM steps")
    p.add_argument("--seed", type=int, default=1, help="the samples' noise")
    p.set_defaults(fn=_cmd_evaluate)

    p = sub.add_parser("convert-sd", help="Stable Diffusion v1 weights (a diffusers folder or a single .safetensors "
                                          "file, local) as tinyldm's own UNet and autoencoder files")
    p.add_argument("source", help="a diffusers folder, a CompVis single-file .safetensors, or a hub id in the cache")
    p.add_argument("--out", required=True, help="the folder for unet.safetensors and autoencoder.safetensors")
    p.set_defaults(fn=_cmd_convert_sd)

    p = sub.add_parser("export-sd", help="a tinyldm UNet and autoencoder (a finetune of SD) in Stable Diffusion's "
                                         "layouts, for other tools")
    p.add_argument("--unet", required=True)
    p.add_argument("--autoencoder", required=True)
    p.add_argument("--text-encoder", default=None, help="also the CLIP text encoder (an SD folder or a CLIP folder)")
    p.add_argument("--layout", choices=["compvis", "diffusers"], default="diffusers")
    p.add_argument("--out", required=True, help="a .safetensors file (compvis) or a folder (diffusers)")
    p.set_defaults(fn=_cmd_export_sd)

    p = sub.add_parser("retrain-course", help="train the course's autoencoder, text encoder and four UNets again, "
                                              "larger and longer (one GPU: about five minutes), and test them")
    p.add_argument("--out", default=str(BUILD_DIR / "course-gpu"), help="the folder for the model files and results")
    p.add_argument("--device", default=None)
    p.add_argument("--scale", type=float, default=1.0, help="multiply every step count")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="tiny sizes (the code path, on any machine)")
    p.set_defaults(fn=_cmd_retrain_course)

    p = sub.add_parser("exercises", help="the course's exercises: list them, show your progress, or (instructors) "
                                         "fill the solutions into copies of the notebooks, or put the stubs back")
    p.add_argument("action", choices=["list", "progress", "solve", "reset"])
    p.add_argument("notebooks", nargs="*", help="solve / reset: the notebooks")
    p.add_argument("--out", default=str(BUILD_DIR / "solved"), help="solve: the folder for the solved copies")
    p.set_defaults(fn=_cmd_exercises)

    p = sub.add_parser("info", help="describe a tinyldm .safetensors file")
    p.add_argument("file")
    p.set_defaults(fn=_cmd_info)

    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except UsageError as e:
        print(f"tinyldm {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
