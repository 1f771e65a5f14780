"""Text-to-image prompts and evaluation: caption files, FID against COCO-2014 validation images through the
repository's Inception path (``disback.inception``), and CLIP score (torchmetrics' definition), all from local files.

COCO protocol (as DMD2's COCO-10k / GigaGAN's 30k): ``count`` validation images, one caption each; the generator
draws one image per caption; real images are center-cropped and resized to the generator's resolution; FID on
Inception pool features; CLIP score (100 x cosine) of each image with its caption.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

SUBJECTS = ["a cat", "a dog", "a red car", "an old man", "a bowl of fruit", "a wooden boat", "a small bird",
            "a city street", "a mountain lake", "a train", "a teddy bear", "a plate of pasta", "a horse", "a clock tower"]
PLACES = ["on a table", "in a park", "at night", "in the snow", "next to a window", "on a beach", "in a kitchen",
          "under a tree", "in the rain", "on a busy road"]
STYLES = ["a photo of", "a close-up photo of", "a painting of", "a blurry photo of", "a black and white photo of"]


def write_prompts(path, count: int, seed: int = 0) -> Path:
    """A caption file of ``count`` generated prompts (style, subject, place), one per line."""
    rng = np.random.default_rng(seed)
    lines = [f"{STYLES[rng.integers(len(STYLES))]} {SUBJECTS[rng.integers(len(SUBJECTS))]} "
             f"{PLACES[rng.integers(len(PLACES))]}" for _ in range(count)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def read_captions(path, count: int | None = None) -> list[str]:
    """Prompts from a text file (one per line) or a COCO captions JSON (``captions_*.json``): the first ``count``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"caption file {path} is missing")
    if path.suffix == ".json":
        captions = [a["caption"].strip() for a in json.loads(path.read_text())["annotations"]]
    else:
        captions = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if count is not None and len(captions) < count:
        raise ValueError(f"{path}: {len(captions)} captions, {count} asked for")
    return captions[:count]


def coco_pairs(annotations, images_dir, count: int, seed: int = 0) -> tuple[list[str], list[Path]]:
    """``count`` COCO validation images drawn with ``seed`` and one caption each (the first listed)."""
    ann = json.loads(Path(annotations).read_text())
    first = {}
    for a in ann["annotations"]:
        first.setdefault(a["image_id"], a["caption"].strip())
    images = sorted(ann["images"], key=lambda im: im["id"])
    pick = np.random.default_rng(seed).permutation(len(images))[:count]
    if len(pick) < count:
        raise ValueError(f"{annotations}: {len(images)} images, {count} asked for")
    files = [Path(images_dir) / images[i]["file_name"] for i in pick]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} COCO images missing under {images_dir}, e.g. {missing[0]}")
    return [first[images[i]["id"]] for i in pick], files


def load_images(files, resolution: int) -> torch.Tensor:
    """Images center-cropped to a square and resized to ``resolution``: uint8 ``[N, 3, R, R]``."""
    from PIL import Image

    out = []
    for f in files:
        img = Image.open(f).convert("RGB")
        side = min(img.size)
        left, top = (img.width - side) // 2, (img.height - side) // 2
        img = img.crop((left, top, left + side, top + side)).resize((resolution, resolution), Image.BICUBIC)
        out.append(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1))
    return torch.stack(out)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] -> uint8."""
    return (images.float().clamp(0, 1) * 255).round().to(torch.uint8)


def fid_against(images: torch.Tensor, reference: torch.Tensor, extractor, batch: int = 100) -> float:
    """FID of uint8 ``images`` against uint8 ``reference`` with ``extractor`` (``inception.inception_extractor``)."""
    from .inception import frechet_distance, image_statistics

    def batches(x):
        return (x[i:i + batch] for i in range(0, len(x), batch))

    return frechet_distance(image_statistics(batches(images), extractor), image_statistics(batches(reference),
                                                                                          extractor))


@torch.no_grad()
def clip_score(images: torch.Tensor, prompts: list[str], clip_dir, batch: int = 64, device="cpu") -> float:
    """Mean CLIP score, 100 x max(cos(image, caption), 0) as torchmetrics defines it, of uint8 ``images`` with
    ``prompts``; CLIP from a local folder (``CLIPModel`` + ``CLIPProcessor`` saved with ``save_pretrained``).

    Computed with transformers' ``CLIPModel`` directly: torchmetrics 1.9's ``CLIPScore`` breaks on transformers 5
    (``get_image_features`` there returns an output object, not a tensor).
    """
    from transformers import CLIPModel, CLIPProcessor

    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    model = CLIPModel.from_pretrained(clip_dir, local_files_only=True).eval().to(device)
    processor = CLIPProcessor.from_pretrained(clip_dir, local_files_only=True)
    scores = []
    for i in range(0, len(images), batch):
        inputs = processor(text=prompts[i:i + batch], images=list(images[i:i + batch]), return_tensors="pt",
                           padding="max_length", truncation=True).to(device)
        out = model(**inputs)
        cos = torch.nn.functional.cosine_similarity(out.image_embeds, out.text_embeds, dim=-1)
        scores.append(100 * cos.clamp_min(0))
    return float(torch.cat(scores).mean())


def tiny_clip(folder) -> Path:
    """A randomly initialised tiny CLIP (32-pixel images, the character vocabulary) saved to ``folder``: smoke scale
    only, its scores mean nothing."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    from .sd_stack import TEXT, write_char_vocab

    vocab = write_char_vocab(Path(folder) / "vocab")
    tok = CLIPTokenizer(str(vocab / "vocab.json"), str(vocab / "merges.txt"), model_max_length=16)
    text = {k: v for k, v in TEXT["tiny"].items() if k != "projection_dim"}
    text.update(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                  patch_size=8)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=32))
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    model.save_pretrained(folder)
    CLIPProcessor(image_processor=images, tokenizer=tok).save_pretrained(folder)
    return Path(folder)


class TinyFeatures(torch.nn.Module):
    """A fixed random conv feature map standing in for Inception at smoke scale (same call: uint8 -> (features,))."""

    def __init__(self, dim: int = 16, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.conv = torch.nn.Conv2d(3, dim, 3, stride=2)

    def forward(self, images: torch.Tensor):
        return (self.conv(images.float() / 127.5 - 1).mean((2, 3)),)


@torch.no_grad()
def sample_images(generator, stack, bank, seeds, batch: int = 16) -> torch.Tensor:
    """One image per seed from a one-step ``generator``, image i from prompt i of ``bank`` (swapped in for the
    call) and noise seeded by ``seeds[i]``: uint8 ``[N, 3, R, R]``."""
    from .generator import seeded_noise
    from .sd_stack import decode

    seeds = list(seeds)
    if len(seeds) > len(bank):
        raise ValueError(f"{len(seeds)} seeds but {len(bank)} prompts in the bank: one prompt per image")
    denoiser, was_training = generator.denoiser, generator.training
    saved, denoiser.bank = denoiser.bank, bank
    generator.eval()
    try:
        device = next(generator.parameters()).device
        out = [to_uint8(decode(stack, generator(seeded_noise(seeds[i:i + batch], denoiser.data_shape, device),
                                                torch.arange(i, min(i + batch, len(seeds))))))
               for i in range(0, len(seeds), batch)]
    finally:
        denoiser.bank = saved
        generator.train(was_training)
    return torch.cat(out)


def evaluate(generator, stack, bank, reference: torch.Tensor, extractor, clip_dir, seed_offset: int = 10 ** 6,
             batch: int = 16) -> dict:
    """FID against uint8 ``reference`` images and CLIP score, one generated image per prompt of ``bank``."""
    images = sample_images(generator, stack, bank, range(seed_offset, seed_offset + len(bank)), batch)
    device = next(generator.parameters()).device
    return {"fid": fid_against(images, reference, extractor),
            "clip_score": clip_score(images, bank.prompts[:len(images)], clip_dir, device=device),
            "num_images": len(images)}
