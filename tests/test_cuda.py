"""Notebook 07's pipeline on a GPU: skipped without CUDA. On a GPU machine run ``pytest tests/test_cuda.py``.

The tiny pipeline runs on "cuda" with finite metrics, and the generator's samples on CUDA match the CPU's to float
rounding (same weights, the same per-seed noise drawn on the CPU). TF32 is off here, so the match is float32's.
"""
import copy
import math

import pytest
import torch

from disback.generator import generate, make_generator, module_device

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def no_tf32():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@pytest.mark.parametrize("setting", ["ffhq64", "imagenet64"])
def test_tiny_pipeline_on_cuda(tiny_paper_pipeline, setting):
    out = tiny_paper_pipeline(setting, "cuda")
    run = out["run"]
    assert module_device(run.teacher).type == "cuda"
    assert module_device(run.setting.metric_fn.extractor()).type == "cuda"
    assert math.isfinite(out["teacher"]["fid"])
    for arm, results in out["arms"].items():
        gen = results[0].generator
        assert module_device(gen).type == "cuda"
        assert all(math.isfinite(r["metrics"]["fid"]) for r in results[0].log if "metrics" in r), arm
        assert math.isfinite(out["final"][arm]["fid"])
        # The trained generator's samples on CUDA against the same weights on the CPU.
        s = run.setting
        on_gpu, labels = generate(gen, range(9), s.data_shape, s.label_dim, batch=4)
        on_cpu, cpu_labels = generate(copy.deepcopy(gen).cpu(), range(9), s.data_shape, s.label_dim)
        assert on_gpu.device.type == "cpu" and (labels is None or torch.equal(labels, cpu_labels))
        torch.testing.assert_close(on_gpu, on_cpu, rtol=1e-4, atol=1e-4)


def test_generator_samples_on_cuda_match_the_cpu():
    from disback.networks.presets import random_edm_teacher

    teacher = random_edm_teacher("imagenet64", "tiny", 8, 0)
    g = make_generator(teacher, 2.5)
    on_cpu, _ = generate(g, range(10), teacher.data_shape, teacher.label_dim)
    on_gpu, _ = generate(copy.deepcopy(g).cuda(), range(10), teacher.data_shape, teacher.label_dim, batch=3)
    torch.testing.assert_close(on_gpu, on_cpu, rtol=1e-4, atol=1e-4)
    kept, _ = generate(copy.deepcopy(g).cuda(), range(3), teacher.data_shape, teacher.label_dim, device="cuda")
    assert kept.device.type == "cuda"
