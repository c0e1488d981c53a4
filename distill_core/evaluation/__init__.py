"""Evaluation: diversity, quality and seed grids of teacher and student (see README.md)."""
