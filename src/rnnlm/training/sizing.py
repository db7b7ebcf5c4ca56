"""Recipes sized to the corpus: a preset that fits a small train split takes another preset's settings.

A preset declares the rule in its config (``conf/experiment/words.yaml``)::

    corpus_sizing:
      preset: words              # the preset declaring the rule: what the run is compared with
      small_below_tokens: 1000000
      small_preset: words_small  # the settings a smaller train split gets

Once the corpus is prepared and the train split's size is known, a run whose train split
holds fewer tokens than ``small_below_tokens`` takes every setting in which ``small_preset``
differs from ``preset``, except where the run's own value is not the preset's (an override
on the command line wins). A component whose ``_target_`` differs (the scheduler) is
replaced whole. docs/results.md has the measurements the threshold rests on.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from rnnlm.utils.errors import ConfigError
from rnnlm.utils.files import write_text

log = logging.getLogger(__name__)
CONF_DIR = Path(__file__).resolve().parents[3] / "conf"
MISSING = object()


def compose_preset(name: str) -> DictConfig:
    """``train.yaml`` composed with ``experiment=<name>`` and nothing else (interpolations unresolved)."""
    with contextlib.ExitStack() as stack:
        if not GlobalHydra.instance().is_initialized():  # train() called outside @hydra.main (tests, notebooks)
            stack.enter_context(initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"))
        return compose(config_name="train", overrides=[f"experiment={name}"])


def differences(small: Any, base: Any, key: str = "") -> Iterator[tuple[str, Any, Any]]:
    """``(dotted key, small's value, base's value)`` wherever the two presets differ; a
    component with another ``_target_`` is one difference, the whole node."""
    if isinstance(small, dict) and isinstance(base, dict) and small.get("_target_") == base.get("_target_"):
        for name in small:
            yield from differences(small[name], base.get(name, MISSING), f"{key}.{name}" if key else name)
    elif small != base:
        yield key, small, base


def size_to_corpus(cfg: DictConfig, train_tokens: int) -> dict[str, Any]:
    """Apply ``cfg.corpus_sizing`` (module docstring) for a train split of ``train_tokens``;
    returns the settings changed, ``{}`` when the rule keeps the preset's own."""
    rule = cfg.get("corpus_sizing")
    if not rule or train_tokens >= rule.small_below_tokens:
        return {}
    small = OmegaConf.to_container(compose_preset(rule.small_preset), resolve=False)
    base = OmegaConf.to_container(compose_preset(rule.preset), resolve=False)
    run = OmegaConf.to_container(cfg, resolve=False)
    given = _given_on_command_line()
    changed = {}
    for key, value, preset_value in differences(small, base):
        if key == "corpus_sizing":
            continue
        if key.split(".")[0] == "data":  # the corpus is prepared by now: a preset may not resize it
            raise ConfigError(f"experiment={rule.small_preset} sets {key}; a corpus_sizing preset may not change data.*")
        if _get(run, key) != preset_value or any(_related(key, name) for name in given):
            continue  # the run's own setting (an override) wins
        parent = key.rpartition(".")[0]
        if preset_value is MISSING and parent and _keys(_get(run, parent)) != _keys(_get(base, parent)):
            continue  # a new component, in a group the run chose otherwise (callbacks=none)
        changed[key] = value
    _update(cfg, changed)
    log.info("corpus sizing: the train split holds %s tokens, below %s: experiment=%s's settings %s",
             f"{train_tokens:,}", f"{rule.small_below_tokens:,}", rule.small_preset,
             ", ".join(f"{k}={_short(v)}" for k, v in changed.items()) or "(all overridden)")
    _rewrite_saved_config(changed)
    return changed


def _given_on_command_line() -> list[str]:
    """The dotted keys the command line set, even to the preset's own value (``model.dropout=0.2``,
    ``model/scheduler=cosine``); none outside a Hydra run."""
    if not HydraConfig.initialized():
        return []
    keys = (override.split("=", 1)[0].lstrip("+~").split("@", 1)[0] for override in HydraConfig.get().overrides.task)
    return [key.replace("/", ".") for key in keys]


def _related(key: str, given: str) -> bool:
    """``given`` is ``key``, inside it or holds it."""
    return key == given or key.startswith(given + ".") or given.startswith(key + ".")


def _get(container: Any, key: str) -> Any:
    """The raw value at a dotted key of a plain container, or ``MISSING``."""
    for name in key.split("."):
        if not isinstance(container, dict) or name not in container:
            return MISSING
        container = container[name]
    return container


def _keys(node: Any) -> set[str] | None:
    return set(node) if isinstance(node, dict) else None


def _update(cfg: DictConfig, changed: dict[str, Any]) -> None:
    with open_dict(cfg):
        for key, value in changed.items():
            OmegaConf.update(cfg, key, value, merge=False, force_add=True)


def _short(value: Any) -> str:
    return value["_target_"].rpartition(".")[2] if isinstance(value, dict) and "_target_" in value else str(value)


def _rewrite_saved_config(changed: dict[str, Any]) -> None:
    """The job's saved ``config.yaml`` gets the sized settings: it is the config the run
    trains with (``rnnlm.report`` reads it)."""
    if not HydraConfig.initialized():
        return
    hydra = HydraConfig.get()
    if hydra.output_subdir is None:
        return
    path = Path(hydra.runtime.output_dir) / hydra.output_subdir / "config.yaml"
    if path.is_file():
        saved = OmegaConf.load(path)
        _update(saved, changed)
        write_text(path, OmegaConf.to_yaml(saved))
