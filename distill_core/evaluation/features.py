"""Frozen image feature extractors for Eq. 9 diversity, loaded from local transformers folders.

The paper measures structure with DINO (its CLS embedding) and semantics with
CLIP (the projected image embedding). Images go through the folder's own image
processor (resize, centre crop, normalise), so features equal what the model's
published preprocessing gives; nothing is downloaded.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from ..integrity import require_safetensors

DINO_TYPES = ("dinov2", "dinov2_with_registers", "dinov3_vit")
CLIP_TYPES = ("clip", "clip_vision_model")


class TransformersExtractor:
    """DINO CLS embeddings or CLIP image embeddings of images (B, 3, H, W) in [0, 1]."""

    def __init__(self, path: str | Path, device: str | torch.device | None = None, batch_size: int = 16) -> None:
        from transformers import AutoImageProcessor

        self.path = Path(path).expanduser()
        where = f"eval.features {str(self.path)!r}"
        for needed in ("config.json", "preprocessor_config.json"):
            if not (self.path / needed).is_file():
                raise ConfigError(f"{where} has no {needed}; give a local DINO (v2 / v3) or CLIP folder saved by "
                                  "transformers (model plus image processor)")
        model_type = json.loads((self.path / "config.json").read_text()).get("model_type", "")
        self.kind = "dino" if model_type in DINO_TYPES else "clip" if model_type in CLIP_TYPES else None
        if self.kind is None:
            raise ConfigError(f"{where} holds a {model_type or 'unknown'} model; supported: "
                              f"{', '.join(DINO_TYPES + CLIP_TYPES)}")
        require_safetensors(self.path, where)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.batch_size = batch_size
        self.processor = AutoImageProcessor.from_pretrained(str(self.path), local_files_only=True)
        self.model = self._load_model().requires_grad_(False).eval().to(self.device)
        self.name = f"{self.kind}:{self.path.name}"

    def _load_model(self):
        from transformers import AutoModel, CLIPVisionModelWithProjection

        cls = AutoModel if self.kind == "dino" else CLIPVisionModelWithProjection
        return cls.from_pretrained(str(self.path), local_files_only=True, use_safetensors=True)

    def pixel_values(self, images: torch.Tensor) -> torch.Tensor:
        """The processor's input for images in [0, 1], via 8-bit images as any saved picture would be."""
        arrays = [np.ascontiguousarray(a) for a in
                  (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()]
        return self.processor(images=arrays, return_tensors="pt")["pixel_values"]

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        out = []
        for start in range(0, images.shape[0], self.batch_size):
            pixels = self.pixel_values(images[start:start + self.batch_size]).to(self.device)
            result = self.model(pixel_values=pixels)
            out.append((result.pooler_output if self.kind == "dino" else result.image_embeds).float().cpu())
        return torch.cat(out)
