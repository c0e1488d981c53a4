"""Let PyPI's torchvision import next to a CPU-only torch (test venv only, never part of the pack).

torchvision's compiled ops (_C.so) link CUDA libraries and cannot load there, yet its
_meta_registrations call torch.library.register_fake for torchvision::nms and ::qnms
unconditionally, which fails when the op schemas do not exist. This finder defines the
two schemas on the first `import torchvision` and then steps aside. ComfyUI uses only
torchvision's pure-Python parts.
"""
import importlib.abc
import sys

_LIB = None  # keep a reference, or the definitions vanish


class _TorchvisionShimFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        global _LIB
        if name != "torchvision":
            return None
        sys.meta_path.remove(self)
        import torch

        try:
            _LIB = torch.library.Library("torchvision", "DEF")
            _LIB.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            _LIB.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        except Exception:  # already defined (a working torchvision build): nothing to do
            pass
        return None


sys.meta_path.insert(0, _TorchvisionShimFinder())
