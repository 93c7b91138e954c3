"""One object per quantization scheme (docs/ARCHITECTURE.md, "Adding a scheme").

``SCHEMES`` maps each scheme's name to its class; ``get_scheme(op, name, **options)`` builds one.
Importing this package registers every scheme module below; a new scheme is a new module here
(plus its kernel recipe and tiles), listed in the import line.
"""

from __future__ import annotations

from . import fp8, fp8_block, w4a8, w4a8_fp, w4a8_zp, w8a8, w8a8_group  # noqa: F401 - registration
from .base import N_ALIGN, SCHEMES, Scheme, get_scheme, layer_scheme, pad_rows, padded, register, scheme_names
from .fp8 import FP8
from .fp8_block import FP8Block
from .int_group import GROUP_SIZES, INT_SCALES, IntGroupScheme
from .w4a8 import W4A8, W4A8FloatScale
from .w4a8_fp import W4A8FP
from .w4a8_zp import W4A8ZeroPoint
from .w8a8 import W8A8
from .w8a8_group import W8A8Group

__all__ = [
    "Scheme", "SCHEMES", "register", "get_scheme", "layer_scheme", "scheme_names", "N_ALIGN", "padded", "pad_rows",
    "W8A8", "FP8", "FP8Block", "W4A8", "W4A8FloatScale", "W4A8FP", "W4A8ZeroPoint", "W8A8Group", "IntGroupScheme", "GROUP_SIZES", "INT_SCALES",
]
