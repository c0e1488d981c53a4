"""DP-DMD Seed Grid and DP-DMD Diversity: the pictures and the number that show diversity."""
from __future__ import annotations

import torch
from comfy_api.v0_0_2 import io, ui

from distill_core.builtin.kinds import DEFAULT_KIND, KINDS
from distill_core.errors import ConfigError

from . import student as students
from .compute import batch_diversity, from_comfy_images, grid_image, prompt_lines, seed_list, to_teacher_size
from .draw import draw
from .loader import CATEGORY, STUDENT
from .sampling import SEED_MAX, size_inputs


class SeedGrid(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DPDMDSeedGrid",
            display_name="DP-DMD Seed Grid",
            category=CATEGORY,
            description="A labelled grid, one row per prompt and one column per seed. Connect a 'student' to "
                        "sample it (seeds first_seed.. first_seed+seeds-1), or an IMAGE batch to tile it "
                        "('seeds' columns). The grid shows at a glance whether the seeds give different images.",
            inputs=[
                io.String.Input("prompts", multiline=True, default=students.DEFAULT_PROMPT,
                                tooltip="one per line: the rows (built-in students sample them; otherwise labels)"),
                io.Int.Input("seeds", default=8, min=1, max=64, tooltip="columns: consecutive seeds from first_seed"),
                io.Int.Input("first_seed", default=0, min=0, max=SEED_MAX, tooltip="the first column's seed"),
                io.String.Input("title", default="", tooltip="above the grid; empty = the student's title"),
                *size_inputs(),
                STUDENT.Input("student", optional=True, tooltip="a student from the loader, or the built-in teacher"),
                io.Image.Input("images", optional=True, tooltip="tile this batch instead of sampling"),
                io.Conditioning.Input("positive", optional=True,
                                      tooltip="SD3 / SDXL students: one prompt's conditioning (one row)"),
                io.Vae.Input("vae", optional=True, tooltip="SD3 / SDXL students: the teacher's VAE"),
            ],
            outputs=[io.Image.Output(display_name="grid", tooltip="the labelled grid, one image"),
                     io.Image.Output(display_name="images", tooltip="every cell, prompt-major: for DP-DMD Diversity")],
        )

    @classmethod
    def execute(cls, prompts: str, seeds: int, first_seed: int, title: str, width: int, height: int,
                display_size: int, student=None, images=None, positive=None, vae=None) -> io.NodeOutput:
        rows = prompt_lines(prompts) if prompts.strip() else [""]
        seed_ids = seed_list(first_seed, seeds)
        if images is None:
            if student is None:
                raise ConfigError("DP-DMD Seed Grid needs a 'student' to sample or an 'images' batch to tile")
            if student.native:
                rows = rows[:1]  # one conditioning: one row
            images, _ = draw(student, prompts=rows, seeds=seed_ids, positive=positive, vae=vae, width=width,
                             height=height, size=display_size)
            title = title or f"{student.info.title} ({student.nfe} NFE)"
        n_rows = -(-images.shape[0] // seeds)
        row_labels = rows if len(rows) == n_rows else None
        grid = grid_image(images, seeds, row_labels=row_labels, col_labels=[f"seed {s}" for s in seed_ids],
                          title=title)
        return io.NodeOutput(grid, images)


class Diversity(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DPDMDDiversity",
            display_name="DP-DMD Diversity",
            category=CATEGORY,
            description="The paper's diversity (Eq. 9): 1 - mean pairwise cosine between the features of the "
                        "images of each prompt, averaged over prompts. Features: the measure of a built-in "
                        "teacher (shapes: its decoder's 8x8 features, digits: the digits classifier), or a CLIP / "
                        "DINO vision model (Load CLIP Vision). The number shows on the node after a run. Compare "
                        "numbers only with the same features and seeds.",
            inputs=[
                io.Image.Input("images", tooltip="prompt-major batch, e.g. the 'images' of a Seed Grid"),
                io.Int.Input("per_prompt", default=0, min=0, max=4096, tooltip="images per prompt; 0 = all one prompt"),
                io.Combo.Input("builtin", options=list(KINDS), default=DEFAULT_KIND,
                               tooltip="without clip_vision: the measure of this built-in teacher (the one the "
                                       "images' student was distilled from)"),
                io.ClipVision.Input("clip_vision", optional=True,
                                    tooltip="feature model; without it the 'builtin' teacher's measure is used"),
            ],
            outputs=[io.Float.Output(display_name="diversity", tooltip="Eq. 9 (also shown on the node)")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, images: torch.Tensor, per_prompt: int, builtin: str = DEFAULT_KIND,
                clip_vision=None) -> io.NodeOutput:
        if clip_vision is not None:
            features, name = clip_vision.encode_image(images).image_embeds.float().cpu(), "CLIP vision"
        else:
            from distill_core.evaluation.evaluate import load_extractor

            extractor = load_extractor("builtin", builtin)
            features = extractor.features(to_teacher_size(from_comfy_images(images), KINDS[builtin].image_size))
            name = extractor.name
        result = batch_diversity(features, per_prompt)
        text = (f"diversity {result['diversity']:.4f} ({name} features; {result['prompts']} prompt(s) x "
                f"{result['per_prompt']} images)")
        return io.NodeOutput(result["diversity"], ui=ui.PreviewText(text))
