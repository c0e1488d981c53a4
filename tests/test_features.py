"""DINO / CLIP feature extractors from local folders, with tiny random models saved by transformers."""
from __future__ import annotations

import pytest
import torch
from tiny_diffusers import build_tiny_clip_vision, build_tiny_dino

from distill_core.errors import ConfigError
from distill_core.evaluation.evaluate import diversity, load_extractor
from distill_core.evaluation.features import TransformersExtractor


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("extractors")
    return {"dino": (root / "dino", build_tiny_dino(root / "dino")),
            "clip": (root / "clip", build_tiny_clip_vision(root / "clip"))}


@pytest.mark.parametrize("kind", ["dino", "clip"])
def test_extractor_uses_the_folders_model_and_processor(folders, kind):
    path, model = folders[kind]
    extractor = load_extractor(str(path))
    assert isinstance(extractor, TransformersExtractor) and extractor.kind == kind
    images = torch.rand(5, 3, 40, 48, generator=torch.Generator().manual_seed(1))
    feats = extractor.features(images)
    from PIL import Image
    from transformers import AutoImageProcessor

    pictures = [Image.fromarray((im.permute(1, 2, 0) * 255).round().byte().numpy()) for im in images]
    pixels = AutoImageProcessor.from_pretrained(str(path))(images=pictures, return_tensors="pt")["pixel_values"]
    assert pixels.shape == (5, 3, 28, 28)  # resized on the short side, centre-cropped
    with torch.no_grad():
        out = model.eval()(pixel_values=pixels)
    expected = out.pooler_output if kind == "dino" else out.image_embeds  # DINO CLS / CLIP projected embedding
    torch.testing.assert_close(feats, expected)
    assert feats.shape == (5, 32 if kind == "dino" else 16)
    same = diversity(extractor.features(images[:1].repeat(3, 1, 1, 1)), 3)
    assert same == pytest.approx(0.0, abs=1e-6) and diversity(feats[:4], 4) > 1e-3


def test_extractor_refuses_folders_it_cannot_use(folders, tmp_path):
    with pytest.raises(ConfigError, match="no such folder"):
        load_extractor(str(tmp_path / "missing"))
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text('{"model_type": "dinov2"}')
    with pytest.raises(ConfigError, match="preprocessor_config.json"):
        TransformersExtractor(tmp_path / "half")
    (tmp_path / "half" / "preprocessor_config.json").write_text("{}")
    (tmp_path / "half" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ConfigError, match="holds a bert model"):
        TransformersExtractor(tmp_path / "half")


def test_extractor_refuses_pickled_weights(folders, tmp_path):
    import shutil

    shutil.copytree(folders["dino"][0], tmp_path / "dino")
    for weights in (tmp_path / "dino").glob("*.safetensors"):
        weights.rename(weights.with_suffix(".bin"))
    with pytest.raises(ConfigError, match=r"eval.features .*: dino/ has no .safetensors weights \(only .*\.bin\)"):
        TransformersExtractor(tmp_path / "dino")
