"""tinyldm: latent diffusion, built step by step in the course's notebooks and tested here.

Modules, bottom to top (nothing imports upward):
    config      fast mode, devices, seeds, where files go
    data        procedural scenes (image, label, caption, masks) and real-image loaders
    schedule    beta schedules and the forward process q(x_t | x_0); the time convention
    checkpoint  safetensors model files and atomic, weights-only training states
    autoencoder the KL autoencoder: images <-> latents
    latents     encode a dataset once and cache its latents
    train       one trainer (AdamW, warm-up, EMA, accumulation, bf16, checkpoints, resume)
    viz         image grids, latent channels, loss curves
    pretrained  the course's small checkpoints in data/: load them, or make them again
    cli         the ``tinyldm`` command
"""

from .autoencoder import Autoencoder, AutoencoderConfig, autoencoder_loss, psnr, reconstruction_psnr
from .config import fast_mode, mode_banner, pick, seed_everything
from .data import ImageFolder, RandomCrops, Scenes, TorchvisionImages
from .latents import LatentDataset, encode_dataset, load_or_encode
from .schedule import BetaSchedule, NoiseSchedule, ScheduleConfig
from .train import TrainConfig, Trainer, TrainingDiverged

__version__ = "0.1.0"
