"""DP-DMD Studio trainer UI: a Gradio app over distill_core (``dpdmd ui`` or ``python -m trainer_ui``).

Three pages: a wizard that writes a run config and starts training in its own
process, a monitor that only reads run folders, and a comparison of students'
seed grids. Importing this package does not import Gradio; ``trainer_ui.app`` does.
"""
