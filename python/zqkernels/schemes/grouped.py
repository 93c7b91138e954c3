"""The group-size machinery shared by the schemes with group scales (int_group.py: w4a8,
w4a8-floatscale, w8a8-group; w4a8_fp.py: w4a8-fp).

``group_size`` on a scheme object: one of the scheme's ``GROUP_SIZES`` or None (per channel: one
group of in_features per row). A layer's scheme (``for_layer`` / ``from_layer_options``) holds the
group resolved for its in_features (``_k``): per channel is then ``group_size == in_features``, the
spelling QLinear's keyword arguments use (where group_size None means the default, 128).

``group_size="auto"`` (``AUTO``) resolves per layer instead: ``for_layer`` gives each layer the largest
of ``AUTO_GROUP_SIZES`` (128, 64, 32, those the scheme has) that the scheme accepts for its shape
(dividing in_features, and the scheme's other layout rules), so one config fits a model whose
widths are not all multiples of 128 (SmolLM2-135M: hidden 576). A layer no size fits raises the
largest size's error.
"""

from __future__ import annotations

from typing import Any, ClassVar, Optional

from .base import Scheme

__all__ = ["AUTO", "AUTO_GROUP_SIZES", "GroupedScheme", "PACKED_LAYOUT_RULE"]

AUTO = "auto"  # group_size: the largest of AUTO_GROUP_SIZES each layer takes
AUTO_GROUP_SIZES = (128, 64, 32)

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

    def __init__(self, op: str = "", **options: Any) -> None:
        """As Scheme's; group_size "auto" (AUTO) is kept as is and resolved per layer by for_layer
        (the other options are checked as for per channel)."""
        if isinstance(options.get("group_size"), str) and options["group_size"].lower() == AUTO:
            super().__init__(op, **{**options, "group_size": None})
            object.__setattr__(self, "group_size", AUTO)
        else:
            super().__init__(op, **options)

    @property
    def auto(self) -> bool:
        """Whether the group size is chosen per layer (group_size "auto")."""
        return getattr(self, "group_size", None) == AUTO

    def auto_candidates(self) -> tuple[int, ...]:
        """The group sizes group_size "auto" tries, largest first."""
        return tuple(g for g in AUTO_GROUP_SIZES if g in self.GROUP_SIZES)

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
        opts = {k: v for k, v in self.options().items() if k != "group_size"}
        if self.auto:
            errors = []
            for g in self.auto_candidates():
                try:
                    return type(self).from_layer_options(op, out_features, in_features, group_size=g, **opts)
                except (ValueError, TypeError) as e:
                    errors.append(e)
            tried = ", ".join(map(str, self.auto_candidates()))
            raise ValueError(f"group_size 'auto' (tried {tried}; none fits this layer): {errors[0]}" if errors
                             else f"{op}: scheme {self.name!r} has none of the group sizes {AUTO_GROUP_SIZES}")
        g = in_features if self.group_size is None else self.group_size
        return type(self).from_layer_options(op, out_features, in_features, group_size=g, **opts)

    def general(self):
        if getattr(self, "_k", None) is None:
            return self
        return type(self)(**{**self.options(), "group_size": self.group()})

    def cols_per_buffer_col(self, buffer: str) -> Optional[int]:
        """Group scales: one column per group (none when one group spans the row: per channel)."""
        if buffer == "weight_group_scale":
            return None if self.group_size == getattr(self, "_k", None) else self.group_size
        return super().cols_per_buffer_col(buffer)

    def group(self, K: Optional[int] = None) -> Optional[int]:
        """quantize_weight's group_size: None per channel (group_size None, or in_features of the
        layer: `K` or the layer scheme's own), else the group size."""
        if self.auto:  # the largest size dividing K (what for_layer picks: the other rules do not depend on it)
            fits = [g for g in self.auto_candidates() if K is not None and K % g == 0]
            if not fits:
                raise ValueError(f"scheme {self.name!r}: group_size 'auto' needs in_features (got {K}) divisible by "
                                 f"one of {self.auto_candidates()}")
            return fits[0]
        k = K if K is not None else getattr(self, "_k", None)
        return None if self.group_size is None or self.group_size == k else self.group_size

    def describe(self):
        if self.auto:
            return f"group_size={AUTO}"
        g = self.group()
        return f"group_size={'per channel' if g is None else g}"
