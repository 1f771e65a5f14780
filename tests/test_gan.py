"""DMD2's optional GAN term: the losses' closed forms, the discriminator head on each network's bottleneck, that the
discriminator learns and the generator feels it, resume, costs, clear errors, and unchanged hashes when it is off."""
import importlib
import json
import math

import pytest
import torch

from disback.checkpoint import load_tensors, read_json
from disback.config import DistillConfig, TeacherConfig
from disback.diffusion import sample_sigma
from disback.distill import distill
from disback.generator import frozen_copy, make_generator, trainable_copy
from disback.losses import discriminator_logits, gan_discriminator_loss, gan_generator_loss
from disback.networks import DhariwalUNet, EDMDenoiser, SongUNet
from disback.networks.discriminator import bottleneck, bottleneck_features, make_discriminator_head
from disback.settings import load_setting
from disback.steps import GANTerm, RealData, adam, fake_score_step
from disback.teachers import train_teacher

DISTILL_MODULE = importlib.import_module("disback.distill")  # the package exports the function under that name
GAN = DistillConfig(method="dmd2", iters=4, batch=16, fake_steps=2, lr_gen=1e-3, eval_every=0, gan_weight=0.2)


@pytest.fixture(scope="module")
def digits():
    s = load_setting("digits", num_reference=100)
    torch.manual_seed(0)
    teacher = train_teacher(s.train, s.train_labels, TeacherConfig(arch="unet", width=8, depth=1, iters=30, batch=32),
                            progress=False)
    return s, teacher


# ---------------------------------------------------------------- losses: closed forms

def test_gan_losses_closed_forms():
    zero = torch.zeros(3)
    assert torch.allclose(gan_discriminator_loss(zero, zero), torch.full((3,), 2 * math.log(2)))
    assert torch.allclose(gan_discriminator_loss(zero, torch.full((3,), -80.0)), torch.full((3,), math.log(2)))
    assert torch.allclose(gan_generator_loss(zero), torch.full((3,), math.log(2)))
    # A confident, correct discriminator costs nothing; the generator's loss then is -log sigmoid(l) ~ -l.
    assert gan_discriminator_loss(torch.tensor([30.0]), torch.tensor([-30.0])).item() < 1e-12
    assert abs(gan_generator_loss(torch.tensor([-30.0])).item() - 30.0) < 1e-6
    # Non-saturating: d/dl [-log sigmoid(l)] = -(1 - sigmoid(l)), large when the discriminator rejects the sample.
    l = torch.tensor([-3.0, 0.0, 2.0], requires_grad=True)
    gan_generator_loss(l).sum().backward()
    assert torch.allclose(l.grad, -(1 - torch.sigmoid(l.detach())))


# ---------------------------------------------------------------- the head on each network's bottleneck

def _edm(model_type, label_dim):
    torch.manual_seed(0)
    net = EDMDenoiser(img_resolution=8, img_channels=3, label_dim=label_dim, model_type=model_type, model_channels=8,
                      channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.0)
    return net.eval()


@pytest.mark.parametrize("kind", ["mlp", "unet", "SongUNet", "DhariwalUNet"])
def test_head_reads_the_bottleneck_without_changing_the_forward(kind, digits):
    if kind == "mlp":
        s = load_setting("ring2d", num_train=256, num_reference=16)
        net = train_teacher(s.train, None, TeacherConfig(width=16, depth=2, iters=2, batch=16), progress=False)
        labels = None
    elif kind == "unet":
        net, labels = digits[1], torch.arange(4)
    else:
        net, labels = _edm(kind, 10), torch.arange(4)
    x, sigma = torch.randn(4, *net.data_shape), torch.tensor([0.1, 0.5, 1.0, 5.0])
    before = net(x, sigma, labels)
    feats = bottleneck_features(net, x, sigma, labels)
    assert torch.equal(net(x, sigma, labels), before)  # the hook is gone and changed nothing
    assert not bottleneck(net)._forward_hooks
    head = make_discriminator_head(net)
    expected = {"mlp": (16,), "unet": (16, 4, 4), "SongUNet": (16, 4, 4), "DhariwalUNet": (16, 4, 4)}[kind]
    assert tuple(feats.shape) == (4, *expected) and head(feats).shape == (4,)
    with pytest.raises(ValueError, match="expected"):
        head(feats[:, :1])


# ---------------------------------------------------------------- the discriminator learns; the generator feels it

def _accuracy(fake, head, generator, s, rng) -> float:
    with torch.no_grad():
        idx = torch.randint(len(s.train), (256,), generator=rng)
        z, labels = torch.randn(256, *s.data_shape, generator=rng), torch.randint(10, (256,), generator=rng)
        sigma = sample_sigma(256, -1.2, 1.2, rng)
        real = discriminator_logits(fake, head, s.train[idx], sigma, torch.randn(256, 1, 8, 8, generator=rng),
                                    s.train_labels[idx])
        gen = discriminator_logits(fake, head, generator(z, labels), sigma, torch.randn(256, 1, 8, 8, generator=rng),
                                   labels)
    return torch.cat([real > 0, gen < 0]).float().mean().item()


def test_discriminator_learns_to_tell_real_from_a_fixed_generator(digits, one_thread):
    s, teacher = digits
    torch.manual_seed(0)
    g0 = frozen_copy(make_generator(teacher, 2.5))
    fake = trainable_copy(teacher).train().requires_grad_(True)
    gan = GANTerm(make_discriminator_head(fake), RealData(s.train, s.train_labels), 0.0, 1e-2)
    opt = adam([*fake.parameters(), *gan.head.parameters()], 3e-3)
    rng = torch.Generator().manual_seed(0)
    before = _accuracy(fake, gan.head, g0, s, torch.Generator().manual_seed(1))
    losses = []
    for k in range(60):
        fake_score_step(fake, opt, g0, 32, -1.2, 1.2, rng, k, gan=gan)
        losses.append(gan.stats["loss_disc"])
    after = _accuracy(fake, gan.head, g0, s, torch.Generator().manual_seed(1))
    print(f"discriminator accuracy before {before:.3f}, after {after:.3f}")
    assert after > 0.75 and after > before + 0.15, (before, after)
    assert sum(losses[-10:]) / 10 < 2 * math.log(2) - 0.2  # below chance's 2 log 2


def test_gan_term_changes_the_generator_by_its_own_gradient(digits, tmp_path, one_thread):
    """Same draws with gan_weight 1e-30 and 0.2: the first update's losses differ by exactly 0.2 x the GAN loss, and
    the generators then differ; and from gan_weight 0 too."""
    s, teacher = digits
    data = (s.train, s.train_labels)
    runs = {w: distill(teacher, GAN.replace(gan_weight=w), tmp_path / str(w), progress=False,
                       real_data=data if w else None) for w in (0.0, 1e-30, 0.2)}
    tiny, big = runs[1e-30].log[1], runs[0.2].log[1]
    assert tiny["loss_fake"] == big["loss_fake"] and tiny["loss_disc"] == big["loss_disc"]
    assert tiny["loss_gan"] == big["loss_gan"]
    assert big["loss_gen"] == pytest.approx(tiny["loss_gen"] + 0.2 * big["loss_gan"], rel=1e-5, abs=1e-6)
    params = {w: torch.cat([p.flatten() for p in r.generator.parameters()]) for w, r in runs.items()}
    assert not torch.equal(params[1e-30], params[0.2]) and not torch.equal(params[0.0], params[0.2])
    assert runs[0.0].discriminator is None and runs[0.2].discriminator is not None
    assert "loss_disc" not in runs[0.0].log[1]


def test_costs_count_the_gan_passes(digits, tmp_path):
    s, teacher = digits
    cfg = GAN.replace(iters=1)
    on = distill(teacher, cfg, tmp_path / "on", progress=False, real_data=(s.train, s.train_labels)).log[-1]
    off = distill(teacher, cfg.replace(gan_weight=0.0), tmp_path / "off", progress=False).log[-1]
    assert on["nfe"] - off["nfe"] == cfg.batch * (cfg.fake_steps * 2 + 1)
    assert on["cost"] - off["cost"] == cfg.batch * (cfg.fake_steps * 2 * 3 + 3)


# ---------------------------------------------------------------- resume

def test_interrupted_gan_run_resumes_bitwise(digits, tmp_path, monkeypatch, one_thread):
    s, teacher = digits
    cfg, data = GAN.replace(ckpt_every=2), (s.train, s.train_labels)
    ref = distill(teacher, cfg, tmp_path / "ref", progress=False, real_data=data)
    real_step = DISTILL_MODULE.generator_step

    def dies_at_3(*args, **kwargs):
        if args[6] == 3:
            raise KeyboardInterrupt("killed at update 3")
        return real_step(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(DISTILL_MODULE, "generator_step", dies_at_3)
        with pytest.raises(KeyboardInterrupt):
            distill(teacher, cfg, tmp_path / "run", progress=False, real_data=data)
    assert read_json(tmp_path / "run" / "state.json")["step"] == 2
    out = distill(teacher, cfg, tmp_path / "run", progress=False, real_data=data)
    assert (tmp_path / "run" / "log.jsonl").read_text() == (tmp_path / "ref" / "log.jsonl").read_text()
    for a, b in [(out.generator, ref.generator), (out.fake_score, ref.fake_score),
                 (out.discriminator, ref.discriminator)]:
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    meta = read_json(tmp_path / "run" / "state.json")
    assert any(k.startswith("discriminator.") for k in load_tensors(tmp_path / "run" / meta["file"]))
    # Other real images: the checkpoint is not theirs.
    with pytest.raises(Exception, match="config hash"):
        distill(teacher, cfg, tmp_path / "run", progress=False, real_data=(s.train[:100], s.train_labels[:100]))


# ---------------------------------------------------------------- errors and hashes

def test_gan_without_or_with_wrong_real_data_fails_clearly(digits, tmp_path):
    s, teacher = digits
    with pytest.raises(ValueError, match=r"gan_weight=0.2: DMD2's GAN term needs real images"):
        distill(teacher, GAN, tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="per-sample shape"):
        distill(teacher, GAN, tmp_path / "b", progress=False, real_data=(s.train[:, :, :4], s.train_labels))
    with pytest.raises(ValueError, match="labels missing"):
        distill(teacher, GAN, tmp_path / "c", progress=False, real_data=s.train)
    with pytest.raises(ValueError, match="gan_weight=-1.0"):
        DistillConfig(gan_weight=-1.0)


def test_configs_without_the_gan_term_keep_their_hash_and_files():
    # Hashes of DistillConfig as they were before the GAN fields existed (computed on main at 33ed814).
    assert DistillConfig().hash() == "d7bf1318885d81c5"
    assert DistillConfig(method="dmd2", fake_steps=5, reg_weight=0.25).hash() == "f6f15be4e978b1d9"
    assert DistillConfig(method="dmd2", iters=6, batch=64, eval_every=3, fake_steps=2, ckpt_every=3,
                         lr_gen=1e-3).hash() == "291772586c4cd439"
    d = DistillConfig().to_dict()
    assert "gan_weight" not in d and "gan_weight_fake" not in d
    assert DistillConfig.from_dict(d) == DistillConfig()
    on = GAN.to_dict()
    assert on["gan_weight"] == 0.2 and "gan_weight_fake" not in on and DistillConfig.from_dict(on) == GAN
    assert GAN.hash() != GAN.replace(gan_weight=0.0).hash() != GAN.replace(gan_weight_fake=0.1).hash()
    assert json.loads(json.dumps(GAN.replace(gan_weight_fake=0.1).to_dict()))["gan_weight_fake"] == 0.1


def test_real_data_rejects_bad_tensors():
    with pytest.raises(ValueError, match="non-empty float tensor"):
        RealData(torch.zeros(0, 2))
    with pytest.raises(ValueError, match="labels must be int64"):
        RealData(torch.zeros(4, 2), torch.zeros(4))
    x, labels = RealData(torch.arange(8.0).reshape(4, 2), torch.arange(4)).draw(6, torch.Generator().manual_seed(0))
    assert x.shape == (6, 2) and torch.equal(x[:, 0] / 2, labels.float())
