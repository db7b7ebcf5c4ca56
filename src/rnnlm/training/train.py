"""``train(cfg)``: everything ``python train.py`` does, callable from tests."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from pytorch_lightning.callbacks import LearningRateMonitor
from pytorch_lightning.loggers import Logger, WandbLogger
from pytorch_lightning.trainer.states import TrainerStatus
from pytorch_lightning.utilities.exceptions import MisconfigurationException, SIGTERMException

from rnnlm.data.datamodule import CorpusDataModule
from rnnlm.models.calibration import Calibrate
from rnnlm.models.module import NETWORK_DEFAULTS, PRECISION_KEY, LanguageModel
from rnnlm.models.output import ADAPTIVE_ABOVE, resolve_output
from rnnlm.training.callbacks import AdoptResumedConfig, CheckpointOnInterrupt, sample_texts, steps_per_pass
from rnnlm.training.checkpoint_io import remove_partial_files
from rnnlm.training.precision import CUDA_PRECISIONS, auto_precision, check_precision, on_cuda, use_tf32
from rnnlm.training.resume import check_architecture, check_resumable, resolve_ckpt_path
from rnnlm.training.sizing import size_to_corpus
from rnnlm.utils.cli import sigterm_interrupts
from rnnlm.utils.errors import ConfigError, Interrupted, RnnlmError
from rnnlm.utils.files import write_text
from rnnlm.utils.memory import keep_freed_memory
from rnnlm.utils.options import check_config
from rnnlm.utils.rundir import CHECKPOINT_DIR, check_resume_dir, check_writable, is_launched_rank

log = logging.getLogger(__name__)


def build(config: DictConfig, name: str = "", **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` with one-line errors: ours pass through unwrapped, and a
    value the component itself refuses (``trainer.precision=bogus``) names the group."""
    try:
        return instantiate(config, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, RnnlmError):
            raise cause from None
        if isinstance(cause, (ValueError, TypeError, MisconfigurationException)):
            message = " ".join(str(cause).split())
            where = f"the {name} settings" if name else f"the settings of {config.get('_target_')}"
            raise ConfigError(f"{config.get('_target_')} refused {where}: {message}; fix that override") from None
        target = re.match(r"Error locating target '([^']*)'", str(err))  # a _target_ that names nothing importable
        if target:
            raise ConfigError(f"{target.group(1)} is no class or function that can be imported; fix that _target_ override") from None
        raise


def check_devices(cfg: DictConfig) -> None:
    """On a CPU each device is a process: more of them than cores is refused before they start."""
    devices, accelerator = cfg.trainer.get("devices"), str(cfg.trainer.get("accelerator", "auto"))
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    cores = os.cpu_count() or 1
    if on_cpu and isinstance(devices, int) and not isinstance(devices, bool) and devices > cores:
        raise ConfigError(f"trainer.devices={devices} starts {devices} training processes on a CPU with {cores} cores; "
                          f"use at most trainer.devices={cores} (each process already uses several threads)")


# Rank 0's choice under trainer.precision=auto on a GPU, for the ranks Lightning launches (they
# inherit the environment): a timing could differ between processes.
PRECISION_ENV = "RNNLM_PRECISION"


def probe_network(cfg: DictConfig, vocab_size: int) -> dict[str, Any]:
    """The network the run will train, as :class:`RNNLM` arguments: what a precision probe times."""
    m = cfg.model
    network = {name: m.get(name, NETWORK_DEFAULTS[name]) for name in ("cell", "hidden_size", "num_layers", "embedding_dim",
                                                                      "tie_weights")}
    output = resolve_output(str(m.get("output", NETWORK_DEFAULTS["output"])), vocab_size,
                            int(m.get("adaptive_above", ADAPTIVE_ABOVE)))
    return {"vocab_size": vocab_size, **network, "output": output}


def resolve_precision(cfg: DictConfig, vocab_size: int = 256, resumed: str | None = None) -> None:
    """``trainer.precision=auto``: the fastest that runs here (see ``auto_precision``); a resumed
    GPU run keeps the precision its checkpoint was written in (``resumed``), and Lightning's
    launched ranks take rank 0's. A precision given explicitly is checked against what this
    machine can run."""
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    network = probe_network(cfg, vocab_size)
    batch = {"batch_size": int(cfg.data.get("batch_size", 32)), "seq_len": int(cfg.data.get("seq_len", 64))}
    if on_cuda(accelerator):
        use_tf32()
    if str(cfg.trainer.get("precision")) == "auto":
        chosen_by_rank0 = os.environ.get(PRECISION_ENV, "") if is_launched_rank() else ""
        if on_cuda(accelerator) and chosen_by_rank0 in CUDA_PRECISIONS:
            precision, reason = chosen_by_rank0, "rank 0's choice"
        elif on_cuda(accelerator) and resumed in CUDA_PRECISIONS:
            precision, reason = resumed, "the precision the resumed checkpoint was trained in"
        else:
            precision, reason = auto_precision(accelerator, network, **batch)
        if on_cuda(accelerator):
            os.environ[PRECISION_ENV] = precision
        with read_write(cfg.trainer):
            cfg.trainer.precision = precision
        log.info("trainer.precision=auto: %s (%s)", precision, reason)
    else:
        check_precision(str(cfg.trainer.get("precision")), accelerator, network, **batch)


def instantiate_group(group: DictConfig | None, name: str) -> list[Any]:
    """Instantiate each entry with a ``_target_`` of a dict-of-configs group (callbacks, loggers)."""
    if not group:
        return []
    return [build(c, f"{name}.{key}") for key, c in group.items() if isinstance(c, DictConfig) and "_target_" in c]


def build_datamodule(cfg: DictConfig) -> CorpusDataModule:
    data_cfg = cfg.data
    paths = {key: to_absolute_path(str(data_cfg[key])) for key in ("path", "val_path", "test_path") if data_cfg.get(key)}
    if paths:  # relative to where the command ran, not the run dir
        data_cfg = OmegaConf.merge(data_cfg, paths)
    datamodule = build(data_cfg, "data")
    with sigterm_interrupts("preparing the corpus"):
        datamodule.prepare_data()
        datamodule.setup("fit")
    return datamodule


def prepare_corpus(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """``prepare_only=true``: the corpus encoded into ``data.cache_dir``, nothing trained."""
    if not cfg.data.get("cache_dir"):
        raise ConfigError("prepare_only=true prepares into data.cache_dir, which is null; pass data.cache_dir=<dir>")
    started = time.perf_counter()
    datamodule = build_datamodule(cfg)
    facts = {"tokens": float(datamodule.stats["tokens"]), "vocab_size": float(datamodule.vocab_size),
             "seconds": time.perf_counter() - started}
    return facts, {"prepared": datamodule.cache_entry, "datamodule": datamodule}


def build_model(cfg: DictConfig, datamodule: CorpusDataModule) -> LanguageModel:
    # _convert_="all": hyper-parameters become plain dicts/lists, loadable with weights_only=True.
    return build(cfg.model, "model", vocab_size=datamodule.vocab_size, tokenizer=datamodule.tokenizer.to_dict(),
                 token_counts=datamodule.token_counts, _convert_="all")


def log_run_facts(loggers: list[Logger], cfg: DictConfig, model: LanguageModel, datamodule: CorpusDataModule) -> None:
    facts = {
        "cfg": OmegaConf.to_container(cfg, resolve=True),
        **{f"model/{k}": v for k, v in model.net.memory_report().items()},
        **{f"data/{k}": v for k, v in datamodule.stats.items()},
    }
    for logger in loggers:
        logger.log_hyperparams(facts)
    log.info("model: %s", ", ".join(f"{k}={v:,}" for k, v in model.net.memory_report().items()))


def wandb_run_dir(loggers: list[Logger]) -> str | None:
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            return str(Path(logger.experiment.dir).parent)
    return None


def wandb_settings(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """Name, group and tags a W&B run by its place in a sweep; reuse the id when resuming.

    Each multirun job becomes its own run named by its overrides, grouped by the sweep and
    tagged with the swept values; a resumed run continues its W&B run instead of forking.
    """
    settings: dict[str, Any] = {}
    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode == RunMode.MULTIRUN:
            overrides = list(hydra_cfg.overrides.task)
            settings["name"] = ",".join(overrides) or f"job{hydra_cfg.job.num}"
            if not cfg.logger.wandb.get("group"):
                settings["group"] = f"sweep-{Path(hydra_cfg.sweep.dir).name}"
            settings["tags"] = [*cfg.get("tags", []), *(o[:64] for o in overrides)]
        elif not cfg.logger.wandb.get("name"):
            settings["name"] = output_dir.name
    previous = sorted((output_dir / "wandb").glob("*run-*-*"))
    if cfg.get("ckpt_path") and previous and not cfg.logger.wandb.get("id"):
        settings["id"] = previous[-1].name.rsplit("-", 1)[-1]
        settings["resume"] = "allow"
    return settings


def until_interrupted(trainer: pl.Trainer, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a trainer call; after Ctrl-C or SIGTERM (handled by Lightning, saved by
    :class:`CheckpointOnInterrupt`) raise :class:`Interrupted`, so the process exits with
    128 + the signal's number and a scheduler can requeue it. Lightning itself would exit
    with 1 after Ctrl-C and 0 after SIGTERM."""
    try:
        result = call(*args, **kwargs)
    except SIGTERMException:
        stop_launched_ranks(trainer)
        raise interrupted(trainer, signal.SIGTERM) from None
    except SystemExit:
        if trainer.state.status == TrainerStatus.INTERRUPTED:  # Lightning's exit after KeyboardInterrupt
            raise interrupted(trainer, signal.SIGINT) from None
        raise
    except Exception:
        stop_launched_ranks(trainer)
        raise
    if trainer.received_sigterm:  # arrived where Lightning does not stop (the last batches)
        raise interrupted(trainer, signal.SIGTERM)
    return result


def stop_launched_ranks(trainer: pl.Trainer) -> None:
    """Rank 0 ends with an error: end the ranks it launched (Lightning does so only after
    Ctrl-C), or they would die on the lost connection with a traceback of their own."""
    launcher = trainer.strategy.launcher  # None without launched ranks; each launcher's kill() ends its own
    if launcher is not None and trainer.is_global_zero:
        launcher.kill(signal.SIGKILL)


def interrupted(trainer: pl.Trainer, signum: signal.Signals) -> Interrupted:
    saver = next((c for c in trainer.callbacks if isinstance(c, CheckpointOnInterrupt)), None)
    saved = saver.saved if saver is not None else None
    if saved is None and trainer.checkpoint_callback is not None:
        saved = getattr(trainer.checkpoint_callback, "last_model_path", "") or None
    where = f"saved {saved}; resume with resume_dir={Path(saved).parent.parent}" if saved else "no checkpoint saved yet"
    return Interrupted(f"{signum.name} at step {trainer.global_step}: {where}", signum)


def train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Fit, test the best checkpoint, and return metrics plus the objects that made them."""
    keep_freed_memory()
    check_config(cfg)
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    check_writable(output_dir)
    for partial in [*remove_partial_files(output_dir), *remove_partial_files(output_dir / CHECKPOINT_DIR)]:
        log.warning("removed %s, left by a write that did not finish", partial)
    if cfg.get("resume_dir"):
        check_resume_dir(cfg.resume_dir)  # also checked before Hydra writes; here for in-process calls
        if not cfg.get("ckpt_path"):
            cfg.ckpt_path = "last"

    resume_from = None
    if cfg.get("ckpt_path"):  # checked before the corpus is read: a wrong path fails at once
        given = cfg.ckpt_path if str(cfg.ckpt_path) == "last" else to_absolute_path(str(cfg.ckpt_path))
        resume_from = resolve_ckpt_path(given, output_dir, resuming=bool(cfg.get("resume_dir")))

    if cfg.get("prepare_only"):
        return prepare_corpus(cfg)
    check_devices(cfg)
    datamodule = build_datamodule(cfg)
    sized = size_to_corpus(cfg, len(datamodule.tokens["train"]))
    if sized:
        check_config(cfg)
    if cfg.get("logger") and cfg.logger.get("wandb"):  # after sizing: the run's tags are final
        with open_dict(cfg):
            cfg.logger.wandb.update(wandb_settings(cfg, output_dir))
    resolve_precision(cfg, datamodule.vocab_size, resumed=resume_from[1].get(PRECISION_KEY) if resume_from else None)
    try:
        model = build_model(cfg, datamodule)
    except ConfigError as err:
        if not sized:
            raise
        raise ConfigError(f"{err} (corpus sizing gave this run experiment={cfg.corpus_sizing.small_preset}'s "
                          "settings; corpus_sizing=null keeps the preset's own)") from None
    ckpt_path = None
    if resume_from is not None:
        path, checkpoint = resume_from
        check_resumable(path, checkpoint)
        check_architecture(path, checkpoint, dict(model.hparams))
        ckpt_path = str(path)  # Lightning loads it again, with the trainer state
        del checkpoint, resume_from
    callbacks = instantiate_group(cfg.get("callbacks"), "callbacks")
    if "calibration" in datamodule.tokens and not any(isinstance(c, Calibrate) for c in callbacks):
        callbacks.append(Calibrate())  # data.calibration holds text out: it is always fitted on
    loggers = instantiate_group(cfg.get("logger"), "logger")
    if not loggers:  # Lightning refuses a LearningRateMonitor without a logger to write to
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    callbacks.append(AdoptResumedConfig())  # a resumed run's config is the run's once Lightning has restored it
    trainer: pl.Trainer = build(cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False)
    log_run_facts(loggers, cfg, model, datamodule)

    with warnings.catch_warnings():
        # The DataModule's state_dict makes mid-epoch resumes exact; Lightning only checks
        # the DataLoader for one and warns otherwise.
        warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")
        until_interrupted(trainer, trainer.fit, model, datamodule=datamodule, ckpt_path=ckpt_path)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    batches = trainer.global_step * trainer.accumulate_grad_batches  # optimizer steps count accumulated batches once
    metrics["train/passes"] = batches / steps_per_pass(datamodule, trainer.world_size)  # over the train split

    checkpoint_cb = trainer.checkpoint_callback
    best = checkpoint_cb.best_model_path if checkpoint_cb else ""
    last = getattr(checkpoint_cb, "last_model_path", "") if checkpoint_cb else ""
    if cfg.get("test", True) and not trainer.interrupted:
        # Report val and test of the checkpoint that exists (the best), not of the last step.
        stages = ((trainer.validate, "val/"), (trainer.test, "test/"))[: 2 if datamodule.has_test else 1]
        for evaluate, prefix in stages:
            until_interrupted(trainer, evaluate, model, datamodule=datamodule, ckpt_path=best or None, verbose=False)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(prefix)})
    if trainer.is_global_zero:
        # Final numbers as plain JSON next to the checkpoints: what `rnnlm.report` collects.
        record = {"metrics": metrics, "global_step": trainer.global_step, "best_ckpt": best, "interrupted": trainer.interrupted,
                  "precision": str(trainer.precision),
                  "sized_as": cfg.corpus_sizing.small_preset if sized else None}  # experiment=words ran as this
        write_text(output_dir / "metrics.json", json.dumps(record, indent=2))
    objects = {
        "cfg": cfg, "datamodule": datamodule, "model": model, "trainer": trainer,
        "best_ckpt": best, "last_ckpt": last,
        "wandb_dir": wandb_run_dir(loggers) if trainer.is_global_zero else None,
    }
    return metrics, objects


def bits(metrics: dict[str, float], split: str, suffix: str) -> str:
    """``2.1408 bits/char``, and the bits per token beside it where a token is not one character."""
    bpc, bpt = metrics[f"{split}/bpc{suffix}"], metrics.get(f"{split}/bpt{suffix}", metrics[f"{split}/bpc{suffix}"])
    return f"{bpc:.4f} bits/char" + ("" if abs(bpc - bpt) < 5e-5 else f", {bpt:.4f} bits/token")


def summary(metrics: dict[str, float], objects: dict[str, Any], temperatures=(0.5, 0.8, 1.0), length: int = 300) -> str:
    """What a person wants to see when a run ends: numbers, where things are, samples."""
    if "prepared" in objects:
        return (f"prepared {objects['prepared']}: {metrics['tokens']:,.0f} tokens, vocabulary {metrics['vocab_size']:,.0f} "
                f"({metrics['seconds']:.1f} s); runs with the same data settings map it")
    lines = ["", "=" * 72]
    for split in ("val", "test"):
        if f"{split}/loss" in metrics:
            lines.append(
                f"{split:>5}: loss {metrics[f'{split}/loss']:.4f} nats/token | "
                f"perplexity {metrics[f'{split}/ppl']:.3f} | {bits(metrics, split, '')} | "
                f"accuracy {metrics[f'{split}/acc']:.3f}"
            )
        if f"{split}/loss_stateful" in metrics:
            lines.append(
                f"{'':>5}  read in order, state carried: loss {metrics[f'{split}/loss_stateful']:.4f} | "
                f"{bits(metrics, split, '_stateful')}"
            )
        if f"{split}/bpc_cache" in metrics:
            chosen = " (theta and lambda chosen here)" if split == "val" else ""
            lines.append(f"{'':>5}  with the continuous cache{chosen}: loss {metrics[f'{split}/loss_cache']:.4f} | "
                         f"{metrics[f'{split}/bpc_cache']:.4f} bits/char")
    if "val/cache_theta" in metrics:
        size, theta, lam = (metrics[f"val/cache_{k}"] for k in ("size", "theta", "lambda"))
        lines.append(f"the cache on other text: python sample.py mode=score ckpt={objects['best_ckpt'] or '<checkpoint>'} "
                     f"text_file=<file> cache_size={size:.0f} cache_theta={theta:g} cache_lambda={lam:g}")
    if "train/passes" in metrics:
        lines.append(f"trained {objects['trainer'].global_step:,} steps: {metrics['train/passes']:.1f} passes over the train split")
    if "val/loss_best" in metrics:
        lines.append(f"best val loss: {metrics['val/loss_best']:.4f}")
    lines.append(f"best checkpoint: {objects['best_ckpt'] or '(none saved)'}")
    lines.append(f"last checkpoint: {objects['last_ckpt'] or '(none saved)'}")
    if objects.get("wandb_dir"):
        lines.append(f"W&B offline run: {objects['wandb_dir']}  (upload: wandb sync {objects['wandb_dir']})")
    model: LanguageModel = objects["model"]
    tokenizer = objects["datamodule"].tokenizer
    for temperature, text in sample_texts(model.net, tokenizer, temperatures, length, prompt="\n", seed=0):
        lines += ["", f"--- sample, temperature {temperature} ---", text.strip("\n")]
    lines.append("=" * 72)
    return "\n".join(lines)

