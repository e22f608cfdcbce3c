"""tinyldm: latent diffusion, built step by step in the course's notebooks and tested here.

Modules, bottom to top (nothing imports upward):
    config       fast mode, devices, seeds, where files go
    data         data.scenes: procedural scenes (image, label, caption, masks); data.images: real images, crops
    schedule     beta schedules and the forward process q(x_t | x_0); the time convention
    checkpoint   safetensors model files, atomic weights-only training states, model fingerprints
    layers       building blocks shared by several networks
    autoencoder  the KL autoencoder: images <-> latents
    latents      encode a dataset once and cache its latents
    text         text encoders, one interface: CLIP ViT-L/14 (transformers, local files only), the offline SceneCLIP
    unet         the denoiser eps_theta(x_t, t, y): time embedding, attention, cross-attention, class labels
    metrics      the judge (reads a scene's attributes) and the Frechet Scene Distance
    conditioning class labels and prompts as conditions, condition dropout, classifier-free guidance
    retrieval    image encoders, the embedding database, exact and FAISS nearest-neighbour search, neighbours as
                 the condition (retrieval-augmented diffusion)
    train        one trainer (AdamW, warm-up, EMA, accumulation, bf16, checkpoints, resume); Algorithm 1
    sample       Algorithm 2 (DDPM), DDIM, DPM-Solver++ (2M); the sampling loop
    pipeline     generate: sample, guide, decode (what a user calls to make images)
    convert      Stable Diffusion v1.x's weights (diffusers folders, CompVis files; local files only) in these
                 networks, and back out to SD's layouts
    recipes      the training commands' functions: train_autoencoder, train_diffusion, ...
    pretrained   the course's small checkpoints in data/: where they live, how to load them
    viz          image grids, latent channels, loss curves
    cli          the ``tinyldm`` command
"""

from .autoencoder import Autoencoder, AutoencoderConfig, autoencoder_loss, psnr, reconstruction_psnr
from .conditioning import Guided, LabelCondition, TextCondition, guided_eps
from .config import fast_mode, mode_banner, pick, seed_everything
from .data import ImageFolder, Scenes, TorchvisionImages, random_crops
from .latents import LatentDataset, encode_dataset, load_or_encode
from .metrics import Judge, attribute_accuracy, frechet_distance, fsd
from .pipeline import generate
from .retrieval import CLIPImageEncoder, Database, RetrievalCondition, SceneImageEncoder
from .sample import DDIM, DDPM, DPMSolverPP2M, Variance, sample
from .schedule import BetaSchedule, NoiseSchedule, ScheduleConfig
from .text import CLIPTextEncoder, SceneCLIP, TextEncoder
from .train import EpsLoss, TrainConfig, Trainer, TrainingDiverged
from .unet import UNet, UNetConfig

__version__ = "0.1.0"
