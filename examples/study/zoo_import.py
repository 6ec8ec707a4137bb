"""Import torchvision (which timm and transformers import) on a machine with a CPU torch.

torchvision's PyPI wheel built for a CUDA torch, installed beside a CPU torch, fails while
registering the fake kernel of its C op ``nms`` ("operator torchvision::nms does not exist");
its Python model code is fine. ``torchvision()`` tolerates exactly that error during the
import; on a machine where torchvision imports cleanly it is a plain import.
"""

from __future__ import annotations

import sys

import torch


def torchvision():
    if "torchvision" in sys.modules:
        return sys.modules["torchvision"]
    original = torch.library.register_fake

    def tolerant(op, func=None, /, **kwargs):
        def register(f):
            try:
                return original(op, f, **kwargs)
            except RuntimeError as exc:
                if "does not exist" not in str(exc):
                    raise
                return f
        return register(func) if func is not None else register

    torch.library.register_fake = tolerant
    try:
        import torchvision as tv
    finally:
        torch.library.register_fake = original
    return tv
