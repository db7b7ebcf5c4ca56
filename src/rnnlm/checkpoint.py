"""Loading a training checkpoint for sampling: safely, with clear errors."""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rnnlm.data.tokenizers import Tokenizer
from rnnlm.errors import CheckpointError
from rnnlm.models.module import CHECKPOINT_FORMAT, LanguageModel
from rnnlm.models.rnn import RNNLM

TRAIN_HINT = "train one with `make train` (or `python train.py`), or pass ckpt=<path to a .ckpt file>"


@dataclass
class LoadedModel:
    net: RNNLM
    tokenizer: Tokenizer
    hparams: dict[str, Any]
    path: Path
    global_step: int


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CheckpointError(f"device={device!r} but no CUDA GPU is available; use device=cpu or device=auto")
    try:
        return torch.device(device)
    except RuntimeError:
        raise CheckpointError(f"device={device!r} is not a device; use auto, cpu or cuda") from None


def latest_checkpoint(root: str | Path = "outputs") -> Path:
    """The most recently written ``last.ckpt`` (else any ``.ckpt``) under ``root``."""
    root = Path(root)
    found = (list(root.rglob("last.ckpt")) or list(root.rglob("*.ckpt"))) if root.is_dir() else []
    if not found:
        raise CheckpointError(f"no checkpoint found under {root}/; {TRAIN_HINT}")
    return max(found, key=lambda p: p.stat().st_mtime)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)``: tensors and plain data only, nothing executes."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; {TRAIN_HINT}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if unsafe is None:  # torch reports garbage through the same exception
            raise CheckpointError(
                f"{path} is not a readable checkpoint (truncated or corrupted?); "
                "use another checkpoint, e.g. the run's last.ckpt"
            ) from None
        raise CheckpointError(
            f"refused to load {path}: it holds a pickled object ({unsafe.group(1)}), not only tensors "
            "and plain data; nothing in it was run. Load only checkpoints that rnnlm wrote"
        ) from None
    except Exception as err:  # torch raises many kinds for truncated or foreign files
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated or corrupted?): "
            f"{type(err).__name__}; use another checkpoint, e.g. the run's last.ckpt"
        ) from None
    if not isinstance(checkpoint, dict) or checkpoint.get("rnnlm_format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an rnnlm checkpoint (format {CHECKPOINT_FORMAT}); {TRAIN_HINT}")
    return checkpoint


def load_model(path: str | Path, device: str = "auto") -> LoadedModel:
    """Rebuild the network and tokenizer from a checkpoint, ready for inference."""
    checkpoint = read_checkpoint(path)
    hparams = dict(checkpoint.get("hyper_parameters", {}))
    try:
        tokenizer = Tokenizer.from_dict(hparams["tokenizer"])
        net = RNNLM(**LanguageModel.architecture(hparams))
        prefix = "net."
        weights = {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
        net.load_state_dict(weights)
    except (KeyError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: checkpoint contents do not fit the model ({type(err).__name__}: {str(err)[:200]})") from None
    if len(tokenizer) != net.vocab_size:
        raise CheckpointError(f"{path}: vocabulary of {len(tokenizer)} tokens but the model predicts {net.vocab_size}")
    net.to(resolve_device(device)).eval()
    return LoadedModel(net, tokenizer, hparams, Path(path), int(checkpoint.get("global_step", 0)))
