"""The compiled module ``zqkernels._C`` (src/cpp/README.md), or None where it is absent.

A CPU-only build (no CUDA toolkit at install time) has no ``_C``; its ops run the pure-torch
reference on CPU tensors and raise on CUDA tensors. A ``_C`` that exists but fails to import
(a driver or runtime mismatch) is kept apart from "absent", so the error says which it was.
"""

from __future__ import annotations

import importlib
from typing import Optional

try:
    _C = importlib.import_module(f"{__package__}._C")
except ImportError as exc:  # absent (CPU-only build, source checkout) or present but broken
    _C = None
    _absent = isinstance(exc, ModuleNotFoundError) and exc.name == f"{__package__}._C"
    import_error: Optional[BaseException] = None if _absent else exc
else:
    import_error = None

try:  # written by CMake into the installed package (python/build_config.py.in)
    from . import _build_config as build_config
except ImportError:
    build_config = None


def no_kernels_reason() -> str:
    """Why CUDA tensors cannot run: the text that follows "<op>: " in the RuntimeError."""
    if import_error is not None:
        return (
            f"zqkernels._C is installed but failed to import ({type(import_error).__name__}: "
            f"{import_error}), so CUDA tensors cannot run; reinstall zqkernels (pip install .) in "
            "this environment, or pass CPU tensors to run the pure-torch reference"
        )
    why = "installed without a CUDA toolkit"
    if build_config is None:
        why += ", or imported from a source checkout rather than the installed package"
    elif getattr(build_config, "build_reason", ""):
        why += f": {build_config.build_reason}"
    return (
        f"this zqkernels build has no CUDA kernels ({why}); CUDA tensors cannot run. Reinstall with "
        "nvcc on PATH (pip install . then compiles them), or pass CPU tensors to run the pure-torch "
        "reference"
    )
