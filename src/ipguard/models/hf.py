"""Hugging Face ``transformers`` image classifiers, from a local folder: ``hf:PATH``.

A folder written by ``save_pretrained`` holds ``config.json``, ``model.safetensors`` and
(from the image processor) ``preprocessor_config.json``. ipguard reads it with
``AutoModelForImageClassification.from_pretrained(PATH, local_files_only=True,
use_safetensors=True, trust_remote_code=False)``: never a network call, never pickled
weights, never code from the folder. The extra is optional: ``pip install
ipguard-fingerprint[hf]``.

**Preprocessing.** The processor config is read as JSON (no image-processor class is built,
so no torchvision is needed). A processor maps a 0..255 image ``v`` to
``(v * rescale_factor - image_mean) / image_std`` after resizing it to the model's input
size. ipguard's points are images ``x`` in [0, 1] (``v = 255 x``) at the model's input
size, so the same map is ``(x - mean') / std'`` with ``mean' = image_mean / s`` and
``std' = image_std / s``, ``s = 255 * rescale_factor`` (1 for the usual 1/255): the owner's
normalisation as any other model has it, recorded in the fingerprint. The input size is
``crop_size`` when the processor center-crops, else ``size`` (``height``/``width``, or a
square ``shortest_edge``), else the config's ``image_size``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ipguard import limits
from ipguard.errors import InputError, ModelError, first_line

__all__ = ["HFFolder", "HFImageClassifier", "folder_digest", "is_hf_spec", "read_hf_folder"]

PREFIX = "hf:"
PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5")
SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
_MAX_CONFIG_BYTES = 1 << 20


def is_hf_spec(spec: str) -> bool:
    return spec.startswith(PREFIX)


def transformers_module() -> Any:
    """``transformers``, or a ModelError naming the extra to install. The Hub is switched
    off first (``HF_HUB_OFFLINE``), so nothing it does can reach the network."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        transformers = importlib.import_module("transformers")
    except ImportError as err:
        raise ModelError(
            f"hf: models need the transformers package ({first_line(err)})",
            "pip install 'ipguard-fingerprint[hf]'",
        ) from None
    return transformers


@contextlib.contextmanager
def _quiet(tf: Any) -> Iterator[None]:
    """No loading bars or reports on stderr while ipguard loads (our errors say what failed);
    the caller's transformers logging settings come back afterwards."""
    verbosity = tf.logging.get_verbosity()
    bars = tf.utils.logging.is_progress_bar_enabled()
    tf.logging.set_verbosity_error()
    tf.logging.disable_progress_bar()
    try:
        yield
    finally:
        tf.logging.set_verbosity(verbosity)
        if bars:
            tf.logging.enable_progress_bar()


def _read_json(path: Path) -> dict[str, Any]:
    limits.check_file_size(path, _MAX_CONFIG_BYTES, "config file", ModelError)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ModelError(f"cannot read {path}: {first_line(err)[:160]}") from None
    if not isinstance(obj, dict):
        raise ModelError(f"{path} is not a JSON object")
    return obj


def _numbers(value: Any, where: str) -> tuple[float, ...]:
    values = [value] if isinstance(value, int | float) else value
    if (
        not isinstance(values, list)
        or not values
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    ):
        raise ModelError(f"{where} must be a number or a list of numbers, got {value!r}")
    return tuple(float(v) for v in values)


def _side(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096:
        raise ModelError(f"{where} must be an integer in 1..4096, got {value!r}")
    return value


def _size(processor: dict[str, Any], config: dict[str, Any], where: str) -> tuple[int, int] | None:
    """(H, W) of the model's input, as the processor makes it (see the module doc); None
    when neither the processor nor the config says."""
    candidates: list[tuple[str, Any]] = []
    if processor.get("do_center_crop", "crop_size" in processor) and "crop_size" in processor:
        candidates.append(("crop_size", processor["crop_size"]))
    if processor.get("do_resize", True) and "size" in processor:
        candidates.append(("size", processor["size"]))
    for key, size in candidates:
        if isinstance(size, int):
            return _side(size, f"{where} {key}"), _side(size, f"{where} {key}")
        if isinstance(size, dict):
            if "height" in size and "width" in size:
                return (_side(size["height"], f"{where} {key}.height"),
                        _side(size["width"], f"{where} {key}.width"))  # fmt: skip
            if "shortest_edge" in size:
                side = _side(size["shortest_edge"], f"{where} {key}.shortest_edge")
                return side, side
        raise ModelError(f"{where}: {key} {size!r} is not a size ipguard can replay")
    image_size = config.get("image_size")
    if isinstance(image_size, list | tuple) and len(image_size) == 2:
        return _side(image_size[0], "image_size"), _side(image_size[1], "image_size")
    if image_size is not None:
        return _side(image_size, "image_size"), _side(image_size, "image_size")
    return None


# Processors whose steps are more than resize, rescale and normalise (a channel flip, a
# second division, colour clusters, crop-then-resize): refused rather than misread.
_NOT_REPLAYED = {
    "ImageGPTImageProcessor": "it turns pixels into colour-cluster tokens",
    "PerceiverImageProcessor": "it crops before it resizes",
    "MobileViTImageProcessor": "it flips the channel order",
}


def _check_replayable(processor: dict[str, Any], where: str) -> None:
    kind = str(processor.get("image_processor_type", "")).removesuffix("Fast")
    kind = kind.removesuffix("Pil")
    why = _NOT_REPLAYED.get(kind)
    if why is None and processor.get("do_flip_channel_order"):
        why = "it flips the channel order"
    if why is None and processor.get("rescale_offset"):
        why = "it rescales with an offset"
    if why is None and processor.get("include_top", kind == "EfficientNetImageProcessor"):
        why = "it divides by the std a second time (include_top)"
    if why is not None:
        raise ModelError(
            f"{where}: ipguard cannot replay this processor ({why})",
            "export the model with its preprocessing to ONNX or TorchScript, or give "
            "--input-shape, --mean and --std for a folder without preprocessor_config.json",
        )


def _count(config: dict[str, Any], key: str, default: int, where: str) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1_000_000:
        raise ModelError(f"{where}: {key} must be a positive integer, got {value!r}")
    return value


def _finite(values: tuple[float, ...], what: str, where: str) -> tuple[float, ...]:
    if not all(math.isfinite(v) for v in values):
        raise ModelError(f"{where}: {what} must be finite numbers, got {list(values)}")
    return values


@dataclass(frozen=True)
class HFFolder:
    """A checked ``save_pretrained`` folder of an image classifier.

    Attributes:
        path: the folder.
        architecture: the config's model class, e.g. ``ViTForImageClassification``.
        num_classes: the config's number of labels.
        input_shape: ``(C, H, W)`` the processor makes (or the config's image size), or
            None when the folder has neither.
        mean, std: the normalisation of [0, 1] images (rescaling folded in), or None when
            the folder has no processor config.
        processor: the processor config as read (empty without one).
    """

    path: Path
    architecture: str
    num_classes: int
    input_shape: tuple[int, int, int] | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    processor: dict[str, Any]

    def conventions(
        self,
        input_shape: tuple[int, int, int] | None,
        mean: Sequence[float] | None,
        std: Sequence[float] | None,
        *,
        need_shape: bool = True,
    ) -> tuple[tuple[int, int, int] | None, Sequence[float] | None, Sequence[float] | None]:
        """The input shape and normalisation of this folder as an owner: what the caller
        gave, else what its processor config says; without one, the caller must say (never
        guessed)."""
        if not self.processor and (mean is None or std is None):
            raise InputError(
                f"{self.spec} has no preprocessor_config.json, so its input normalisation is "
                "unknown",
                "give --mean and --std (0 and 1 for none), and --input-shape C,H,W unless "
                "config.json has image_size",
            )
        shape = input_shape if input_shape is not None else self.input_shape
        if shape is None and need_shape:
            raise InputError(
                f"{self.spec} gives no input size (no size in its processor config, no "
                "image_size in config.json)",
                "give --input-shape C,H,W",
            )
        return shape, self.mean if mean is None else mean, self.std if std is None else std

    @property
    def spec(self) -> str:
        return f"{PREFIX}{self.path}"

    def load(self, *, pretrained: bool = True, num_classes: int | None = None) -> nn.Module:
        """The ``transformers`` model in float32 with eager attention (a config's own kernel
        choice could download code): the folder's weights, every one of them present and of
        the right shape, or (``pretrained=False``) a fresh model of the same architecture
        drawn from torch's random state."""
        tf = transformers_module()
        auto = tf.AutoModelForImageClassification
        pinned = {"dtype": torch.float32, "attn_implementation": "eager"}
        try:
            with _quiet(tf):
                if not pretrained:
                    config = tf.AutoConfig.from_pretrained(
                        str(self.path), local_files_only=True, trust_remote_code=False
                    )
                    if num_classes is not None and num_classes != config.num_labels:
                        config.num_labels = num_classes
                        config.id2label = {i: str(i) for i in range(num_classes)}
                        config.label2id = {str(i): i for i in range(num_classes)}
                    fresh: nn.Module = auto.from_config(config, trust_remote_code=False, **pinned)
                    return fresh
                model, info = auto.from_pretrained(
                    str(self.path), local_files_only=True, use_safetensors=True,
                    trust_remote_code=False, output_loading_info=True,
                    ignore_mismatched_sizes=True, **pinned,
                )  # fmt: skip
        except Exception as err:  # noqa: BLE001 - transformers raises many types here
            raise ModelError(
                f"cannot load {self.spec} as an image classifier: {type(err).__name__}: "
                f"{first_line(err)[:200]}"
            ) from None
        missing = list(info.get("missing_keys") or [])
        mismatched = [str(m[0]) if isinstance(m, tuple) else str(m)
                      for m in info.get("mismatched_keys") or []]  # fmt: skip
        if missing or mismatched:
            what = (
                (f"missing weights {', '.join(missing[:3])}" if missing else "")
                + ("; " if missing and mismatched else "")
                + (f"weights of the wrong shape {', '.join(mismatched[:3])}" if mismatched else "")
            )
            raise ModelError(
                f"{self.spec}: model.safetensors does not fit its config.json ({what})",
                "save the whole classifier with save_pretrained; ipguard never fills in "
                "random weights",
            )
        if num_classes is not None and num_classes != self.num_classes:
            raise ModelError(f"{self.spec} has {self.num_classes} classes, not {num_classes}")
        loaded: nn.Module = model
        return loaded

    def module(
        self,
        *,
        preprocess: bool,
        pretrained: bool = True,
        input_shape: Sequence[int] | None = None,
        num_classes: int | None = None,
    ) -> HFImageClassifier:
        """The model as a logits module on ``(N, C, H, W)`` inputs.

        ``preprocess=False``: it takes normalised pixel values (the owner's normalisation is
        then applied by :class:`~ipguard.models.owner.OwnerModel` and recorded in the fingerprint).
        ``preprocess=True``: it takes [0, 1] images of any size, resizes them (bilinear) to
        the processor's size and normalises them with its mean/std (suspects, suites);
        ``input_shape`` is the resize target only when the folder gives no size.
        """
        size = None
        if preprocess:  # the processor's size; the caller's shape only when it has none
            shape = self.input_shape or (None if input_shape is None else tuple(input_shape))
            size = None if shape is None else (int(shape[1]), int(shape[2]))
        model = self.load(pretrained=pretrained, num_classes=num_classes)
        return HFImageClassifier(
            model, mean=self.mean if preprocess else None, std=self.std if preprocess else None,
            size=size,
        )  # fmt: skip


class HFImageClassifier(nn.Module):
    """A ``transformers`` image classifier as a plain module: ``forward(x)`` returns the
    logits ``(N, classes)``; with ``size``/``mean``/``std`` it first resizes (bilinear) and
    normalises ``x`` as the model's processor would."""

    def __init__(
        self,
        model: nn.Module,
        *,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.size = size
        self.mean: Tensor | None
        self.std: Tensor | None
        self.register_buffer("mean", _channels(mean), persistent=False)
        self.register_buffer("std", _channels(std), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        if self.mean is not None and self.std is not None:
            x = (x - self.mean) / self.std
        logits: Tensor = self.model(pixel_values=x).logits
        return logits


def _channels(values: Sequence[float] | None) -> Tensor | None:
    if values is None:
        return None
    return torch.tensor([float(v) for v in values], dtype=torch.float32).view(1, -1, 1, 1)


def read_hf_folder(spec: str | Path) -> HFFolder:
    """Check a ``hf:PATH`` folder (or PATH) and read what ipguard needs from it.

    Raises ModelError, with the fix, for a path that is not a folder, a folder without
    ``config.json``, a model that is not an image classifier or needs remote code, and
    weights only in pickled form. A missing processor config is not an error here
    (``input_shape``/``mean``/``std`` are None): the caller asks for them.
    """
    text = str(spec)
    path = Path(text[len(PREFIX) :] if text.startswith(PREFIX) else text).expanduser()
    where = f"{PREFIX}{path}"
    if not path.is_dir():
        raise ModelError(f"{where}: no such folder", "give a folder written by save_pretrained")
    if not (path / "config.json").is_file():
        raise ModelError(f"{where} has no config.json", "give a folder written by save_pretrained")
    config = _read_json(path / "config.json")
    if "auto_map" in config or config.get("trust_remote_code"):
        raise ModelError(
            f"{where} needs code from the folder (auto_map in config.json)",
            "ipguard never runs remote code: export the model to ONNX or TorchScript instead",
        )
    archs = config.get("architectures") or []
    arch = archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else ""
    if not arch.endswith("ForImageClassification"):
        raise ModelError(
            f"{where} is not an image classifier (architectures: {archs or 'none'})",
            "give a folder of an *ForImageClassification model",
        )
    if not any((path / name).is_file() for name in SAFE_WEIGHTS):
        pickled = [name for name in PICKLED_WEIGHTS if (path / name).is_file()]
        raise ModelError(
            f"{where} has no model.safetensors"
            + (f", only pickled weights ({', '.join(pickled)})" if pickled else ""),
            "save it with save_pretrained(path, safe_serialization=True); pickled weights "
            "can run code and are never read",
        )
    for weights in path.glob("*.safetensors"):
        limits.check_file_size(weights, limits.MAX_MODEL_FILE_BYTES, "weights file", ModelError)
    labels = config.get("id2label")
    num_classes = (
        len(labels)
        if isinstance(labels, dict) and labels
        else _count(config, "num_labels", 2, where)
    )
    channels = _count(config, "num_channels", 3, where)
    proc_file = path / "preprocessor_config.json"
    processor = _read_json(proc_file) if proc_file.is_file() else {}
    mean = std = None
    size = _size(processor, config, f"{where} preprocessor_config.json")
    if processor:
        _check_replayable(processor, f"{where} preprocessor_config.json")
        rf = processor.get("rescale_factor", 1 / 255)
        if isinstance(rf, bool) or not isinstance(rf, int | float) or not 0 < rf < math.inf:
            raise ModelError(f"{where}: rescale_factor must be a number > 0, got {rf!r}")
        scale = 255.0 * float(rf) if processor.get("do_rescale", True) else 255.0
        # a key left out means the processor's default: normalising where it gives a mean
        if processor.get("do_normalize", "image_mean" in processor) and "image_mean" in processor:
            m = _numbers(processor["image_mean"], f"{where} image_mean")
            sd = _numbers(processor.get("image_std", 1.0), f"{where} image_std")
            m = m * channels if len(m) == 1 else m
            sd = sd * channels if len(sd) == 1 else sd
            if len(m) != channels or len(sd) != channels or min(sd) <= 0:
                raise ModelError(
                    f"{where}: image_mean/image_std must give {channels} values, std > 0"
                )
        else:
            m, sd = (0.0,) * channels, (1.0,) * channels
        mean = _finite(tuple(v / scale for v in m), "image_mean", where)
        std = _finite(tuple(v / scale for v in sd), "image_std", where)
    shape = None if size is None else (channels, size[0], size[1])
    return HFFolder(path, arch, num_classes, shape, mean, std, processor)


def folder_digest(spec: str | Path) -> str:
    """SHA-256 of a ``hf:`` folder's config and processor config: what a model built from
    the folder's architecture depends on (a cache key part)."""
    folder = read_hf_folder(spec)
    h = hashlib.sha256()
    for name in ("config.json", "preprocessor_config.json"):
        f = folder.path / name
        h.update(name.encode() + b"\0" + (f.read_bytes() if f.is_file() else b"") + b"\0")
    return h.hexdigest()
