"""Device handling of sampling and evaluation, on the CPU: per-seed noise drawn on the CPU, generation in chunks,
samples returned where asked. tests/test_cuda.py runs the same paths on a GPU."""
import torch
from torch import nn

from disback.edm_settings import EVAL_BATCH
from disback.generator import OneStepGenerator, generate, make_generator, module_device
from disback.networks.presets import random_edm_teacher
from disback.settings import load_setting


class Elementwise(nn.Module):
    """D(x, sigma, labels) = tanh(w x + b[label]): each output element depends on its own input element alone, so
    any batching of the seeds gives bitwise the same samples (a test of the chunking, not of the kernels)."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.w, self.b = nn.Parameter(torch.tensor(0.7)), nn.Parameter(torch.linspace(-1, 1, classes))

    def forward(self, x, sigma, labels=None):
        shift = 0 if labels is None else self.b[labels].reshape(-1, *[1] * (x.ndim - 1))
        return torch.tanh(self.w * x / sigma + shift)


def test_generation_in_chunks_is_bitwise_one_batch():
    g = OneStepGenerator(Elementwise(), 2.5)
    whole, labels = generate(g, range(100, 123), (3, 4, 4), label_dim=3)
    for batch in (1, 5, 22, 23, 4096):
        chunked, chunk_labels = generate(g, range(100, 123), (3, 4, 4), label_dim=3, batch=batch)
        assert torch.equal(chunked, whole) and torch.equal(chunk_labels, labels), batch
    part, _ = generate(g, range(110, 113), (3, 4, 4), label_dim=3, batch=2)  # sample i depends on seed i alone
    assert torch.equal(part, whole[10:13])


def test_generation_in_chunks_of_an_edm_generator_matches_to_float_rounding():
    teacher = random_edm_teacher("imagenet64", "tiny", 8, 0)
    g = make_generator(teacher, 2.5)
    whole, labels = generate(g, range(10), teacher.data_shape, teacher.label_dim)
    chunked, chunk_labels = generate(g, range(10), teacher.data_shape, teacher.label_dim, batch=3)
    assert torch.equal(labels, chunk_labels)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)


def test_samples_come_back_where_asked_and_the_setting_evaluates_in_its_batch():
    g = OneStepGenerator(Elementwise(), 2.5)
    x, _ = generate(g, range(4), (3, 4, 4), 3, device="meta")
    assert x.device.type == "meta"
    assert module_device(nn.Identity()) == torch.device("cpu")
    s = load_setting("ffhq64", tiny=True, resolution=8, num_reference=8, device="cpu")
    assert s.eval_batch == EVAL_BATCH and load_setting("ring2d", num_train=10, num_reference=10).eval_batch == 4096
    assert next(s.teacher_fn().parameters()).device == torch.device("cpu")
    assert isinstance(s.evaluate(make_generator(s.teacher_fn(), 2.5), 6)["fid"], float)
