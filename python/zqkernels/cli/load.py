"""Loading from local files only: a float HF model (directory or .gguf file), its tokenizer, text
files and their token windows. A path that does not exist is refused, never looked up on the Hub."""

from __future__ import annotations

import importlib.util
import json
import os
import warnings
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from .common import DTYPES, CLIError, one_line

#: the packages loading a model needs beyond torch: transformers always; for a .gguf file also gguf
#: (>= GGUF_MIN: transformers reads GGUF files with it) and accelerate (transformers refuses a GGUF
#: file without it). transformers says so only once it loads the weights, and the tokenizer load,
#: which runs first, swallows the error: hence the check before anything is loaded.
MODEL_PACKAGES = ("transformers",)
GGUF_PACKAGES = ("gguf", "accelerate")
GGUF_MIN = (0, 10)


def _version(module: str) -> Optional[tuple[int, ...]]:
    try:
        from importlib.metadata import version

        return tuple(int(p) for p in version(module).split(".")[:2])
    except Exception:  # noqa: BLE001 - no version or an odd one: do not judge it
        return None


def require_packages(paths: dict[str, Optional[str]]) -> None:
    """The check every command that loads a model runs first, before anything slow. paths: option
    name ("MODEL_DIR", "--float") -> the path given or None. Raises CLIError naming the packages that
    loading those models needs and this Python lacks (MODEL_PACKAGES; GGUF_PACKAGES for a .gguf
    file), with the pip command."""
    gguf = [f"{what} {p!r}" for what, p in paths.items()
            if p is not None and Path(p).expanduser().suffix.lower() == ".gguf" and Path(p).expanduser().is_file()]
    missing = [m for m in MODEL_PACKAGES + (GGUF_PACKAGES if gguf else ()) if importlib.util.find_spec(m) is None]
    old = _version("gguf") if gguf and "gguf" not in missing else None
    old = old if old is not None and old < GGUF_MIN else None
    if not missing and old is None:
        return
    need = (f"{' and '.join(gguf)} is a GGUF file, which transformers reads only with the packages gguf and "
            "accelerate" if gguf else "loading a model needs the package transformers")
    if missing:
        need += f"; not installed here: {', '.join(missing)}"
    if old is not None:
        need += f"; gguf {'.'.join(map(str, old))} is too old (transformers needs >= {'.'.join(map(str, GGUF_MIN))})"
    cmd = " ".join(missing) if old is None else " ".join(["--upgrade", *missing, "gguf"])
    raise CLIError(f"{need} (pip install {cmd})")


def local_source(path: str, what: str = "MODEL_DIR") -> tuple[Path, dict[str, Any]]:
    """-> (directory, extra from_pretrained kwargs) for a local model directory or .gguf file."""
    p = Path(path).expanduser()
    if p.is_file():
        if p.suffix.lower() != ".gguf":
            raise CLIError(f"{what} {path!r} is a file but not a .gguf file; give a model directory or a .gguf file")
        return p.parent, {"gguf_file": p.name}
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise CLIError(f"{what} {path!r} has no config.json (not a transformers model directory)")
        return p, {}
    first = path.split("/")[0]
    looks_remote = (
        not os.path.isabs(path) and not path.startswith((".", "~")) and path.count("/") == 1
        and all(path.split("/")) and not Path(first).exists()
    )
    if looks_remote:
        raise CLIError(
            f"{what} {path!r} is not a local directory; it looks like a Hub model id, and models load from "
            "local directories only (download it first, then pass the directory)"
        )
    raise CLIError(f"{what} {path!r} does not exist (models load from local directories or .gguf files only)")


def is_quantized_dir(path: str) -> bool:
    """Whether `path` is a model directory whose config.json has a quantization_config."""
    p = Path(path)
    if not (p.is_dir() and (p / "config.json").is_file()):
        return False
    try:
        cfg = json.loads((p / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(cfg.get("quantization_config"))


def model_class(root: Path, kw: dict[str, Any], causal: bool):
    """The transformers class to load the model with: AutoModelForCausalLM when `causal` (or for a
    .gguf file), else the config's architecture (AutoModel if transformers has no such class)."""
    import transformers

    if causal or "gguf_file" in kw:
        return transformers.AutoModelForCausalLM
    try:
        cfg = transformers.AutoConfig.from_pretrained(root, local_files_only=True, **kw)
    except Exception as e:  # noqa: BLE001 - any config error is the user's file
        raise CLIError(f"cannot read the model config in {str(root)!r}: {one_line(e)}") from e
    arch = (getattr(cfg, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    return cls if cls is not None else transformers.AutoModel


def load_float(path: str, dtype: str, device: str, causal: bool, what: str = "MODEL_DIR") -> tuple[nn.Module, Any]:
    """(model in eval mode on `device`, tokenizer or None) from a local directory or .gguf file."""
    root, kw = local_source(path, what)
    cls = model_class(root, kw, causal)
    dt = DTYPES[dtype]
    if dt == "auto" and "gguf_file" in kw:
        dt = torch.float32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model = cls.from_pretrained(root, local_files_only=True, dtype=dt, **kw)
        except Exception as e:  # noqa: BLE001 - report what transformers said, in one line
            raise CLIError(f"cannot load a model from {path!r}: {one_line(e)}") from e
        tok = load_tokenizer(root, kw)
    return model.to(device).eval(), tok


def load_tokenizer(root: Path, kw: dict[str, Any]) -> Any:
    """The tokenizer saved in `root` (kw: local_source's from_pretrained kwargs), or None."""
    return tokenizer_or_why(root, kw)[0]


def tokenizer_or_why(root: Path, kw: dict[str, Any]) -> tuple[Any, str]:
    """(the tokenizer saved in `root`, "") or (None, why none loads: transformers' error in one line)."""
    from transformers import AutoTokenizer

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return AutoTokenizer.from_pretrained(root, local_files_only=True, **kw), ""
    except Exception as e:  # noqa: BLE001 - no tokenizer is fine until one is needed
        return None, one_line(e)


def read_text(path: str, what: str) -> str:
    p = Path(path).expanduser()
    if not p.is_file():
        raise CLIError(f"{what} {path!r} is not a file")
    return p.read_text(encoding="utf-8", errors="replace")


def token_ids(tok: Any, text: str) -> torch.Tensor:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def token_windows(ids: torch.Tensor, window: int, limit: Optional[int], what: str) -> torch.Tensor:
    """[n, window] non-overlapping windows of `ids` (the first `limit` of them); what: for the error."""
    n = ids.numel() // window
    if n == 0:
        raise CLIError(f"{what} has {ids.numel()} tokens, fewer than one window of {window} (lower --window)")
    if limit is not None:
        n = min(n, limit)
    return ids[: n * window].reshape(n, window)


def checkpoint_label(model: nn.Module, smoothed: Optional[float] = None) -> str:
    """The schemes of the loaded model's QLinears, e.g. "w4a8+w8a8 (checkpoint)", or
    "w8a8 + smooth a=0.5 (checkpoint)" for one `quantize --smooth 0.5` wrote."""
    from ..nn import QLinear

    schemes = sorted({m.scheme for m in model.modules() if isinstance(m, QLinear)})
    smooth = f" + smooth a={smoothed:g}" if smoothed is not None else ""
    head = getattr(model, "lm_head", None)
    head = f" lm_head={head.scheme}" if isinstance(head, QLinear) else ""
    return ("+".join(schemes) or "no QLinear") + head + smooth + " (checkpoint)"
