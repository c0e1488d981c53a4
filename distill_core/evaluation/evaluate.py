"""Evaluation: the paper's diversity (Eq. 9) and, on the built-in teacher, exact quality measures.

Diversity = mean over prompts of (1 - mean pairwise cosine) between the
L2-normalised features of R samples drawn from fixed seeds (paper: R = 9).
On the built-in digits teacher the features come from the project's digits classifier,
which also gives class accuracy and the Frechet distance to held-out real digits; on the
shapes teacher from its deterministic decoder (validity, modes, generated reference data).
"""
from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ..errors import ConfigError


def pairwise_diversity(features: torch.Tensor) -> float:
    """Eq. 9 for one prompt: 1 - mean over pairs i < j of cos(f_i, f_j)."""
    if features.shape[0] < 2:
        raise ValueError("diversity needs at least two samples per prompt")
    f = torch.nn.functional.normalize(features.double().flatten(1), dim=1)
    sim = f @ f.T
    iu = torch.triu_indices(len(f), len(f), offset=1)
    return float(1.0 - sim[iu[0], iu[1]].mean())


def diversity(features: torch.Tensor, per_prompt: int) -> float:
    """Eq. 9 averaged over prompts; ``features`` is prompt-major with ``per_prompt`` rows each."""
    groups = features.reshape(-1, per_prompt, *features.shape[1:])
    return float(np.mean([pairwise_diversity(g) for g in groups]))


def frechet_distance(a: np.ndarray, b: np.ndarray, eps: float = 1e-6) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (eps * I keeps sqrtm defined)."""
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    ca = np.cov(a, rowvar=False) + eps * np.eye(a.shape[1])
    cb = np.cov(b, rowvar=False) + eps * np.eye(b.shape[1])
    covmean = linalg.sqrtm(ca @ cb)
    covmean = np.real(covmean)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca + cb - 2 * covmean))


class FeatureExtractor(Protocol):
    name: str

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Features of images (B, 3, H, W) in [0, 1]."""


class DigitsExtractor:
    """The built-in classifier: 64-d features, class predictions, held-out real features.

    Features are centred on the mean feature of the real training digits: the
    raw ReLU features all lie in one orthant, where cosines bunch near 1; centred,
    they spread like DINO / CLIP embeddings (real held-out digits score about 0.24
    on Eq. 9, close to the paper's SD3.5 teacher). The Frechet distance does not
    change under the shift.
    """

    name = "digits-classifier"

    def __init__(self, path: str | Path | None = None) -> None:
        from safetensors.torch import load_file

        from ..builtin.networks import DigitsClassifier
        from ..teachers.builtin import WEIGHTS_DIR, verify_shipped

        path = Path(path) if path else WEIGHTS_DIR / "digits_classifier.safetensors"
        verify_shipped(path)
        self.net = DigitsClassifier().eval()
        self.net.load_state_dict(load_file(str(path)))

    @staticmethod
    def _model_space(images: torch.Tensor) -> torch.Tensor:
        return images.float().mean(1, keepdim=True) * 2 - 1

    @cached_property
    def center(self) -> torch.Tensor:
        from ..builtin.digits import load_split

        with torch.no_grad():
            return self.net.features(load_split().train_images).mean(0)

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.features(self._model_space(images)) - self.center

    @torch.no_grad()
    def classify(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self._model_space(images)).argmax(1)

    def valid(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """A valid digit is one the classifier reads as its prompt's class."""
        return self.classify(images) == labels

    def sample_modes(self, images: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
        from ..builtin.modes import sample_modes

        return sample_modes(self, images, labels)

    def mode_reference(self, prompt_labels: torch.Tensor) -> np.ndarray:
        """Each prompt's style clusters' shares of the real digits."""
        return self.modes.real_share[prompt_labels.numpy()]

    @cached_property
    def modes(self):
        """The real digits' per-class style clusters (see builtin/modes.py)."""
        from ..builtin.modes import StyleModes

        return StyleModes.fit(self)

    @cached_property
    def real_features(self) -> np.ndarray:
        """Features of the held-out real digits (the reference for the Frechet distance)."""
        from ..builtin.digits import load_split

        with torch.no_grad():
            return (self.net.features(load_split().test_images) - self.center).numpy()


class ShapesExtractor:
    """The shapes teacher's decoder (builtin/shapes.py): no learned network anywhere.

    Features are the images at 8x8 centred on the data's mean; validity (reported as
    class_accuracy too) and the modes are read by the deterministic template decoder;
    the Frechet distance is to freshly generated data in the same feature space.
    """

    name = "shapes-decoder"

    def features(self, images: torch.Tensor) -> torch.Tensor:
        from ..builtin.shapes import features

        return features(images)

    def valid(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        from ..builtin.shapes import decode, is_valid

        return is_valid(decode(images), labels)

    def sample_modes(self, images: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
        from ..builtin.shape_modes import sample_modes
        from ..builtin.shapes import decode

        return sample_modes(decode(images))

    def mode_reference(self, prompt_labels: torch.Tensor) -> np.ndarray:
        """Each prompt's modes' probabilities in the data."""
        from ..builtin.shapes import MODE_PROBS

        return np.array(MODE_PROBS)[prompt_labels.numpy()]

    @cached_property
    def real_features(self) -> np.ndarray:
        """Features of 1,200 generated images (400 per class, a fixed seed other than the mean's)."""
        from ..builtin.shapes import NUM_CLASSES, generate

        labels = torch.arange(1200) % NUM_CLASSES
        images, _ = generate(labels, torch.Generator().manual_seed(1))
        return self.features((images + 1) / 2).numpy()


def load_extractor(spec: str, builtin: str = "digits") -> FeatureExtractor:
    """'builtin' (the measure of the built-in teacher ``builtin``) or a local folder holding a transformers image
    model (DINO / CLIP)."""
    if spec == "builtin":
        return ShapesExtractor() if builtin == "shapes" else DigitsExtractor()
    path = Path(spec).expanduser()
    if not path.exists():
        raise ConfigError(f"eval.features = {spec!r}: no such folder; use 'builtin' or a local DINO / CLIP folder")
    from .features import TransformersExtractor  # real image models, loaded from disk only

    return TransformersExtractor(path)


def evaluate_images(images: torch.Tensor, per_prompt: int, extractor: FeatureExtractor,
                    labels: torch.Tensor | None = None, diversity_seeds: int | None = None) -> dict:
    """Metrics of prompt-major images with ``per_prompt`` samples each.

    Diversity uses the first ``diversity_seeds`` samples of each prompt (R);
    the built-in extractors add validity (class accuracy), the Frechet distance, the blank share and
    the valid-only metrics (valid_only.py) over all.
    """
    feats = extractor.features(images)
    r = diversity_seeds or per_prompt
    grouped = feats.reshape(-1, per_prompt, feats.shape[-1])[:, :r]
    out = {"diversity": diversity(grouped.reshape(-1, feats.shape[-1]), r), "samples": int(images.shape[0]),
           "seeds_per_prompt": r, "features": extractor.name}
    if isinstance(extractor, (DigitsExtractor, ShapesExtractor)):  # the built-in teachers: counted measures
        from .valid_only import builtin_valid_metrics

        out["frechet_distance"] = frechet_distance(feats.numpy(), extractor.real_features)
        if labels is not None:
            out["class_accuracy"] = out["validity"] = float(extractor.valid(images, labels).float().mean())
            out.update(builtin_valid_metrics(extractor, images, labels, per_prompt, feats))
    return out
