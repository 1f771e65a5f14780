"""Probes run inside ``distill`` at evaluation steps (they never draw from the training RNG): the score mismatch
of paper Sec. 5.3 and, where the data's score is exact, how well the update points toward the data."""
from __future__ import annotations

from .generator import generate
from .metrics import direction_agreement, empirical_denoiser, score_mismatch


def mismatch_probe(setting, teacher, sigmas, num_probe: int, num_kernel: int = 1000):
    """A ``probe_fn`` for ``distill`` measuring, on fresh generator samples, the sigma^2-weighted score mismatch of
    the current target and of the teacher with the generator's score (estimated by the fake score; in 2-D also by a
    kernel estimate from ``num_kernel`` samples, with the mismatch to the exact data score and the direction
    agreement of the update with the direction toward the data)."""
    exact_2d = len(setting.data_shape) == 1

    def probe(generator, fake, target, node, step, seed):
        x, labels = generate(generator, range(2 * 10 ** 6, 2 * 10 ** 6 + num_probe), setting.data_shape,
                             setting.label_dim)
        pairs = {"target_vs_fake": (target, fake), "teacher_vs_fake": (teacher, fake)}
        out = {}
        if exact_2d:
            kde = empirical_denoiser(generate(generator, range(3 * 10 ** 6, 3 * 10 ** 6 + num_kernel),
                                              setting.data_shape)[0])
            pairs.update({"target_vs_gen": (target, kde), "teacher_vs_gen": (teacher, kde)})
            if setting.exact is not None:
                pairs["data_vs_gen"] = (setting.exact, kde)
                out["agreement"] = direction_agreement(fake, target, kde, setting.exact, x, sigmas, seed=step)
        out.update({k: {str(float(s)): v for s, v in score_mismatch(a, b, x, sigmas, labels, seed=step).items()}
                    for k, (a, b) in pairs.items()})
        return out

    return probe
