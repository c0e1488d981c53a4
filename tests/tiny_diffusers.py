"""Tiny random SD3 / SDXL diffusers pipelines built offline from configs (no hub id anywhere).

The shapes follow diffusers' own pipeline tests, made faster (a 3-block VAE that
downsamples 4x, patch size 2) as measured in shared/notes/environment.md 2.3.
The SD3 transformer is SD3.5-Medium-shaped (a dual-attention block, RMS q/k
norm) so the SD3.5 paths (ModelSpec architecture, ComfyUI detection) are taken.
Tokenizers are built in memory with real vocabularies of a few hundred ids;
``check_tokenizers`` guards against the degenerate 2-token tokenizer that a
hub id silently yields offline.
"""
from __future__ import annotations

import string
from pathlib import Path

import torch

RESOLUTION = 32  # pixels: an 8x8 latent (SD3: 16 image tokens with patch size 2)


def _bytes_to_unicode() -> list[str]:
    """GPT-2 / CLIP byte -> unicode table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def tiny_clip_tokenizer(model_max_length: int = 77):
    """A byte-level BPE CLIP tokenizer with 517 ids, specials last like the real one."""
    from transformers import CLIPTokenizer

    chars = _bytes_to_unicode()
    vocab: dict[str, int] = {}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    merges = [("t", "h"), ("th", "e</w>"), ("a", "t</w>")]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def tiny_t5_tokenizer(model_max_length: int = 512):
    """A character-level Unigram T5 tokenizer (<pad>=0, </s>=1, <unk>=2)."""
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    for c in string.ascii_letters + string.digits + string.punctuation:
        pieces += [(c, -3.0), ("▁" + c, -3.5)]
    for w in ["a", "the", "of", "cat", "dog", "photo", "painting"]:
        pieces.append(("▁" + w, -1.0))
    pieces += [(f"<extra_id_{i}>", 0.0) for i in range(9, -1, -1)]
    return T5TokenizerFast(vocab=pieces, extra_ids=10, model_max_length=model_max_length)


def check_tokenizers(pipe) -> None:
    """Fail loudly on a degenerate tokenizer (what a hub id gives offline)."""
    for name in ("tokenizer", "tokenizer_2", "tokenizer_3"):
        tok = getattr(pipe, name, None)
        if tok is not None:
            assert len(tok) > 100, f"{name} has only {len(tok)} ids: a degenerate tokenizer"


def _clip_encoders(tok, projection_dim: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                            pad_token_id=tok.pad_token_id, vocab_size=len(tok), hidden_size=32,
                            intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                            layer_norm_eps=1e-5, hidden_act="gelu", projection_dim=projection_dim)
    return config, CLIPTextModel, CLIPTextModelWithProjection


def _fast_vae(latent_channels: int, **kw):
    """A 3-block VAE: 4x downsampling, a few thousand parameters."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 3,
                         up_block_types=("UpDecoderBlock2D",) * 3, layers_per_block=1, norm_num_groups=4,
                         latent_channels=latent_channels, sample_size=64, **kw)


def build_tiny_sd3_pipeline(path: str | Path, seed: int = 0):
    """Save a random SD3.5-M-shaped pipeline (diffusers folder) to ``path`` and return the pipeline."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=4, out_channels=4, num_layers=2,
                                        attention_head_dim=16, num_attention_heads=4, caption_projection_dim=64,
                                        joint_attention_dim=32, pooled_projection_dim=64, pos_embed_max_size=16,
                                        dual_attention_layers=(0,), qk_norm="rms_norm")
    tok = tiny_clip_tokenizer()
    config, clip, clip_proj = _clip_encoders(tok)
    t5_tok = tiny_t5_tokenizer()
    t5 = T5EncoderModel(T5Config(vocab_size=len(t5_tok), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                                 relative_attention_num_buckets=8, decoder_start_token_id=0))
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_fast_vae(4, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609,
                      scaling_factor=1.5035),
        text_encoder=clip_proj(config), tokenizer=tok, text_encoder_2=clip_proj(config), tokenizer_2=tiny_clip_tokenizer(),
        text_encoder_3=t5, tokenizer_3=t5_tok)
    check_tokenizers(pipe)
    pipe.save_pretrained(str(path))
    return pipe


def build_tiny_sdxl_pipeline(path: str | Path, seed: int = 0):
    """Save a random SDXL-shaped pipeline (diffusers folder) to ``path`` and return the pipeline."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=6 * 8 + 32, cross_attention_dim=64, norm_num_groups=4)
    tok = tiny_clip_tokenizer()
    config, clip, clip_proj = _clip_encoders(tok)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, steps_offset=1,
                                       beta_schedule="scaled_linear", timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(
        unet=unet, scheduler=scheduler, vae=_fast_vae(4, scaling_factor=0.13025),
        text_encoder=clip(config), tokenizer=tok, text_encoder_2=clip_proj(config), tokenizer_2=tiny_clip_tokenizer())
    check_tokenizers(pipe)
    pipe.save_pretrained(str(path))
    return pipe


def tiny_run_config(family: str, folder: str | Path, out: str | Path, **overrides):
    """A few-second DP-DMD run on a tiny pipeline folder; overrides as ``section__field=value``."""
    from distill_core.config import Config

    cfg = Config()
    cfg.teacher.family, cfg.teacher.path, cfg.teacher.resolution = family, str(folder), RESOLUTION
    cfg.teacher.num_steps, cfg.method.anchor_step, cfg.method.fake_updates = 6, 2, 1
    cfg.run.output_dir, cfg.run.max_steps, cfg.run.checkpoint_every = str(out), 2, 1
    cfg.data.prompts, cfg.data.batch_size = ["a photo of a cat", "the dog", "a painting of the sea"], 2
    cfg.eval.diversity_every, cfg.eval.grid_every, cfg.eval.features = 0, 0, ""
    cfg.eval.seeds, cfg.eval.max_prompts, cfg.eval.grid_prompts, cfg.eval.grid_seeds = 2, 1, 1, 2
    for key, value in overrides.items():
        section, name = key.split("__")
        setattr(getattr(cfg, section), name, value)
    return cfg


def build_tiny_dino(path: str | Path, seed: int = 0):
    """A random DINOv2 with its image processor (resize 32, crop 28, ImageNet statistics), saved to ``path``."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    model = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=37, image_size=28, patch_size=7))
    model.save_pretrained(str(path))
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 28, "width": 28}, do_center_crop=True,
                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(str(path))
    return model


def build_tiny_clip_vision(path: str | Path, seed: int = 0):
    """A random CLIP vision tower with projection and its processor, saved to ``path``."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                                           num_attention_heads=4, image_size=28, patch_size=7,
                                                           projection_dim=16))
    model.save_pretrained(str(path))
    CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}).save_pretrained(str(path))
    return model
