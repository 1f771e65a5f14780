"""Stable Diffusion (diffusers) behind the denoiser interface ``D(x, sigma, labels)`` every loop uses.

A diffusers ``UNet2DConditionModel`` predicts epsilon or v on the variance-preserving (VP) schedule
``z_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` in the VAE's scaled latent space. The loops work on EDM's
variance-exploding form ``x = x0 + sigma n``; the two meet at ``sigma_t = sqrt((1 - abar_t) / abar_t)`` and
``z_t = x / sqrt(1 + sigma^2)``. ``labels`` are integer indices into a ``PromptBank`` of precomputed text
embeddings (one row per prompt of the caption file), so text conditioning flows through the loops exactly as class
labels do; the bank is shared by every copy of the denoiser, never duplicated.

The one-step generator follows DMD2's SD/SDXL setting: the UNet sees unit noise as its noisy latent at a fixed
timestep (399), i.e. ``G(z) = D(sqrt(1 + sigma_399^2) z, sigma_399)`` (``one_step_input_scale``).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .diffusion import expand_sigma

GENERATOR_TIMESTEP = 399  # DMD2's and DisBack's SDXL one-step generator timestep


# ---- Schedule: abar_t <-> sigma, continuous timesteps -------------------------------------------------------------

def sigmas_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """sigma_t = sqrt((1 - abar_t) / abar_t) for each training timestep t (increasing in t)."""
    a = alphas_cumprod.double()
    return ((1 - a) / a).sqrt()


def timestep_for_sigma(sigma: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """The (fractional) timestep whose sigma is ``sigma``, linear in log sigma between table entries; clamped to
    the table's range (outside it the UNet sees its first or last timestep), snapped to integers within 1e-3."""
    log_sigmas = sigmas.log().to(sigma.device)
    s = sigma.double().clamp(sigmas[0].item(), sigmas[-1].item()).log()
    hi = torch.searchsorted(log_sigmas, s).clamp(1, len(sigmas) - 1)
    lo = hi - 1
    w = (s - log_sigmas[lo]) / (log_sigmas[hi] - log_sigmas[lo])
    t = lo.double() + w
    return torch.where((t - t.round()).abs() < 1e-3, t.round(), t).float()


def denoised_from_eps(x: torch.Tensor, sigma: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """D = x - sigma * eps (x = x0 + sigma eps in VE form)."""
    return x - expand_sigma(sigma, x) * eps


def denoised_from_v(x: torch.Tensor, sigma: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """D = x / (1 + sigma^2) - sigma v / sqrt(1 + sigma^2)  (v = sqrt(abar) eps - sqrt(1 - abar) x0)."""
    s = expand_sigma(sigma, x)
    return x / (1 + s ** 2) - s * v / (1 + s ** 2).sqrt()


CONVERSIONS = {"epsilon": denoised_from_eps, "v_prediction": denoised_from_v}


# ---- Text conditioning ---------------------------------------------------------------------------------------------

class PromptBank:
    """Precomputed text conditioning, one row per prompt; ``labels`` index it. Shared (not copied) by deepcopy.

    ``embeds`` [P, L, C]: the UNet's ``encoder_hidden_states``; ``pooled`` [P, Cp] and ``time_ids`` [6] (SDXL's added
    conditioning) or ``None``; ``uncond_*``: the empty prompt's, for classifier-free guidance.
    """

    def __init__(self, prompts: list[str], embeds, uncond_embeds, pooled=None, uncond_pooled=None, time_ids=None):
        if len(prompts) != len(embeds):
            raise ValueError(f"PromptBank: {len(prompts)} prompts but {len(embeds)} embedding rows")
        self.prompts, self.embeds, self.uncond_embeds = list(prompts), embeds, uncond_embeds
        self.pooled, self.uncond_pooled, self.time_ids = pooled, uncond_pooled, time_ids

    def __len__(self) -> int:
        return len(self.prompts)

    def __deepcopy__(self, memo):
        return self

    def condition(self, labels: torch.Tensor | None, n: int, device, uncond: bool = False) -> dict:
        """UNet keyword arguments for ``n`` samples: prompts ``labels`` (or the empty prompt when ``uncond`` or
        ``labels is None``)."""
        if uncond or labels is None:
            rows = self.uncond_embeds.expand(n, -1, -1)
            pooled = None if self.pooled is None else self.uncond_pooled.expand(n, -1)
        else:
            idx = labels.to(self.embeds.device).long()
            rows, pooled = self.embeds[idx], None if self.pooled is None else self.pooled[idx]
        kwargs = {"encoder_hidden_states": rows.to(device)}
        if pooled is not None:
            kwargs["added_cond_kwargs"] = {"text_embeds": pooled.to(device),
                                           "time_ids": self.time_ids.to(device).expand(n, -1)}
        return kwargs


@torch.no_grad()
def encode_prompts(prompts: list[str], tokenizers, text_encoders, size: int | None = None, batch: int = 64,
                   device=None) -> PromptBank:
    """A ``PromptBank`` from one (SD 1.x/2.x) or two (SDXL) tokenizer/text-encoder pairs.

    SDXL: the penultimate hidden states of both encoders, concatenated, and the second encoder's pooled projection,
    with time ids (size, crop (0, 0), size) for ``size``-pixel images; its unconditional input is all zeros
    (diffusers' ``force_zeros_for_empty_prompt``), SD 1.x/2.x's is the empty prompt.
    """
    xl = len(text_encoders) == 2

    def encode(texts):
        hidden, pooled = [], None
        for tok, enc in zip(tokenizers, text_encoders):
            ids = tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                      return_tensors="pt").input_ids.to(device)
            out = enc(ids, output_hidden_states=xl)
            hidden.append(out.hidden_states[-2] if xl else out.last_hidden_state)
            if xl:
                pooled = out.text_embeds if hasattr(out, "text_embeds") else out.pooler_output
        return torch.cat(hidden, dim=-1).float().cpu(), None if pooled is None else pooled.float().cpu()

    parts = [encode(prompts[i:i + batch]) for i in range(0, len(prompts), batch)]
    embeds = torch.cat([p[0] for p in parts])
    uncond, uncond_pooled = encode([""])
    if xl:
        uncond, uncond_pooled = torch.zeros_like(uncond), torch.zeros_like(uncond_pooled)
    pooled = torch.cat([p[1] for p in parts]) if xl else None
    time_ids = torch.tensor([size, size, 0, 0, size, size], dtype=torch.float32) if xl else None
    return PromptBank(prompts, embeds, uncond, pooled, uncond_pooled, time_ids)


# ---- The denoiser --------------------------------------------------------------------------------------------------

class SDDenoiser(nn.Module):
    """D(x, sigma, labels) of a diffusers UNet: VE input -> VP timestep and scaled input -> eps/v -> denoised latent.

    ``guidance_scale`` != 1 applies classifier-free guidance (on the UNet output, with the bank's empty prompt); the
    loops' trainable copies (fake score, generator, degrading copy) drop it (``generator.trainable_copy``): they model
    the generator's own distribution, the guided teacher is the target. ``autocast`` runs the UNet in bf16/fp16.
    """

    sigma_data = 1.0  # the VAE's scaling factor makes latents about unit-variance

    def __init__(self, unet: nn.Module, alphas_cumprod: torch.Tensor, prediction_type: str, bank: PromptBank,
                 latent_shape, guidance_scale: float = 1.0, autocast: torch.dtype | None = None):
        super().__init__()
        if prediction_type not in CONVERSIONS:
            raise ValueError(f"prediction_type={prediction_type!r}: must be one of {tuple(CONVERSIONS)}")
        self.unet = unet
        self.register_buffer("sigmas", sigmas_from_alphas_cumprod(alphas_cumprod), persistent=False)
        self.prediction_type = prediction_type
        self.bank = bank
        self.data_shape = tuple(latent_shape)  # [C, H, W] of the scaled VAE latent
        self.label_dim = len(bank)              # labels index the bank's prompts
        self.guidance_scale = float(guidance_scale)
        self.autocast = autocast

    def sigma_at(self, timestep: int) -> float:
        """The VE sigma of a training timestep."""
        return float(self.sigmas[timestep])

    def one_step_input_scale(self, sigma: float) -> float:
        """Input scale of a one-step generator at ``sigma``: unit noise as the UNet's noisy latent (DMD2)."""
        return math.sqrt(1 + sigma ** 2)

    def _unet(self, z_t, t, cond: dict) -> torch.Tensor:
        with torch.autocast(z_t.device.type, dtype=self.autocast or torch.float32, enabled=self.autocast is not None):
            return self.unet(z_t, t, **cond, return_dict=False)[0].float()

    def forward(self, x: torch.Tensor, sigma, labels: torch.Tensor | None = None) -> torch.Tensor:
        s = expand_sigma(sigma, x)                                   # [N, 1, 1, 1]
        t = timestep_for_sigma(s.flatten(), self.sigmas).to(x.device)
        z_t = x / (1 + s ** 2).sqrt()                                # VP input
        n = len(x)
        cond = self.bank.condition(labels, n, x.device)
        if self.guidance_scale == 1.0:
            out = self._unet(z_t, t, cond)
        else:  # classifier-free guidance in one batch (the conversion to D is affine in the output)
            both = _cat(self.bank.condition(labels, n, x.device, uncond=True), cond)
            uncond, out = self._unet(torch.cat([z_t, z_t]), torch.cat([t, t]), both).chunk(2)
            out = uncond + self.guidance_scale * (out - uncond)
        return CONVERSIONS[self.prediction_type](x, s.flatten(), out).to(x.dtype)


def _cat(a: dict, b: dict) -> dict:
    """Two UNet keyword dicts (tensors, or dicts of tensors) concatenated along the batch."""
    return {k: _cat(v, b[k]) if isinstance(v, dict) else torch.cat([v, b[k]]) for k, v in a.items()}


# ---- LoRA ----------------------------------------------------------------------------------------------------------

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
                "conv2", "conv_shortcut", "time_emb_proj"]


def add_lora(unet: nn.Module, rank: int, targets=None, seed: int = 0) -> nn.Module:
    """Add zero-initialised LoRA adapters (peft) to ``unet`` and turn every other weight into a buffer.

    The output is unchanged at first (LoRA's B starts at zero). With the base weights as buffers, ``parameters()``
    yields the adapters alone, so the shared loops (``requires_grad_``, Adam, EMA) train only them, while
    ``state_dict()`` (path nodes, fingerprints) still holds every weight. LoRA's A is drawn from ``seed`` alone (the
    caller's RNG streams are left as they were), so the same stack always gives the same teacher and fingerprint:
    a run folder resumes in a fresh process whatever it drew before.
    """
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=True, target_modules=targets or LORA_TARGETS)
    cuda = sorted({p.device.index or 0 for p in unet.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(seed)
        for index in cuda:
            torch.cuda.default_generators[index].manual_seed(seed)
        unet = inject_adapter_in_model(config, unet)
    adapters = {id(p) for k, p in unet.named_parameters() if "lora_" in k}
    for module in unet.modules():
        for name, p in list(module._parameters.items()):
            if p is not None and id(p) not in adapters:
                del module._parameters[name]
                module.register_buffer(name, p.detach().requires_grad_(False))
    return unet


def merge_lora(unet: nn.Module) -> nn.Module:
    """A copy of ``unet`` with its LoRA adapters folded into the base weights and removed (plain diffusers UNet)."""
    import copy

    from peft.tuners.lora import LoraLayer

    unet = copy.deepcopy(unet)
    for name, module in list(unet.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            base = module.get_base_layer()
            for k, b in list(base._buffers.items()):  # back to parameters for save_pretrained / from_pretrained
                del base._buffers[k]
                base.register_parameter(k, nn.Parameter(b.detach().clone(), requires_grad=False))
            setattr(unet.get_submodule(parent_name) if parent_name else unet, child, base)
    for module in unet.modules():
        for k, b in list(module._buffers.items()):
            if b is not None and k in ("weight", "bias"):
                del module._buffers[k]
                module.register_parameter(k, nn.Parameter(b.detach().clone(), requires_grad=False))
    return unet
