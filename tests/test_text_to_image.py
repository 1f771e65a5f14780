"""Text-to-image (Stable Diffusion through diffusers): the eps/v -> denoiser conversion against diffusers' own
scheduler, the one-step generator at t = 399, backtracking through the shared loops on a tiny random SD stack,
LoRA, and the one-step export into a standard diffusers pipeline."""
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from diffusers import DDPMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline  # noqa: E402

from disback import DegradeConfig, DistillConfig, backtrack, distill, record_degradation  # noqa: E402
from disback.checkpoint import fingerprint, load_tensors, read_jsonl, tensor_digest  # noqa: E402
from disback.generator import make_generator  # noqa: E402
from disback.sd import SDDenoiser, PromptBank, timestep_for_sigma  # noqa: E402
from disback.sd_stack import (ONE_STEP_CALL, SD_BETAS, export_one_step, load_one_step_unet, make_teacher,  # noqa: E402
                              random_stack)

PROMPTS = ["a red cat", "a blue house", "two birds on a tree"]


class StubUNet(torch.nn.Module):
    """Returns a fixed output and records what it was called with."""

    def __init__(self, out):
        super().__init__()
        self.out, self.calls = out, []
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, sample, timestep, encoder_hidden_states=None, return_dict=False, **_):
        self.calls.append((sample.clone(), timestep.clone()))
        return (self.out.clone(),)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    return random_stack(tmp_path_factory.mktemp("sd15"), "tiny", "sd15")


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_conversion_matches_diffusers_scheduler(prediction_type):
    scheduler = DDPMScheduler(prediction_type=prediction_type, **{**SD_BETAS, "steps_offset": 0})  # every t a step
    scheduler.set_timesteps(1000)
    gen = torch.Generator().manual_seed(0)
    out = torch.randn(2, 4, 8, 8, generator=gen)
    bank = PromptBank(["a"], torch.zeros(1, 3, 5), torch.zeros(1, 3, 5))
    unet = StubUNet(out)
    d = SDDenoiser(unet, scheduler.alphas_cumprod, prediction_type, bank, (4, 8, 8))
    abar = scheduler.alphas_cumprod.double()
    for t in (0, 50, 399, 700, 999):
        sigma = d.sigma_at(t)
        assert sigma == pytest.approx(((1 - abar[t]) / abar[t]).sqrt().item(), rel=1e-12)
        x = torch.randn(2, 4, 8, 8, generator=gen)
        got = d(x, sigma, torch.zeros(2, dtype=torch.long))
        z_t, t_in = unet.calls[-1]
        assert torch.equal(t_in, torch.full((2,), float(t)))        # the UNet sees timestep t exactly
        torch.testing.assert_close(z_t, (x / (1 + sigma ** 2) ** 0.5).float())  # ... and z_t = sqrt(abar) x
        ref = scheduler.step(out, t, z_t).pred_original_sample       # diffusers' own x0 prediction
        torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-4)
        a, s = abar[t].sqrt().item(), (1 - abar[t]).sqrt().item()   # closed forms on the VP schedule
        closed = (z_t - s * out) / a if prediction_type == "epsilon" else a * z_t - s * out
        torch.testing.assert_close(got, closed, atol=2e-5, rtol=1e-4)


def test_timestep_for_sigma_interpolates_in_log_sigma():
    sigmas = torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64)
    t = timestep_for_sigma(torch.tensor([0.1, 10 ** -0.5, 1.0, 10 ** 0.5, 100.0, 0.01]), sigmas)
    torch.testing.assert_close(t, torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 0.0]))


def test_one_step_generator_starts_as_teacher_single_step(stack):
    teacher = make_teacher(stack, PROMPTS, guidance_scale=3.0)
    generator = make_generator(teacher, teacher.sigma_at(399))
    assert generator.denoiser.guidance_scale == 1.0 and teacher.guidance_scale == 3.0
    z = torch.randn(3, *teacher.data_shape, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([2, 0, 1])
    with torch.no_grad():
        got = generator(z, labels)
        # DMD2's one-step setting: unit noise as the UNet's latent at t = 399, prompt embeddings of the labels.
        eps = stack.unet(z, torch.full((3,), 399), encoder_hidden_states=teacher.bank.embeds[labels]).sample
    abar = stack.scheduler.alphas_cumprod[399].double()
    torch.testing.assert_close(got, ((z - (1 - abar).sqrt() * eps) / abar.sqrt()).float(), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_guidance_is_uncond_plus_scale_times_the_difference(kind, stack, tmp_path):
    stack = stack if kind == "sd15" else random_stack(tmp_path / kind, "tiny", kind)
    guided, plain = make_teacher(stack, PROMPTS, guidance_scale=3.0), make_teacher(stack, PROMPTS)
    x = torch.randn(3, *plain.data_shape, generator=torch.Generator().manual_seed(2))
    sigma, labels = torch.tensor([0.5, 2.0, 8.0]), torch.tensor([1, 2, 0])
    with torch.no_grad():
        cond, uncond = plain(x, sigma, labels), plain(x, sigma, None)  # labels None: the unconditional input
        torch.testing.assert_close(guided(x, sigma, labels), uncond + 3.0 * (cond - uncond), atol=3e-4, rtol=1e-3)


def test_backtracking_switches_the_target_unet_and_ends_on_the_teacher(stack, tmp_path):
    teacher = make_teacher(stack, PROMPTS, guidance_scale=2.0)
    sigma = teacher.sigma_at(399)
    common = dict(batch=2, sigma_init=sigma, p_mean=-0.4, p_std=1.6)
    path = record_degradation(teacher, DegradeConfig(iters=6, num_nodes=3, lr=1e-2, **common), tmp_path / "deg",
                              progress=False)
    config = DistillConfig(method="dmd", iters=6, iters_per_node=2, lr_gen=1e-4, lr_fake=1e-3, eval_every=0,
                           **common)
    result = backtrack(teacher, path, config, tmp_path / "dis", progress=False)
    log = read_jsonl(tmp_path / "dis" / "log.jsonl")
    switches = [(r["step"], r["node"], r["target_fingerprint"]) for r in log if "target_fingerprint" in r]
    assert [(s, n) for s, n, _ in switches] == [(1, 2), (3, 1), (5, 0)]  # each scheduled switch, then the teacher
    node_digests = {n["index"]: tensor_digest(load_tensors(path.root / n["file"]))[:16] for n in path.nodes}
    assert node_digests[0] == fingerprint(teacher)[:16]
    for _, node, fp in switches:
        assert fp == node_digests[node]                                  # the log's weights are the node file's
    assert len(set(node_digests.values())) == 4                          # the nodes really differ
    assert log[-1]["node"] == 0 and result.schedule.node_at(config.iters - 1) == 0


def test_lora_trains_only_the_adapters(stack, tmp_path):
    teacher = make_teacher(stack, PROMPTS, lora_rank=4)
    names = [n for n, _ in teacher.named_parameters()]
    assert names and all("lora_" in n for n in names)
    assert any("lora_" not in k for k in teacher.state_dict())          # base weights stay in the state dict
    config = DistillConfig(method="dmd", iters=2, batch=2, lr_gen=1e-2, lr_fake=1e-2, eval_every=0,
                           sigma_init=teacher.sigma_at(399), p_mean=-0.4, p_std=1.6)
    result = distill(teacher, config, tmp_path, progress=False)
    before, after = teacher.state_dict(), result.generator.denoiser.state_dict()
    base = [k for k in before if "lora_" not in k]
    assert all(torch.equal(before[k], after[k]) for k in base)
    assert any(not torch.equal(before[k], after[k]) for k in before if "lora_B" in k)


def test_lora_teacher_is_the_same_whatever_was_drawn_before(stack):
    """LoRA's A comes from a fixed seed: a fresh process (or any RNG state) builds the same teacher, so a run folder
    keyed by its fingerprint resumes; the caller's RNG stream is left as it was."""
    torch.manual_seed(1)
    first = fingerprint(make_teacher(stack, PROMPTS, lora_rank=4))
    torch.manual_seed(2)
    state = torch.get_rng_state()
    assert fingerprint(make_teacher(stack, PROMPTS, lora_rank=4)) == first
    assert torch.equal(torch.get_rng_state(), state)


def test_gradient_checkpointing_changes_memory_not_the_update(stack, tmp_path):
    """One DisBack-loop update with UNet gradient checkpointing gives the same generator as without it."""
    weights = []
    for checkpointing in (False, True):
        teacher = make_teacher(stack, PROMPTS, lora_rank=4, checkpointing=checkpointing)
        config = DistillConfig(method="dmd", iters=1, batch=2, lr_gen=1e-2, lr_fake=1e-2, eval_every=0,
                               sigma_init=teacher.sigma_at(399), p_mean=-0.4, p_std=1.6)
        weights.append(distill(teacher, config, tmp_path / str(checkpointing), progress=False).generator.state_dict())
    assert any(m.gradient_checkpointing for m in teacher.unet.modules() if hasattr(m, "gradient_checkpointing"))
    for k in weights[0]:
        torch.testing.assert_close(weights[0][k], weights[1][k], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kind, prediction_type", [("sd15", "epsilon"), ("sd15", "v_prediction"), ("sdxl", "epsilon")])
def test_exported_generator_samples_in_one_step_in_a_diffusers_pipeline(kind, prediction_type, stack, tmp_path):
    if (kind, prediction_type) != ("sd15", "epsilon"):
        stack = random_stack(tmp_path / kind, "tiny", kind, prediction_type)
    teacher = make_teacher(stack, PROMPTS, lora_rank=4)
    generator = make_generator(teacher, teacher.sigma_at(399))
    with torch.no_grad():  # a "trained" generator: move its adapters off zero
        for n, p in generator.named_parameters():
            p.add_(0.05 * torch.randn_like(p)) if "lora_B" in n else None
    folder = export_one_step(generator, stack, tmp_path / "export")
    cls = StableDiffusionXLPipeline if kind == "sdxl" else StableDiffusionPipeline
    pipe = cls.from_pretrained(folder, local_files_only=True)
    z = torch.randn(1, *teacher.data_shape, generator=torch.Generator().manual_seed(3))
    latent = pipe(PROMPTS[1], latents=z, output_type="latent", **ONE_STEP_CALL).images
    assert pipe.scheduler.timesteps.tolist() == [399]                    # one step, at t = 399
    with torch.no_grad():
        torch.testing.assert_close(latent, generator(z, torch.tensor([1])), atol=1e-4, rtol=1e-4)
    image = pipe(PROMPTS[0], output_type="pt", **ONE_STEP_CALL).images
    assert image.shape == (1, 3, stack.resolution, stack.resolution)


def test_released_one_step_unet_loads_strictly_from_a_file_or_a_folder(stack, tmp_path):
    from safetensors.torch import save_file

    state = {k: v.clone() for k, v in stack.unet.state_dict().items()}
    save_file(state, tmp_path / "unet.safetensors")
    stack.unet.save_pretrained(tmp_path / "unet")
    for source in (tmp_path / "unet.safetensors", tmp_path / "unet"):
        loaded = load_one_step_unet(source, stack).state_dict()
        assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    del state[next(iter(state))]
    save_file(state, tmp_path / "partial.safetensors")
    with pytest.raises(RuntimeError, match="Missing key"):
        load_one_step_unet(tmp_path / "partial.safetensors", stack)


def test_coco_reference_and_clip_score_from_local_files(tmp_path):
    """COCO pairs (one caption per image, images of any size center-cropped to the resolution), streamed reference
    statistics equal to those of the images in memory, and a CLIP score in [0, 100] from a local CLIP folder."""
    from PIL import Image

    from disback.sd_eval import TinyFeatures, clip_score, coco_pairs, image_stats, load_images, reference_stats, \
        tiny_clip

    (tmp_path / "val").mkdir()
    images, annotations = [], []
    for i, size in enumerate([(40, 30), (30, 50), (32, 32), (64, 48)]):
        Image.fromarray(torch.randint(0, 256, (size[1], size[0], 3), dtype=torch.uint8).numpy()).save(
            tmp_path / "val" / f"{i}.png")
        images.append({"id": 10 + i, "file_name": f"{i}.png"})
        annotations += [{"image_id": 10 + i, "caption": f"image {i} first"}, {"image_id": 10 + i, "caption": "other"}]
    (tmp_path / "ann.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    prompts, files = coco_pairs(tmp_path / "ann.json", tmp_path / "val", 3)
    assert len(set(files)) == 3 and all(p == f"image {f.stem} first" for p, f in zip(prompts, files))
    pixels = load_images(files, 16)
    assert pixels.shape == (3, 3, 16, 16) and pixels.dtype == torch.uint8
    extractor = TinyFeatures()
    streamed, in_memory = reference_stats(files, 16, extractor, batch=2), image_stats(pixels, extractor)
    assert all(torch.allclose(torch.as_tensor(streamed[k]), torch.as_tensor(in_memory[k])) for k in ("mu", "sigma"))
    score = clip_score(pixels, prompts, tiny_clip(tmp_path / "clip"))
    assert 0 <= score <= 100


def test_sd_throughput_command_on_the_tiny_stack(tmp_path):
    from disback.__main__ import main

    out = tmp_path / "throughput.json"
    assert main(["sd-throughput", "--size", "tiny", "--updates", "2", "--warmup", "2", "--precision", "fp32",
                 "--lora", "on,off", "--lora-rank", "4", "--batch", "2", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["lora_rank"] for r in rows] == [4, 0] and all(r["updates_per_s"] > 0 for r in rows)


def test_cpu_profile_writes_a_pending_record(tmp_path):
    """Without SD weights, COCO and a GPU, notebook 10 writes a pending record naming them (REPORT.md shows it)."""
    import papermill as pm
    import yaml

    root = Path(__file__).resolve().parents[1]
    params = yaml.safe_load((root / "params/cpu/10_text_to_image__sd15.yaml").read_text())
    pm.execute_notebook(str(root / "notebooks/10_text_to_image.ipynb"), str(tmp_path / "nb.ipynb"),
                        parameters={**params, "profile": "cpu", "results_root": str(tmp_path / "results"),
                                    "runs_root": str(tmp_path / "runs")},
                        kernel_name="disback", cwd=str(root / "notebooks"), progress_bar=False)
    record = json.loads((tmp_path / "results/cpu/metrics/10_text_to_image__sd15.json").read_text())
    assert record["status"] == "pending" and "GPU" in record["missing"] and "SD 1.5" in record["missing"]
