"""Reading weights safely: state dicts from ``.safetensors`` or ``weights_only`` ``.pt`` files.

Nothing here unpickles an arbitrary object unless the caller passes ``trust_pickle`` (then a
one-line warning goes to stderr first). Sizes are checked against :mod:`ipguard.limits`
before anything is read. Used by :mod:`ipguard.models.nets` (pretrained architectures) and
:mod:`ipguard.models.owner` (model specs), so it imports neither.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ipguard import limits
from ipguard.errors import ModelError, first_line

__all__ = ["PICKLE_SUFFIXES", "load_weights", "pickled_module", "warn_pickle"]

PICKLE_SUFFIXES = (".pt", ".pth")


def warn_pickle(path: str | Path) -> None:
    """The one-line warning printed before unpickling a file with ``trust_pickle``."""
    sys.stderr.write(
        f"warning: unpickling {path} with --trust-pickle: the file can run arbitrary code "
        "on this machine; only do this for files you trust\n"
    )
    sys.stderr.flush()


def _pickle_refusal(p: Path, detail: str) -> ModelError:
    return ModelError(
        f"refusing to unpickle {p}: {detail}; unpickling a file can run arbitrary code",
        "save a state dict or .safetensors, or pass --trust-pickle if you trust the file",
    )


def _check_state(state: dict[str, Tensor], p: Path) -> None:
    if len(state) > limits.MAX_TENSORS:
        raise ModelError(
            f"weights file {p} holds {len(state)} tensors, over the limit of {limits.MAX_TENSORS}"
        )
    total = sum(int(t.numel()) for t in state.values())
    if total > limits.MAX_STATE_DICT_ELEMENTS:
        raise ModelError(
            f"weights file {p} holds {total} tensor elements, over the limit of "
            f"{limits.MAX_STATE_DICT_ELEMENTS}"
        )


def load_weights(path: str | Path, *, trust_pickle: bool = False) -> dict[str, Tensor]:
    """Read a state dict from ``.safetensors``, or a ``.pt``/``.pth`` read with ``weights_only``.

    Never unpickles arbitrary objects unless ``trust_pickle``: then a ``.pt``/``.pth`` file
    that ``weights_only`` refuses (a whole pickled module, a checkpoint with other objects) is
    read with ``torch.load(weights_only=False)`` after a warning on stderr. File size, tensor
    count and tensor elements are checked against :mod:`ipguard.limits`.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"weights file {p} does not exist or is not a file")
    limits.check_file_size(p, limits.MAX_MODEL_FILE_BYTES, "weights file", ModelError)
    obj: Any
    try:
        if p.suffix == ".safetensors":
            from safetensors import SafetensorError
            from safetensors.torch import load_file

            head = limits.read_safetensors_head(p, ModelError)
            limits.check_safetensors_header(
                head, f"weights file {p}", ModelError,
                max_elements=limits.MAX_STATE_DICT_ELEMENTS,
            )  # fmt: skip
            try:
                state = load_file(str(p), device="cpu")
            except (SafetensorError, ValueError, TypeError, OverflowError) as err:
                raise ModelError(
                    f"weights file {p} is not valid safetensors: {first_line(err)[:160]}"
                ) from err
            _check_state(state, p)
            return state
        limits.check_torch_zip(p, ModelError)
        try:
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - torch raises many types here
            if not (_holds_objects(err) and p.suffix in PICKLE_SUFFIXES):
                raise ModelError(
                    f"cannot read weights {p} safely: {type(err).__name__}: "
                    f"{first_line(err)[:160]}",
                    "save a state dict (torch.save(model.state_dict(), ...)) or .safetensors",
                ) from err
            if not trust_pickle:
                raise _pickle_refusal(p, "it holds objects other than tensors") from None
            obj = _unpickle(p)
    except OSError as err:
        raise ModelError(f"cannot read weights file {p}: {err.strerror or err}") from err
    if isinstance(obj, nn.Module):  # only reachable with trust_pickle
        obj = obj.state_dict()
    for wrapper in ("state_dict", "model"):  # training checkpoints wrap the state dict
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()
    ):
        raise ModelError(
            f"weights file {p} does not hold a state dict of tensors",
            "save it with torch.save(model.state_dict(), path)",
        )
    _check_state(obj, p)
    return obj


def _holds_objects(err: BaseException) -> bool:
    """True when ``weights_only`` refused a valid torch.save file for its pickled objects."""
    return isinstance(err, pickle.UnpicklingError) and "GLOBAL" in str(err)


def _unpickle(p: Path) -> Any:
    """``torch.load(weights_only=False)`` after the warning; every failure is a ModelError."""
    warn_pickle(p)
    try:
        return torch.load(str(p), map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - arbitrary code may raise anything
        raise ModelError(
            f"cannot unpickle {p}: {type(err).__name__}: {first_line(err)[:160]}"
        ) from err


def pickled_module(path: Path, trust_pickle: bool) -> nn.Module | None:
    """A whole module pickled with ``torch.save(model, path)``: None if the file is not one.

    Refused (ModelError naming ``--trust-pickle`` and the risk) unless ``trust_pickle``.
    """
    if path.suffix not in PICKLE_SUFFIXES:
        return None
    try:
        torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not _holds_objects(err):
            return None  # garbage or not a torch.save file: the TorchScript error says enough
    except Exception:  # noqa: BLE001 - not a torch.save file at all: the TorchScript error
        return None
    else:
        return None  # plain tensors: not a module (a state dict given as the model)
    if not trust_pickle:
        raise _pickle_refusal(path, "it is a pickled Python object, not a TorchScript archive")
    obj = _unpickle(path)
    if not isinstance(obj, nn.Module):
        raise ModelError(f"{path} unpickles to {type(obj).__name__}, not an nn.Module")
    return obj
