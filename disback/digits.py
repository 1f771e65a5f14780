"""The class-conditional handwritten-digits setting: sklearn's 8x8 digits, a held-out reference, classifier FID.

Metrics of generated digits (lower FID is better):
- ``fid``: FID through torch-fidelity with a digits classifier's penultimate features, against the held-out
  real digits (the classifier never saw them);
- ``accuracy``: how often the classifier recognises the class a sample was generated for;
- ``fd_pixels``: Frechet distance between Gaussians fitted to raw pixels (no network involved).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from scipy.linalg import LinAlgWarning

from .checkpoint import ArtifactError, tensor_digest
from .data import load_digits
from .fid import ClassifierConfig, class_accuracy, fid, load_classifier, save_classifier, train_classifier
from .metrics import frechet_distance_samples
from .settings import Setting

OPTIONS = ("size", "classifier_dir", "held_out")


def digits_classifier(train, train_labels, held, held_labels, config: ClassifierConfig, directory=None):
    """The feature classifier: loaded from ``directory`` if this config and data were trained there, else trained
    (seconds) and, with a ``directory``, saved into a subfolder named after the config and data hashes."""
    if directory is None:
        return train_classifier(train, train_labels, held, held_labels, config)
    data_hash = tensor_digest(train, train_labels, held, held_labels)
    folder = Path(directory) / f"digits{config.size}px-{config.hash()}-{data_hash[:12]}"
    if (folder / "classifier.json").is_file():
        clf = load_classifier(folder)
        if clf.config != config:
            raise ArtifactError(f"{folder}: holds a classifier of config {clf.config}, expected {config}")
        return clf
    clf = train_classifier(train, train_labels, held, held_labels, config)
    save_classifier(clf, folder, {"data_sha256": data_hash})
    return clf


def load_digits_setting(num_reference: int = 2000, seed: int = 0, size: int = 8, classifier_dir=None,
                        **kw) -> Setting:
    """The digits setting: train split for the teacher, held-out split as FID reference, classifier metrics.

    ``seed`` picks the stratified split and seeds the classifier; keep it fixed across a method's seeds so
    all runs share one reference. ``num_reference`` caps the reference (the held-out split has ~360 images).
    ``classifier_dir``: a folder to cache the trained classifier in (``None``: train in memory, ~4 s).
    """
    held_out = kw.pop("held_out", 0.2)
    if kw:
        raise ValueError(f"unknown option(s) {sorted(kw)} for setting 'digits'; allowed: {', '.join(OPTIONS)}")
    if num_reference < 2:
        raise ValueError(f"num_reference={num_reference!r}: must be >= 2")
    train, train_labels, held, held_labels = load_digits(size, seed, held_out)
    classifier = digits_classifier(train, train_labels, held, held_labels, ClassifierConfig(size=size, seed=seed),
                                   classifier_dir)
    reference, reference_labels = held[:num_reference], held_labels[:num_reference]

    def metric_fn(samples: torch.Tensor, labels: torch.Tensor | None) -> dict:
        if tuple(samples.shape[1:]) != tuple(reference.shape[1:]):
            raise ValueError(f"samples: must be [N, {', '.join(map(str, reference.shape[1:]))}]; "
                             f"got {tuple(samples.shape)}")
        with warnings.catch_warnings():  # border pixels are constant in real digits: a singular covariance is expected
            warnings.simplefilter("ignore", LinAlgWarning)
            fd_pixels = frechet_distance_samples(samples.flatten(1), reference.flatten(1))
        out = {"fid": fid(samples, reference, classifier=classifier), "fd_pixels": fd_pixels}
        if labels is not None:
            out["accuracy"] = class_accuracy(classifier, samples, labels)
        return out

    info = {"description": f"sklearn handwritten digits, {size}x{size}, 10 classes, held-out split as reference",
            "size": size, "num_train": len(train), "num_reference": len(reference), "held_out": held_out,
            "classifier_accuracy": classifier.accuracy,
            "fid_real_floor": fid(reference, train, classifier=classifier)}  # held-out vs train: real data's FID
    metric_fn.classifier = classifier  # for notebooks that look at per-class results
    return Setting("digits", train, train_labels, reference, reference_labels, metric_fn, "fid", info=info)
