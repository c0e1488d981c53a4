"""Training: the loop, its checkpoints and the run folder side of it (see README.md)."""
