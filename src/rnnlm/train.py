"""``train(cfg)``: everything ``python train.py`` does, callable from tests."""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from pytorch_lightning.loggers import Logger, WandbLogger

from rnnlm.callbacks import sample_texts
from rnnlm.data.datamodule import CorpusDataModule
from rnnlm.errors import RnnlmError
from rnnlm.models.module import LanguageModel
from rnnlm.runtime import auto_precision, keep_freed_memory

log = logging.getLogger(__name__)


def check_writable(directory: Path) -> None:
    """Fail before training, not after hours of it, when the run dir cannot hold files."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-"):
            pass
    except OSError as err:
        raise RnnlmError(
            f"output dir {directory} is not writable ({err.strerror}); free disk space, fix "
            "its permissions or pass hydra.run.dir=<a writable dir>"
        ) from None


def build(config: DictConfig, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``, letting our one-line errors through unwrapped."""
    try:
        return instantiate(config, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, RnnlmError):
            raise err.__cause__ from None
        raise


def resolve_precision(cfg: DictConfig) -> None:
    """``trainer.precision=auto``: bf16-mixed where it is faster (see ``auto_precision``), else fp32."""
    if str(cfg.trainer.get("precision")) == "auto":
        precision, reason = auto_precision(str(cfg.trainer.get("accelerator", "auto")), str(cfg.model.get("cell", "lstm")))
        with read_write(cfg.trainer):
            cfg.trainer.precision = precision
        log.info("trainer.precision=auto: %s (%s)", precision, reason)


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate each entry with a ``_target_`` of a dict-of-configs group (callbacks, loggers)."""
    if not group:
        return []
    return [build(c) for c in group.values() if isinstance(c, DictConfig) and "_target_" in c]


def build_datamodule(cfg: DictConfig) -> CorpusDataModule:
    data_cfg = cfg.data
    if data_cfg.get("path"):
        data_cfg = OmegaConf.merge(data_cfg, {"path": to_absolute_path(str(data_cfg.path))})
    datamodule = build(data_cfg)
    datamodule.setup("fit")
    return datamodule


def build_model(cfg: DictConfig, datamodule: CorpusDataModule) -> LanguageModel:
    # _convert_="all": hyper-parameters become plain dicts/lists, loadable with weights_only=True.
    return build(
        cfg.model, vocab_size=datamodule.vocab_size, tokenizer=datamodule.tokenizer.to_dict(), _convert_="all"
    )


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


def train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Fit, test the best checkpoint, and return metrics plus the objects that made them."""
    keep_freed_memory()
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    check_writable(output_dir)
    if cfg.get("resume_dir") and not cfg.get("ckpt_path"):
        cfg.ckpt_path = "last"
    if cfg.get("logger") and cfg.logger.get("wandb"):
        with open_dict(cfg):
            cfg.logger.wandb.update(wandb_settings(cfg, output_dir))

    resolve_precision(cfg)
    datamodule = build_datamodule(cfg)
    model = build_model(cfg, datamodule)
    callbacks = instantiate_group(cfg.get("callbacks"))
    loggers = instantiate_group(cfg.get("logger"))
    trainer: pl.Trainer = build(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    log_run_facts(loggers, cfg, model, datamodule)

    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path and ckpt_path != "last":
        ckpt_path = to_absolute_path(str(ckpt_path))
    with warnings.catch_warnings():
        # The DataModule's state_dict makes mid-epoch resumes exact; Lightning only checks
        # the DataLoader for one and warns otherwise.
        warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}

    checkpoint_cb = trainer.checkpoint_callback
    best = checkpoint_cb.best_model_path if checkpoint_cb else ""
    last = getattr(checkpoint_cb, "last_model_path", "") if checkpoint_cb else ""
    if cfg.get("test", True) and not trainer.interrupted:
        # Report val and test of the checkpoint that exists (the best), not of the last step.
        stages = ((trainer.validate, "val/"), (trainer.test, "test/"))[: 2 if datamodule.has_test else 1]
        for evaluate, prefix in stages:
            evaluate(model, datamodule=datamodule, ckpt_path=best or None, verbose=False)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(prefix)})
    if trainer.is_global_zero:
        # Final numbers as plain JSON next to the checkpoints: what `rnnlm.report` collects.
        record = {"metrics": metrics, "global_step": trainer.global_step, "best_ckpt": best, "interrupted": trainer.interrupted,
                  "precision": str(trainer.precision)}
        (output_dir / "metrics.json").write_text(json.dumps(record, indent=2))
    objects = {
        "cfg": cfg, "datamodule": datamodule, "model": model, "trainer": trainer,
        "best_ckpt": best, "last_ckpt": last,
        "wandb_dir": wandb_run_dir(loggers) if trainer.is_global_zero else None,
    }
    return metrics, objects


def summary(metrics: dict[str, float], objects: dict[str, Any], temperatures=(0.5, 0.8, 1.0), length: int = 300) -> str:
    """What a person wants to see when a run ends: numbers, where things are, samples."""
    lines = ["", "=" * 72]
    for split in ("val", "test"):
        if f"{split}/loss" in metrics:
            lines.append(
                f"{split:>5}: loss {metrics[f'{split}/loss']:.4f} nats/token | "
                f"perplexity {metrics[f'{split}/ppl']:.3f} | {metrics[f'{split}/bpc']:.4f} bits/token | "
                f"accuracy {metrics[f'{split}/acc']:.3f}"
            )
        if f"{split}/loss_stateful" in metrics:
            lines.append(
                f"{'':>5}  read in order, state carried: loss {metrics[f'{split}/loss_stateful']:.4f} | "
                f"{metrics[f'{split}/bpc_stateful']:.4f} bits/token"
            )
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

