"""A tiny random Z-Image diffusers folder built offline from configs (no hub id anywhere).

What the pipeline needs (shared/notes/families_2026.md, last section): a tokenizer
with a ``chat_template`` (the pipeline applies it before tokenising), a Qwen3 base
model as text encoder whose hidden size is the transformer's ``cap_feat_dim``, and
a 16-channel AutoencoderKL. The VAE downsamples 4x and the transformer patchifies
2x2, so 32 px images are 8x8 latents of 16 image tokens.
"""
from __future__ import annotations

import string
from pathlib import Path

import torch

RESOLUTION = 32
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_qwen_tokenizer():
    """A word-level tokenizer (letters, digits, a few words) carrying a Qwen-style chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "[UNK]"]
    words = ["a", "the", "of", "cat", "dog", "photo", "painting", "sea", "red", "user", "assistant"]
    vocab = {t: i for i, t in enumerate(specials + words + list(string.ascii_letters + string.digits
                                                                    + string.punctuation))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>", eos_token="<|im_end|>",
                                   unk_token="[UNK]", additional_special_tokens=specials[1:3])
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_zimage_transformer(cap_feat_dim: int = 16):
    from diffusers import ZImageTransformer2DModel

    return ZImageTransformer2DModel(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=32, n_layers=2,
                                    n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=cap_feat_dim,
                                    axes_dims=[4, 6, 6], axes_lens=[256, 32, 32])


def build_tiny_zimage_pipeline(path: str | Path, seed: int = 0):
    """Save a random Z-Image-shaped pipeline (diffusers folder) to ``path`` and return the pipeline."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(seed)
    tok = tiny_qwen_tokenizer()
    encoder = Qwen3Model(Qwen3Config(vocab_size=len(tok), hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                                     num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                                     max_position_embeddings=512, pad_token_id=tok.pad_token_id))
    vae = AutoencoderKL(block_out_channels=(8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3, layers_per_block=1, norm_num_groups=4,
                        latent_channels=16, sample_size=64, use_quant_conv=False, use_post_quant_conv=False,
                        scaling_factor=0.3611, shift_factor=0.1159)  # Z-Image's (FLUX.1's) VAE factors
    pipe = ZImagePipeline(transformer=tiny_zimage_transformer(16), vae=vae, text_encoder=encoder, tokenizer=tok,
                          scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0,
                                                                    use_dynamic_shifting=False))
    assert len(tok) > 50, f"tokenizer has only {len(tok)} ids"
    pipe.save_pretrained(str(path))
    return pipe
