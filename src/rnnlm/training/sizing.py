"""Recipes sized to the corpus: a preset that fits a small train split gives way to another preset.

A preset declares the rule in its config (``conf/experiment/words.yaml``)::

    corpus_sizing:
      small_below_tokens: <N>
      small_preset: words_small  # what a smaller train split gets
      preset: words              # the declaring preset: the run's base outside a Hydra run

Once the corpus is prepared and the train split's size is known, a run whose train split
holds fewer than N tokens becomes the run its own command line would have made with
``experiment=<small_preset>``: Hydra composes both, and every setting in which they differ
is taken from the second. So an override on the command line (``model.dropout=0.3``,
``model=gru``, ``trainer=cpu``) applies as it would to the small preset itself, and a
component whose ``_target_`` differs (the scheduler) is replaced whole. Only settings read
after the corpus is prepared may differ (``SIZED``). docs/results.md ("Sized to the corpus")
has the measurements the threshold rests on.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict

from rnnlm.utils.errors import ConfigError
from rnnlm.utils.files import write_text

log = logging.getLogger(__name__)
CONF_DIR = Path(__file__).resolve().parents[3] / "conf"
# What sizing may change: the settings train() reads after the corpus is prepared.
SIZED = ("model", "callbacks", "tags", "trainer.max_steps")
MISSING = object()


def compose_run(overrides: Sequence[str]) -> dict[str, Any]:
    """``train.yaml`` composed with ``overrides``, as a plain container (interpolations unresolved)."""
    with contextlib.ExitStack() as stack:
        if not GlobalHydra.instance().is_initialized():  # train() called outside @hydra.main (tests, notebooks)
            stack.enter_context(initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"))
        try:
            composed = compose(config_name="train", overrides=list(overrides))
        except HydraException as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(f"corpus sizing could not compose {' '.join(overrides)}: {first}; give "
                              "corpus_sizing.small_preset=<a file of conf/experiment> or corpus_sizing=null") from None
    return OmegaConf.to_container(composed, resolve=False)


def run_overrides(rule: DictConfig) -> list[str]:
    """The job's own command-line overrides; outside a Hydra run, the declaring preset alone."""
    if HydraConfig.initialized():
        return list(HydraConfig.get().overrides.task)
    return [f"experiment={rule.preset}"]


def with_experiment(overrides: Sequence[str], name: str) -> list[str]:
    """``overrides`` with ``experiment=<name>`` in place of the experiment they chose, and
    without those of ``corpus_sizing`` (the rule of the preset being replaced)."""
    def key(override: str) -> str:
        return override.split("=", 1)[0].lstrip("+~")

    kept = [o for o in overrides if key(o) != "experiment" and key(o).split(".")[0] != "corpus_sizing"]
    return [*kept, f"experiment={name}"]


def chosen_here(rule: DictConfig) -> bool:
    """Whether the run chose the preset that declares the rule (not a preset built on it)."""
    return not HydraConfig.initialized() or HydraConfig.get().runtime.choices.get("experiment") == rule.preset


def differences(small: Any, base: Any, key: str = "") -> Iterator[tuple[str, Any, Any]]:
    """``(dotted key, small's value, base's value)`` wherever two configs differ; a component
    with another ``_target_`` is one difference, the whole node. A key only ``base`` holds is
    not one: sizing adds and changes settings, it removes none."""
    if isinstance(small, dict) and isinstance(base, dict) and small.get("_target_") == base.get("_target_"):
        for name in small:
            yield from differences(small[name], base.get(name, MISSING), f"{key}.{name}" if key else name)
    elif small != base:
        yield key, small, base


def size_to_corpus(cfg: DictConfig, train_tokens: int, overrides: Sequence[str] | None = None) -> dict[str, Any]:
    """Apply ``cfg.corpus_sizing`` (module docstring) for a train split of ``train_tokens``;
    returns the settings changed, ``{}`` when the rule keeps the run as composed.
    ``overrides``: the run's command line (default: the Hydra job's)."""
    rule = cfg.get("corpus_sizing")
    if not rule or train_tokens >= rule.small_below_tokens or not chosen_here(rule):
        return {}
    overrides = run_overrides(rule) if overrides is None else list(overrides)
    as_run = compose_run(overrides)
    as_small = compose_run(with_experiment(overrides, rule.small_preset))
    now = OmegaConf.to_container(cfg, resolve=False)
    changed = {}
    for key, value, composed in differences(as_small, as_run):
        if key == "corpus_sizing":
            continue
        if not any(key == k or key.startswith(k + ".") for k in SIZED):
            raise ConfigError(f"experiment={rule.small_preset} sets {key}, which is read before the corpus is "
                              f"prepared; corpus sizing may change only {', '.join(SIZED)}: give {key} on the "
                              "command line or corpus_sizing=null")
        if _get(now, key) == composed:  # a value the caller set since composing is kept
            changed[key] = value
    _apply(cfg, changed)
    log.info("corpus sizing: the train split holds %s tokens, below corpus_sizing.small_below_tokens=%s, so this run "
             "takes experiment=%s's settings (corpus_sizing=null keeps its own): %s",
             f"{train_tokens:,}", f"{rule.small_below_tokens:,}", rule.small_preset,
             ", ".join(f"{k}={_short(v)}" for k, v in changed.items() if k != "tags") or "none")
    _rewrite_saved_config(changed)
    return changed


def _get(container: Any, key: str) -> Any:
    """The raw value at a dotted key of a plain container, or ``MISSING``."""
    for name in key.split("."):
        if not isinstance(container, dict) or name not in container:
            return MISSING
        container = container[name]
    return container


def _apply(config: DictConfig, changed: dict[str, Any]) -> None:
    with open_dict(config):
        for key, value in changed.items():
            OmegaConf.update(config, key, value, merge=False, force_add=True)


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
        _apply(saved, changed)
        write_text(path, OmegaConf.to_yaml(saved))
