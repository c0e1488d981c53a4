"""The pack's V3 extension: node list, model folder and the web extension's route."""
from __future__ import annotations

from comfy_api.v0_0_2 import ComfyExtension, io

from . import library
from .grid import Diversity, SeedGrid
from .loader import LoadBuiltinTeacher, StudentLoader
from .routes import register_routes
from .sampling import HybridSampler, Sample, StudentSampler, StudentSigmas, TeacherStudentSampler

NODES: list[type[io.ComfyNode]] = [StudentLoader, LoadBuiltinTeacher, StudentSigmas, StudentSampler, Sample, SeedGrid,
                                   Diversity, HybridSampler, TeacherStudentSampler]


class DPDMDExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


def create() -> DPDMDExtension:
    library.register_folder()
    register_routes()
    return DPDMDExtension()
