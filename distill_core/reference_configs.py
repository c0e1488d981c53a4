"""Public configs of the reference teachers (``dpdmd plan --architecture``): plain data, read before anything is
downloaded and without importing torch (the CLI lists the names)."""
from __future__ import annotations

SD35_MEDIUM = {
    "family": "sd3", "network_class": "SD3Transformer2DModel",
    "network": {"sample_size": 128, "patch_size": 2, "in_channels": 16, "num_layers": 24, "attention_head_dim": 64,
                "num_attention_heads": 24, "joint_attention_dim": 4096, "caption_projection_dim": 1536,
                "pooled_projection_dim": 2048, "out_channels": 16, "pos_embed_max_size": 384,
                "dual_attention_layers": list(range(13)), "qk_norm": "rms_norm"},
    "text_encoders": {
        "text_encoder": ("CLIPTextModelWithProjection", {"hidden_size": 768, "intermediate_size": 3072,
                                                         "num_attention_heads": 12, "num_hidden_layers": 12,
                                                         "projection_dim": 768, "vocab_size": 49408}),
        "text_encoder_2": ("CLIPTextModelWithProjection", {"hidden_size": 1280, "intermediate_size": 5120,
                                                           "num_attention_heads": 20, "num_hidden_layers": 32,
                                                           "projection_dim": 1280, "vocab_size": 49408}),
        "text_encoder_3": ("T5EncoderModel", {"d_model": 4096, "d_ff": 10240, "d_kv": 64, "num_heads": 64,
                                              "num_layers": 24, "vocab_size": 32128,
                                              "feed_forward_proj": "gated-gelu"})},
    "vae": {"block_out_channels": [128, 256, 512, 512], "latent_channels": 16, "layers_per_block": 2,
            "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
            "use_quant_conv": False, "use_post_quant_conv": False},
}
SDXL_BASE = {
    "family": "sdxl", "network_class": "UNet2DConditionModel",
    "network": {"sample_size": 128, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
                "block_out_channels": [320, 640, 1280], "transformer_layers_per_block": [1, 2, 10],
                "attention_head_dim": [5, 10, 20], "cross_attention_dim": 2048, "use_linear_projection": True,
                "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
                "projection_class_embeddings_input_dim": 2816},
    "text_encoders": {
        "text_encoder": ("CLIPTextModel", {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                                           "num_hidden_layers": 12, "vocab_size": 49408}),
        "text_encoder_2": ("CLIPTextModelWithProjection", {"hidden_size": 1280, "intermediate_size": 5120,
                                                           "num_attention_heads": 20, "num_hidden_layers": 32,
                                                           "projection_dim": 1280, "vocab_size": 49408})},
    "vae": {"block_out_channels": [128, 256, 512, 512], "latent_channels": 4, "layers_per_block": 2,
            "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4},
}
SD35_LARGE = {**SD35_MEDIUM, "network": {  # 8B: 38 blocks of width 2432, no dual-attention layers
    "sample_size": 128, "patch_size": 2, "in_channels": 16, "num_layers": 38, "attention_head_dim": 64,
    "num_attention_heads": 38, "joint_attention_dim": 4096, "caption_projection_dim": 2432,
    "pooled_projection_dim": 2048, "out_channels": 16, "pos_embed_max_size": 192, "dual_attention_layers": [],
    "qk_norm": "rms_norm"}}
# Z-Image (base and Turbo share it): 6.15 B. Transformer as ComfyUI 0.33.0's model_detection reads a Z-Image file
# (dim 3840, 30 heads, axes 32/48/48 over 1536/512/512, rope theta 256) with diffusers' defaults for the rest
# (30 layers, 2 + 2 refiner layers); text encoder Qwen3-4B (Qwen3Model, hidden 2560, 36 layers, 32 / 8 heads);
# VAE: FLUX.1's 16-channel AutoencoderKL.
Z_IMAGE = {
    "family": "zimage", "network_class": "ZImageTransformer2DModel",
    "network": {"all_patch_size": [2], "all_f_patch_size": [1], "in_channels": 16, "dim": 3840, "n_layers": 30,
                "n_refiner_layers": 2, "n_heads": 30, "n_kv_heads": 30, "norm_eps": 1e-5, "qk_norm": True,
                "cap_feat_dim": 2560, "rope_theta": 256.0, "t_scale": 1000.0, "axes_dims": [32, 48, 48],
                "axes_lens": [1536, 512, 512]},
    "text_encoders": {
        "text_encoder": ("Qwen3Model", {"hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36,
                                        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
                                        "vocab_size": 151936, "max_position_embeddings": 40960,
                                        "tie_word_embeddings": True})},
    "vae": {"block_out_channels": [128, 256, 512, 512], "latent_channels": 16, "layers_per_block": 2,
            "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
            "use_quant_conv": False, "use_post_quant_conv": False},
}
# FLUX.2 [klein] base: transformer (5 double + 20 single blocks of 24 heads; 9B: 8 + 24 of 32) and Qwen3-4B / -8B
# encoders as the released config.json files (and diffusers' klein-4b / klein-9b conversion configs) give them;
# joint_attention_dim = 3 x the encoder's width (hidden states 9, 18, 27 stacked); AutoencoderKLFlux2's defaults.
FLUX2_VAE = {"block_out_channels": [128, 256, 512, 512], "latent_channels": 32, "layers_per_block": 2,
             "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4}
QWEN3 = {"num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
         "vocab_size": 151936, "max_position_embeddings": 40960}
FLUX2_KLEIN_4B = {
    "family": "flux2", "network_class": "Flux2Transformer2DModel", "vae_class": "AutoencoderKLFlux2",
    "network": {"patch_size": 1, "in_channels": 128, "num_layers": 5, "num_single_layers": 20,
                "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 7680,
                "timestep_guidance_channels": 256, "mlp_ratio": 3.0, "axes_dims_rope": [32, 32, 32, 32],
                "rope_theta": 2000, "guidance_embeds": False},
    "text_encoders": {"text_encoder": ("Qwen3ForCausalLM", {**QWEN3, "hidden_size": 2560, "intermediate_size": 9728,
                                                           "tie_word_embeddings": True})},
    "vae": FLUX2_VAE,
}
FLUX2_KLEIN_9B = {
    **FLUX2_KLEIN_4B,
    "network": {**FLUX2_KLEIN_4B["network"], "num_layers": 8, "num_single_layers": 24, "num_attention_heads": 32,
                "joint_attention_dim": 12288},
    "text_encoders": {"text_encoder": ("Qwen3ForCausalLM", {**QWEN3, "hidden_size": 4096, "intermediate_size": 12288,
                                                           "tie_word_embeddings": False})},
}
REFERENCES = {"sd3.5-medium": SD35_MEDIUM, "sd3.5-large": SD35_LARGE, "sdxl": SDXL_BASE, "z-image": Z_IMAGE,
              "flux2-klein-4b": FLUX2_KLEIN_4B, "flux2-klein-9b": FLUX2_KLEIN_9B}
