"""The group-size machinery shared by the schemes with group scales (int_group.py: w4a8,
w4a8-floatscale, w8a8-group; w4a8_fp.py: w4a8-fp).

``group_size`` on a scheme object: one of the scheme's ``GROUP_SIZES`` or None (per channel: one
group of in_features per row). A layer's scheme (``for_layer`` / ``from_layer_options``) holds the
group resolved for its in_features (``_k``): per channel is then ``group_size == in_features``, the
spelling QLinear's keyword arguments use (where group_size None means the default, 128).
"""

from __future__ import annotations

from typing import Any, ClassVar, Optional

from .base import Scheme

__all__ = ["GroupedScheme", "PACKED_LAYOUT_RULE"]

PACKED_LAYOUT_RULE = (
    "{op}: scheme {name!r} (packed {what} layout {layout}) needs out_features % 16 == 0 and in_features % 64 == 0, "
    "got a layer [out_features, in_features] = [{N}, {K}]; leave this layer in float (quantize_model(skip=...), "
    "quantize_(module_configs={{name: None}})) or use another scheme"
)


class GroupedScheme(Scheme):
    GROUP_SIZES: ClassVar[tuple[int, ...]] = ()
    DEFAULTS = {"group_size": 128}
    # packed weights: (what, layout name) of the layout that needs N % 16 and K % 64; None: unpacked
    packed: ClassVar[Optional[tuple[str, str]]] = None

    # -- per-layer resolution ----------------------------------------------------------------------
    @classmethod
    def _layer_instance(cls, op: str, g: int, K: int, **options: Any) -> "GroupedScheme":
        """The scheme of a layer with in_features K and group g (K: per channel), options checked."""
        self = cls.__new__(cls)
        object.__setattr__(self, "_k", K)
        for key in cls.option_names:
            object.__setattr__(self, key, g if key == "group_size" else options.get(key))
        self._check_options(op)
        return self

    @classmethod
    def _layer_group(cls, op: str, N: int, K: int, g: Any) -> int:
        """QLinear's group_size keyword for a layer [N, K] (None: the default), checked with the layout."""
        g = cls.DEFAULTS["group_size"] if g is None else g
        if isinstance(g, bool) or not isinstance(g, int) or (g not in cls.GROUP_SIZES and g != K):
            raise ValueError(
                f"{op}: scheme {cls.name!r} needs group_size in {cls.GROUP_SIZES} or in_features ({K}: one group "
                f"per row), got {g!r}"
            )
        return g

    @classmethod
    def _check_shape(cls, op: str, N: int, K: int, g: int) -> None:
        if cls.packed is not None and (N % 16 != 0 or K % 64 != 0):
            what, layout = cls.packed
            raise ValueError(PACKED_LAYOUT_RULE.format(op=op, name=cls.name, what=what, layout=layout, N=N, K=K))
        if K % g != 0:
            raise ValueError(
                f"{op}: scheme {cls.name!r} needs group_size to divide in_features, got group_size {g} and "
                f"a layer [out_features, in_features] = [{N}, {K}]; choose group_size in "
                f"{[s for s in cls.GROUP_SIZES if K % s == 0]}"
            )

    def for_layer(self, op, out_features, in_features):
        if getattr(self, "_k", None) == in_features:
            return self
        g = in_features if self.group_size is None else self.group_size
        opts = {k: v for k, v in self.options().items() if k != "group_size"}
        return type(self).from_layer_options(op, out_features, in_features, group_size=g, **opts)

    def general(self):
        if getattr(self, "_k", None) is None:
            return self
        return type(self)(**{**self.options(), "group_size": self.group()})

    def group(self, K: Optional[int] = None) -> Optional[int]:
        """quantize_weight's group_size: None per channel (group_size None, or in_features of the
        layer: `K` or the layer scheme's own), else the group size."""
        k = K if K is not None else getattr(self, "_k", None)
        return None if self.group_size is None or self.group_size == k else self.group_size

    def describe(self):
        g = self.group()
        return f"group_size={'per channel' if g is None else g}"
