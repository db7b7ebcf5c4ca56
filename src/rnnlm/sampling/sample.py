"""``sample(cfg)``: what ``python sample.py`` does: generate from, or score text with, a checkpoint."""

from __future__ import annotations

import json
import logging
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from rnnlm.generation.decoding import generate
from rnnlm.generation.plan import decode_plan, score_text, text_ids
from rnnlm.generation.stats import sample_statistics
from rnnlm.generation.stopping import TextStreams, through_stop
from rnnlm.models.cache import score_with_cache
from rnnlm.models.loading import TRAIN_HINT, LoadedModel, load_model
from rnnlm.utils.errors import CheckpointError, ConfigError
from rnnlm.utils.files import disk_error, streamed, write_text
from rnnlm.utils.memory import keep_freed_memory
from rnnlm.utils.options import check_config, existing_path

log = logging.getLogger(__name__)


def read_text_option(cfg: DictConfig, text_key: str, file_key: str, exclusive: bool = True) -> str | None:
    """Text given inline, or read from a file; with ``exclusive`` passing both is an error,
    otherwise the file wins (``prompt`` has a default, ``prompt_file`` replaces it)."""
    inline, file = cfg.get(text_key), cfg.get(file_key)
    if exclusive and inline is not None and file:
        raise ConfigError(f"pass either {text_key}= or {file_key}=, not both")
    if not file:
        return None if inline is None else str(inline)
    path = existing_path(file_key, to_absolute_path(str(file)), "pass a UTF-8 text file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not valid UTF-8 at byte offset {err.start}; convert it to UTF-8") from None


def load(cfg: DictConfig) -> LoadedModel:
    ckpt = cfg.get("ckpt")
    # No ckpt: the newest checkpoint that loads under outputs/ (the newest run's, normally).
    path = Path(to_absolute_path(str(ckpt) if ckpt else "outputs"))
    if not ckpt and not path.is_dir():
        raise CheckpointError(f"no checkpoint found under {path}/; {TRAIN_HINT}")
    loaded = load_model(path, cfg.get("device", "auto"))
    log.info("loaded %s (step %d, %s tokenizer, vocab %d)", loaded.path, loaded.global_step, loaded.tokenizer.kind, len(loaded.tokenizer))
    return loaded


def score(cfg: DictConfig, loaded: LoadedModel) -> dict[str, Any]:
    text = read_text_option(cfg, "text", "text_file")
    if not text:
        raise ConfigError("mode=score needs the text to score: pass text='...' or text_file=<path>")
    ids, chars = text_ids(loaded, text, cfg.get("unknown", "replace"))
    cached = score_with_cache(loaded.net, ids, chars, cfg.cache_size, cfg.cache_theta, cfg.cache_lambda) if cfg.get("cache_size") else {}
    return {**score_text(loaded, ids, chars), **cached}


def generate_samples(cfg: DictConfig, loaded: LoadedModel, output_dir: Path) -> dict[str, Any]:
    tokenizer = loaded.tokenizer
    plan = decode_plan(cfg, tokenizer, lambda: read_text_option(cfg, "prompt", "prompt_file", exclusive=False) or "")
    prompt, settings, length, ids, beam = plan.prompt, plan.settings, plan.length, plan.ids, plan.settings.beam
    keep = cfg.get("keep_tokens")
    n = cfg.num_samples
    echo = bool(cfg.get("stream", True)) and n == 1 and not beam

    start = time.perf_counter()
    with ExitStack() as stack:
        # Each stream's text goes to its own file as it is produced: memory stays bounded. A
        # file takes its final name once complete (interrupted: sample_<i>.txt.partial).
        paths = [output_dir / f"sample_{i}.txt" for i in range(n)]
        files = [stack.enter_context(streamed(path, encoding="utf-8")) for path in paths]
        if not beam:
            for f in files:
                f.write(prompt)

        def on_step(pieces: list[str]) -> None:
            for i, piece in enumerate(pieces):
                if piece:
                    try:
                        files[i].write(piece)
                    except OSError as err:
                        raise disk_error(paths[i], err, f"what was written is in {paths[i].name}.partial") from None
                    if echo and i == 0:
                        sys.stdout.write(piece)
                        sys.stdout.flush()

        if echo:
            sys.stdout.write(prompt)
        streams = TextStreams(tokenizer, n, plan.stop)
        result = generate(loaded.net, ids, length, n, settings, cfg.get("seed"), streams, on_step=on_step, keep=keep)
        texts = [prompt + through_stop(tokenizer.decode(tokens), plan.stop) for tokens in result.tokens]
        if beam:
            for f, text in zip(files, texts):
                f.write(text)
    elapsed = time.perf_counter() - start
    if echo:
        sys.stdout.write("\n")
    generated = sum(len(t) for t in result.tokens) if keep is None or length <= keep else n * length
    stats = sample_statistics(result.tokens, result.nll)
    samples = [
        {"text": text, "new_tokens": len(tokens), "nll_per_token": nll,
         **({"score": result.scores[i]} if result.scores else {})}
        for i, (text, tokens, nll) in enumerate(zip(texts, result.tokens, result.nll))
    ]
    return {"samples": samples, "stats": stats, "seconds": elapsed,
            "tokens_per_s": generated / elapsed if elapsed > 0 else None, "printed": echo}


def sample(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Generate (``mode=generate``) or score (``mode=score``); write ``result.json`` to the run dir."""
    keep_freed_memory()
    check_config(cfg)
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    loaded = load(cfg)
    settings = OmegaConf.to_container(cfg, resolve=True)
    if cfg.mode == "score":
        result = score(cfg, loaded)
        metrics = {f"score/{k}": float(v) for k, v in result.items()}
    else:
        result = generate_samples(cfg, loaded, output_dir)
        metrics = {f"sample/{k}": float(v) for k, v in result["stats"].items()}
    record = {"ckpt": str(loaded.path), "global_step": loaded.global_step, "settings": settings, **result}
    write_text(output_dir / "result.json", json.dumps(record, indent=2, ensure_ascii=False))
    return metrics, {"record": record, "output_dir": output_dir}


def report(metrics: dict[str, float], objects: dict[str, Any]) -> str:
    record = objects["record"]
    lines = []
    if "samples" in record:
        for i, s in enumerate(record["samples"]):
            if not record.get("printed"):
                score = f", score {s['score']:.3f}" if "score" in s else ""
                lines += [f"--- sample {i} (nll {s['nll_per_token']:.3f} nats/token{score}) ---", s["text"], ""]
        st = record["stats"]
        speed = f"{record['tokens_per_s']:.0f} tokens/s" if record.get("tokens_per_s") else "n/a"
        lines.append(
            f"nll/token {st['nll_per_token']:.3f} | distinct-1/2/3 {st['distinct_1']:.3f}/{st['distinct_2']:.3f}/"
            f"{st['distinct_3']:.3f} | repeated 4-grams {st['repetition_4']:.3f} | {speed}"
        )
    else:
        lines.append(
            f"score: loss {record['loss']:.4f} nats/token | perplexity {record['ppl']:.3f} | "
            f"{record['bpc']:.4f} bits/char, {record['bpt']:.4f} bits/token | accuracy {record['acc']:.3f} "
            f"over {record['tokens']} tokens"
        )
        if "bpc_cache" in record:
            settings = record["settings"]
            lines.append(f"with the continuous cache (size {settings['cache_size']}, theta {settings['cache_theta']}, "
                         f"lambda {settings['cache_lambda']}): loss {record['loss_cache']:.4f} nats/token | "
                         f"perplexity {record['ppl_cache']:.3f} | {record['bpc_cache']:.4f} bits/char")
    lines.append(f"written: {objects['output_dir'] / 'result.json'}")
    return "\n".join(lines)
