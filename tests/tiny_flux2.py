"""A tiny random FLUX.2 [klein] base folder built offline from configs (no hub id anywhere).

What the pipeline needs of it (shared/notes/families_2026.md, last section): a tokenizer
with a chat template (the pipeline calls ``apply_chat_template`` before tokenising), a
``Qwen3ForCausalLM`` with 28 narrow layers (the pipeline stacks hidden states 9, 18 and
27), ``joint_attention_dim`` = 3 x its hidden size, an ``AutoencoderKLFlux2`` with 32
latent channels and a transformer whose ``in_channels`` is 4 x that (2 x 2 patches).
The transformer has one 128-wide head and RoPE axes (32, 32, 32, 32): the shape ComfyUI
detects as FLUX.2 (it derives the heads from hidden_size / 128). The VAE's batch-norm
statistics are set away from (0, 1) so the latent normalisation is exercised.
"""
from __future__ import annotations

import string
from pathlib import Path

import torch

RESOLUTION = 32  # pixels: a 4x VAE and 2x2 patches give a 4x4 grid of 128-channel tokens
ENCODER_HIDDEN = 16
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_qwen_tokenizer():
    """A word-level fast tokenizer (a few hundred ids) with Qwen's special tokens and a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"]
    words = ["user", "assistant", "system", "a", "the", "of", "photo", "cat", "dog", "painting", "sea", "red",
             "blue", "house", "tree"]
    vocab = {w: i for i, w in enumerate(specials + words + list(string.ascii_letters + string.digits
                                                                 + string.punctuation))}
    for i in range(300 - len(vocab)):
        vocab[f"w{i}"] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    core.add_special_tokens(specials)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", pad_token="<|endoftext|>",
                                  eos_token="<|im_end|>", model_max_length=512)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_flux2_transformer(seed: int = 0):
    """A ~1 M parameter Flux2Transformer2DModel that ComfyUI detects as FLUX.2 (no guidance embedding: klein base)."""
    from diffusers import Flux2Transformer2DModel

    torch.manual_seed(seed)
    return Flux2Transformer2DModel(patch_size=1, in_channels=128, num_layers=1, num_single_layers=1,
                                   attention_head_dim=128, num_attention_heads=1,
                                   joint_attention_dim=3 * ENCODER_HIDDEN, timestep_guidance_channels=256,
                                   mlp_ratio=3.0, axes_dims_rope=(32, 32, 32, 32), guidance_embeds=False)


def build_tiny_flux2_pipeline(path: str | Path, seed: int = 0, is_distilled: bool = False):
    """Save a random FLUX.2 [klein]-shaped pipeline (diffusers folder) to ``path`` and return the pipeline."""
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline
    from transformers import Qwen3Config, Qwen3ForCausalLM

    transformer = tiny_flux2_transformer(seed)
    tok = tiny_qwen_tokenizer()
    encoder = Qwen3ForCausalLM(Qwen3Config(
        vocab_size=len(tok), hidden_size=ENCODER_HIDDEN, intermediate_size=24, num_hidden_layers=28,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=1024,
        pad_token_id=tok.pad_token_id, tie_word_embeddings=True))
    vae = AutoencoderKLFlux2(block_out_channels=(8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 3,
                             up_block_types=("UpDecoderBlock2D",) * 3, layers_per_block=1, norm_num_groups=4,
                             latent_channels=32, sample_size=64, mid_block_add_attention=False)
    g = torch.Generator().manual_seed(seed + 1)
    vae.bn.running_mean.copy_(torch.randn(vae.bn.running_mean.shape, generator=g) * 0.5)
    vae.bn.running_var.copy_(torch.rand(vae.bn.running_var.shape, generator=g) * 2 + 0.5)
    # FLUX.2 [klein]'s scheduler: FlowMatch Euler with resolution- and step-dependent (exponential) shifting
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, time_shift_type="exponential",
                                                base_shift=0.5, max_shift=1.15)
    pipe = Flux2KleinPipeline(scheduler=scheduler, vae=vae, text_encoder=encoder, tokenizer=tok,
                              transformer=transformer, is_distilled=is_distilled)
    assert len(pipe.tokenizer) > 100, "a degenerate tokenizer"
    pipe.save_pretrained(str(path))
    return pipe
