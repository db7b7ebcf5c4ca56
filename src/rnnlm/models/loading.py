"""Loading a training checkpoint for sampling: safely, with clear errors."""

from __future__ import annotations

import errno
import logging
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rnnlm.data.tokenizers import Tokenizer
from rnnlm.models.module import CHECKPOINT_FORMAT, LanguageModel
from rnnlm.models.network import RNNLM
from rnnlm.models.onnx_net import OnnxNet, read_meta
from rnnlm.utils.errors import CheckpointError

log = logging.getLogger(__name__)
TRAIN_HINT = "train one with `make train` (or `python train.py`), or pass ckpt=<path to a .ckpt file>"
MAX_STEP = 10**12  # above trainer.max_steps' bound
OTHER_HINT = "use another checkpoint of the run (sample.py ckpt=<its run dir> picks the newest that loads)"


@dataclass
class LoadedModel:
    net: RNNLM | OnnxNet  # an exported model runs on ONNX Runtime behind the same interface
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


def checkpoints_under(root: Path) -> list[Path]:
    """Every ``.ckpt`` under ``root``: ``last*`` ones first, each group newest first."""
    found = [p for p in root.rglob("*.ckpt") if p.is_file() and not p.name.startswith(".")]
    return sorted(found, key=lambda p: (not p.name.startswith("last"), -p.stat().st_mtime))


def newest_loadable(root: str | Path, option: str = "ckpt", hint: str = TRAIN_HINT) -> tuple[Path, dict[str, Any]]:
    """The newest checkpoint under ``root`` that loads, and its contents. Those skipped are
    printed with the reason; none loading is a one-line error."""
    root = Path(root)
    skipped = []
    for path in checkpoints_under(root):
        try:
            checkpoint = read_checkpoint(path)
        except CheckpointError as err:
            skipped.append(f"{path} ({err.reason})")
            continue
        for reason in skipped:
            log.warning("skipped %s", reason)
        return path, checkpoint
    found = f"no checkpoint that loads (skipped: {', '.join(skipped)})" if skipped else "no checkpoint"
    raise CheckpointError(f"{option}: {root}/ holds {found}; {hint}")


def read_checkpoint(path: str | Path, option: str = "ckpt", hint: str | None = None, mmap: bool = False) -> dict[str, Any]:
    """``torch.load(weights_only=True)``: tensors and plain data only, nothing executes.
    ``hint`` (what to do) defaults to advice for sample.py; ``mmap`` maps the tensors
    instead of reading them (to look at a checkpoint's plain data)."""
    other = hint or OTHER_HINT
    hint = hint or TRAIN_HINT
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"{option}={path} does not exist; {hint}", "it does not exist")
    if path.is_dir():
        raise CheckpointError(f"{option}={path} is a directory; pass a .ckpt file in it, or its run dir to sample.py", "a directory")
    if not path.is_file():  # a pipe or a device would block or never end
        raise CheckpointError(f"{option}={path} is not a regular file; pass a .ckpt file", "not a regular file")
    unreadable = f"{path} is not a readable checkpoint (truncated or corrupted?)"
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if unsafe is None:  # torch reports garbage through the same exception
            raise CheckpointError(f"{unreadable}; {other}", "unreadable") from None
        raise CheckpointError(
            f"refused to load {path}: it holds a pickled object ({unsafe.group(1)}), not only tensors "
            "and plain data; nothing in it was run. Load only checkpoints that rnnlm wrote",
            "holds a pickled object",
        ) from None
    except OSError as err:
        if err.errno in (errno.EACCES, errno.EPERM, errno.EIO):
            raise CheckpointError(f"{option}={path} cannot be read ({err.strerror}); {other}", err.strerror) from None
        raise CheckpointError(f"{unreadable}; {other}", "unreadable") from None
    except Exception as err:  # torch raises many kinds for truncated or foreign files
        raise CheckpointError(f"{unreadable}: {type(err).__name__}; {other}", "unreadable") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("rnnlm_format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not an rnnlm checkpoint (format {CHECKPOINT_FORMAT}); {hint}", "not an rnnlm checkpoint"
        )
    fault = structure_fault(checkpoint)
    if fault:
        raise CheckpointError(f"{path} is damaged: {fault}; {other}", "damaged")
    return checkpoint


def structure_fault(checkpoint: dict[str, Any]) -> str | None:
    """What is wrong with the parts every reader relies on (their types), or None."""
    step = checkpoint.get("global_step", 0)
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= MAX_STEP:
        return f"its global_step is {str(step)[:20]!r}, not a count of steps"
    if not isinstance(checkpoint.get("hyper_parameters", {}), dict):
        return f"its hyper-parameters are {type(checkpoint['hyper_parameters']).__name__}, not a mapping"
    weights = checkpoint.get("state_dict", {})
    if not isinstance(weights, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()):
        return "its state_dict is not a mapping of names to tensors"
    return None


def weights_mismatch(expected: dict[str, torch.Tensor], weights: dict[str, torch.Tensor]) -> str:
    """What differs between the weights the hyper-parameters imply and the stored ones, briefly."""
    problems = [f"{k} is {list(weights[k].shape)}, the hyper-parameters make it {list(v.shape)}"
                for k, v in expected.items() if k in weights and weights[k].shape != v.shape]
    problems += [f"{k} is missing" for k in expected if k not in weights]
    problems += [f"{k} is not part of the model" for k in weights if k not in expected]
    more = f" (and {len(problems) - 2} more)" if len(problems) > 2 else ""
    return ", ".join(problems[:2]) + more


def checkpoint_tokenizer(path: Path, hparams: dict[str, Any], hint: str = OTHER_HINT) -> Tokenizer:
    """The tokenizer a checkpoint's hyper-parameters hold, every field checked: a damaged one is
    a one-line :class:`CheckpointError` naming the file and the fault."""
    if "tokenizer" not in hparams:
        raise CheckpointError(f"{path}: its hyper-parameters hold no tokenizer; {hint}", "no tokenizer")
    try:
        return Tokenizer.from_dict(hparams["tokenizer"])
    except ValueError as err:
        raise CheckpointError(f"{path}: its tokenizer is damaged: {err}; {hint}", "a damaged tokenizer") from None


def load_onnx(path: Path, device: str = "auto") -> LoadedModel:
    """An exported ``model.onnx`` (``python export.py``), run by ONNX Runtime on the CPU."""
    if device not in ("auto", "cpu"):
        raise CheckpointError(f"device={device!r}: an exported model runs on the CPU (ONNX Runtime); use device=cpu or auto")
    meta, tokenizer = read_meta(path)
    return LoadedModel(OnnxNet(path, meta), tokenizer, meta, path, int(meta.get("global_step", 0)))


def load_model(path: str | Path, device: str = "auto") -> LoadedModel:
    """Rebuild the network and tokenizer from a checkpoint (or the newest one in a run dir
    that loads, or an exported ``.onnx`` file), ready for inference."""
    path = Path(path).expanduser()
    if path.suffix == ".onnx" and path.is_file():
        return load_onnx(path, device)
    if path.is_dir():
        path, checkpoint = newest_loadable(path, f"ckpt={path}")
    else:
        checkpoint = read_checkpoint(path)
    hparams = checkpoint.get("hyper_parameters", {})
    tokenizer = checkpoint_tokenizer(path, hparams)
    try:
        net = RNNLM(**LanguageModel.architecture(hparams))
        prefix = "net."
        weights = {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    except (KeyError, ValueError, TypeError) as err:
        raise CheckpointError(f"{path}: its hyper-parameters cannot build a model ({type(err).__name__}: {err}); {OTHER_HINT}") from None
    mismatch = weights_mismatch(net.state_dict(), weights)
    if mismatch:
        raise CheckpointError(f"{path}: its weights do not fit its hyper-parameters: {mismatch}; {OTHER_HINT}")
    net.load_state_dict(weights)
    if len(tokenizer) != net.vocab_size:
        raise CheckpointError(f"{path}: vocabulary of {len(tokenizer)} tokens but the model predicts {net.vocab_size}")
    net.to(resolve_device(device)).eval()
    return LoadedModel(net, tokenizer, hparams, path, int(checkpoint.get("global_step", 0)))
