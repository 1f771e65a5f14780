"""Stable Diffusion stacks (UNet, VAE, text encoders, scheduler): loaded from a local diffusers folder, or built
offline with random weights (tiny for tests, full SD 1.5 size for timing), and the one-step export.

Nothing here downloads: every ``from_pretrained`` is ``local_files_only``; the random stacks come from configs
written in code and a character-level CLIP vocabulary this module writes itself.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .sd import GENERATOR_TIMESTEP, SDDenoiser, add_lora, encode_prompts, merge_lora

KINDS = ("sd15", "sdxl")
SD_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                steps_offset=1, clip_sample=False)  # as SD 1.5's scheduler config


@dataclass
class SDStack:
    kind: str             # "sd15" (one text encoder) or "sdxl" (two, plus size/crop conditioning)
    unet: torch.nn.Module
    vae: torch.nn.Module
    tokenizers: list
    text_encoders: list
    scheduler: object     # a diffusers scheduler with alphas_cumprod and config.prediction_type
    resolution: int       # image side in pixels

    @property
    def latent_shape(self) -> tuple:
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return (self.unet.config.in_channels, self.resolution // factor, self.resolution // factor)


def make_teacher(stack: SDStack, prompts: list[str], guidance_scale: float = 1.0, lora_rank: int = 0,
                 autocast: torch.dtype | None = None, device=None) -> SDDenoiser:
    """The teacher denoiser of ``stack`` conditioned on ``prompts`` (labels index them); LoRA adapters when
    ``lora_rank > 0`` (zero-initialised: the teacher is unchanged, its trainable copies train only the adapters)."""
    for enc in stack.text_encoders:
        enc.to(device)
    bank = encode_prompts(prompts, stack.tokenizers, stack.text_encoders, stack.resolution, device=device)
    unet = add_lora(copy.deepcopy(stack.unet), lora_rank) if lora_rank > 0 else stack.unet
    teacher = SDDenoiser(unet, stack.scheduler.alphas_cumprod, stack.scheduler.config.prediction_type, bank,
                         stack.latent_shape, guidance_scale, autocast)
    return teacher.to(device).eval().requires_grad_(False)


@torch.no_grad()
def decode(stack: SDStack, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents ``[N, C, h, w]`` -> images ``[N, 3, H, W]`` in [0, 1]."""
    vae = stack.vae
    out = vae.decode(latents.to(next(vae.parameters()).device) / vae.config.scaling_factor).sample
    return ((out.float() + 1) / 2).clamp(0, 1).cpu()


# ---- Loading from local folders ------------------------------------------------------------------------------------

def load_stack(folder, kind: str, resolution: int | None = None) -> SDStack:
    """A diffusers Stable Diffusion folder (``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``;
    SDXL also ``text_encoder_2/``, ``tokenizer_2/``), read locally."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: must be one of {KINDS}")
    folder = Path(folder)
    if not (folder / "unet").is_dir():
        raise FileNotFoundError(f"{folder}: not a diffusers Stable Diffusion folder (no unet/)")
    local = dict(local_files_only=True)
    tokenizers = [CLIPTokenizer.from_pretrained(folder / "tokenizer", **local)]
    encoders = [CLIPTextModel.from_pretrained(folder / "text_encoder", **local)]
    if kind == "sdxl":
        tokenizers.append(CLIPTokenizer.from_pretrained(folder / "tokenizer_2", **local))
        encoders.append(CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2", **local))
    unet = UNet2DConditionModel.from_pretrained(folder / "unet", **local)
    vae = AutoencoderKL.from_pretrained(folder / "vae", **local)
    scheduler = DDPMScheduler.from_pretrained(folder / "scheduler", **local)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    return SDStack(kind, unet, vae, tokenizers, encoders, scheduler, resolution or unet.config.sample_size * factor)


def load_one_step_unet(path, stack: SDStack) -> torch.nn.Module:
    """A released one-step UNet (e.g. the DMD2 / DisBack SDXL checkpoint) from a local diffusers folder or a state
    dict file (``.safetensors``, or ``.bin`` read with ``weights_only``), loaded strictly into ``stack``'s UNet."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir():
        return UNet2DConditionModel.from_pretrained(path, local_files_only=True)
    state = load_file(path) if path.suffix == ".safetensors" else torch.load(path, map_location="cpu",
                                                                              weights_only=True)
    unet = copy.deepcopy(stack.unet)
    unet.load_state_dict(state, strict=True)
    return unet


# ---- Export --------------------------------------------------------------------------------------------------------

def one_step_scheduler(stack: SDStack):
    """Euler with leading spacing: called with ``timesteps=[399]`` it takes one step at t = 399 from unit noise
    (initial sigma sqrt(1 + sigma_399^2)), exactly the one-step generator ``G(z) = D(sqrt(1 + sigma^2) z, sigma)``."""
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler.from_config(stack.scheduler.config, timestep_spacing="leading", steps_offset=1)


ONE_STEP_CALL = dict(timesteps=[GENERATOR_TIMESTEP], guidance_scale=0.0)  # pipe(prompt, **ONE_STEP_CALL)


def pipeline(stack: SDStack, unet=None, scheduler=None):
    """A standard diffusers pipeline (StableDiffusion or StableDiffusionXL) around ``stack``."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    parts = dict(vae=stack.vae, unet=unet or stack.unet, scheduler=scheduler or stack.scheduler,
                 text_encoder=stack.text_encoders[0], tokenizer=stack.tokenizers[0])
    if stack.kind == "sdxl":
        return StableDiffusionXLPipeline(text_encoder_2=stack.text_encoders[1], tokenizer_2=stack.tokenizers[1],
                                         **parts)
    return StableDiffusionPipeline(safety_checker=None, feature_extractor=None, requires_safety_checker=False,
                                   **parts)


def export_one_step(generator, stack: SDStack, folder) -> Path:
    """Save a trained one-step generator as a diffusers pipeline folder (LoRA merged). Sample it in one step with
    ``Pipeline.from_pretrained(folder)(prompt, timesteps=[399], guidance_scale=0)`` (``ONE_STEP_CALL``)."""
    unet = merge_lora(generator.denoiser.unet).float().cpu()
    pipe = pipeline(stack, unet=unet, scheduler=one_step_scheduler(stack))
    pipe.save_pretrained(folder, safe_serialization=True)
    return Path(folder)


# ---- Random stacks, offline ----------------------------------------------------------------------------------------

def write_char_vocab(folder) -> Path:
    """A character-level CLIP BPE vocabulary (every byte symbol, alone and word-final, no merges) in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    keep = [b for b in range(256) if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255]
    symbols = [chr(b) for b in keep] + [chr(256 + i) for i in range(256 - len(keep))]  # GPT-2 byte-to-unicode
    vocab = symbols + [c + "</w>" for c in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return folder


# Configs of the random stacks: "tiny" runs on a CPU in seconds; "sd15" has SD 1.5's shapes (UNet ~860M parameters,
# CLIP ViT-L/14 text encoder, the SD VAE).
TEXT = {"tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                     max_position_embeddings=16, vocab_size=514, projection_dim=32),
        "sd15": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                     max_position_embeddings=77, vocab_size=49408, projection_dim=768)}
UNET = {"tiny": dict(block_out_channels=(32, 64), layers_per_block=1, down_block_types=(
                     "CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                     attention_head_dim=4, norm_num_groups=8, sample_size=8),
        "sd15": dict(sample_size=64)}  # diffusers' defaults are SD 1.5's UNet
VAE = {"tiny": dict(block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                    up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, norm_num_groups=8, sample_size=16),
       "sd15": dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                    up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, sample_size=512)}
RESOLUTION = {"tiny": 16, "sd15": 512}


def random_stack(folder, size: str = "tiny", kind: str = "sd15", prediction_type: str = "epsilon",
                 seed: int = 0, device=None) -> SDStack:
    """An SD-style stack with random weights from the configs above (``size`` "tiny" or "sd15"), initialised on
    ``device``; the tokenizer's vocabulary is written to ``folder``. ``kind="sdxl"`` adds the second text encoder
    and SDXL's added conditioning (size and crop time ids, pooled text embedding)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    if size not in UNET or kind not in KINDS:
        raise ValueError(f"size={size!r}, kind={kind!r}: must be one of {tuple(UNET)} and {KINDS}")
    vocab = write_char_vocab(Path(folder) / "tokenizer")
    text = TEXT[size]
    with torch.random.fork_rng(devices=[]), torch.device(device or "cpu"):
        torch.manual_seed(seed)
        tok = CLIPTokenizer(str(vocab / "vocab.json"), str(vocab / "merges.txt"),
                            model_max_length=text["max_position_embeddings"])
        ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        tokenizers, encoders = [tok], [CLIPTextModel(CLIPTextConfig(**text, **ids))]
        unet_cfg = dict(UNET[size], cross_attention_dim=text["hidden_size"])
        if kind == "sdxl":
            tokenizers.append(tok)
            encoders.append(CLIPTextModelWithProjection(CLIPTextConfig(**text, **ids)))
            time_dim = 8 if size == "tiny" else 256
            unet_cfg.update(cross_attention_dim=2 * text["hidden_size"], addition_embed_type="text_time",
                            addition_time_embed_dim=time_dim,
                            projection_class_embeddings_input_dim=text["projection_dim"] + 6 * time_dim)
        unet = UNet2DConditionModel(**unet_cfg)
        vae = AutoencoderKL(latent_channels=4, **VAE[size])
    scheduler = DDPMScheduler(prediction_type=prediction_type, **SD_BETAS)
    return SDStack(kind, unet, vae, tokenizers, encoders, scheduler, RESOLUTION[size])
