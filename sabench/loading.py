"""Which weights a suite's points run with, and the perplexity column beside the timings.

Suite keys (parsed here; suite.py only calls `parse_suite_keys`):

    weights: random           # random | checkpoint. Default: random, also for a model directory.
    quality:                  # optional, needs `weights: checkpoint`: perplexity per variant
      text: wiki.test.txt     # UTF-8 text, encoded with the model directory's tokenizer; or
      token_ids: ids.txt      #   whitespace-separated token ids (exactly one of the two)
      seq_len: 512            # window length (default min(2048, the model's positions))
      windows: 8              # at most this many windows (default 8: a few forwards per variant)
      stride: null            # null: non-overlapping windows; N: lm-eval-harness rolling windows

Why random is the default for a model directory too: latency, memory and FLOPs do not depend
on weight values, and each point runs in its own process, so `checkpoint` reads the checkpoint
once per point (an 8B bfloat16 checkpoint is 16 GB). `checkpoint` is for runs that want speed and
quality on the same weights. Whatever runs, results.json (`suite.weights`, and `weights` in every
record) and the report say which weights were used.

In a point's process the model is loaded once, with the chosen weights, and serves the timings
and (for the first point of each variant that has none yet) the perplexity, scored after the
timed phases so it cannot disturb them.
"""
from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import Optional
from sabench.errors import UserError

WEIGHTS = ("random", "checkpoint")
QUALITY_KEYS = ("text", "token_ids", "seq_len", "windows", "stride")
DEFAULT_WINDOWS = 8


# ---------------------------------------------------------------- suite keys
def parse_suite_keys(data: dict, cfg, model: str, path: Optional[str], source: str) -> dict:
    """{"weights": ..., "quality": dict or None} from a suite mapping; SuiteError on a problem."""
    from sabench.presets import weight_files
    from sabench.suite_fields import SuiteError

    weights = data.get("weights", "random")
    if weights not in WEIGHTS:
        raise SuiteError(source, "weights", f"expected random or checkpoint, got {weights!r}")
    if weights == "checkpoint" and (cfg.source == "preset" or not weight_files(cfg.source)):
        where = f"preset {model!r} has no checkpoint" if cfg.source == "preset" else \
            f"{str(Path(cfg.source).parent)!r} holds no *.safetensors"
        raise SuiteError(source, "weights", f"checkpoint asked for, but {where}; use weights: random")
    quality = data.get("quality")
    if quality is None:
        return {"weights": weights, "quality": None}
    if weights != "checkpoint":
        raise SuiteError(source, "quality", "perplexity needs trained weights: set `weights: checkpoint` "
                                            "(random weights give a perplexity near the vocabulary size)")
    if not isinstance(quality, dict):
        raise SuiteError(source, "quality", f"expected a mapping with keys {', '.join(QUALITY_KEYS)}")
    unknown = [k for k in quality if k not in QUALITY_KEYS]
    if unknown:
        raise SuiteError(source, f"quality.{unknown[0]}", f"unknown key; allowed keys: {', '.join(QUALITY_KEYS)}")
    if ("text" in quality) == ("token_ids" in quality):
        raise SuiteError(source, "quality", "give exactly one of text and token_ids")
    kind = "text" if "text" in quality else "token_ids"
    file = _beside(quality[kind], path)
    if not file.is_file():
        raise SuiteError(source, f"quality.{kind}", f"{str(quality[kind])!r}: no such file")
    seq_len = quality.get("seq_len") or min(2048, cfg.max_position_embeddings)
    windows = quality.get("windows", DEFAULT_WINDOWS)
    stride = quality.get("stride")
    for key, value, hi in (("seq_len", seq_len, cfg.max_position_embeddings), ("windows", windows, None),
                           ("stride", stride, seq_len)):
        if key == "stride" and value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < (2 if key == "seq_len" else 1) \
                or (hi is not None and value > hi):
            raise SuiteError(source, f"quality.{key}", f"expected an integer in {2 if key == 'seq_len' else 1}.."
                                                       f"{hi if hi is not None else 'N'}, got {value!r}")
    q = {kind: str(file), "seq_len": seq_len, "windows": windows, "stride": stride}
    try:
        tokens(q, cfg)  # a bad file or a missing tokenizer costs a second, not a run
    except (ValueError, FileNotFoundError) as e:
        raise SuiteError(source, f"quality.{kind}", str(e)) from None
    return {"weights": weights, "quality": q}


def _beside(name, path: Optional[str]) -> Path:
    p = Path(str(name)).expanduser()
    if not p.is_absolute() and path is not None and (Path(path).parent / p).exists():
        return Path(path).parent / p
    return p


def tokens(q: dict, cfg) -> list:
    """The quality text's token ids (cached per file: the runner asks once per point)."""
    return list(_tokens(q.get("text"), q.get("token_ids"), cfg))


@lru_cache(maxsize=4)
def _tokens(text, token_ids, cfg) -> tuple:
    from sabench import quality

    if text is not None:
        return tuple(quality.tokenize_text(text, Path(cfg.source).parent, cfg.vocab_size).tolist())
    return tuple(quality.read_token_ids(token_ids, cfg.vocab_size).tolist())


# ---------------------------------------------------------------- sweep side
def point_extras(suite, variant: str, records) -> dict:
    """Spec keys for one point: the weights, and the quality windows when this variant has no
    perplexity yet in `records` (the first point of each variant scores it; a failed one passes
    the job to the next)."""
    extras = {"weights": suite.weights, "model_source": suite.model_config.source}
    if suite.quality and not any(r.variant == variant and "perplexity" in r.extra for r in records):
        extras["quality"] = dict(suite.quality, tokens=tokens(suite.quality, suite.model_config))
    return extras


# ---------------------------------------------------------------- point process side
def point_model(job, dtype, device):
    """The point's model (a harness PointJob's), built once in its process with the suite's weights."""
    from sabench.model import load_model

    if job.weights == "checkpoint":
        return load_model(job.model_source, job.plan, dtype, device, weights="auto")
    return load_model(job.cfg, job.plan, dtype, device, weights="random", seed=job.seed)


def add_quality(model, job, records: list) -> list:
    """`records` (PhaseRecords), each saying which weights ran; with job.quality, the variant's
    perplexity too (or `quality_error` when scoring failed: the timings stand)."""
    records = [r.with_extra(weights=job.weights or "random") for r in records]
    q = job.quality
    if not q or model is None:
        return records
    import torch

    from sabench import quality, windows

    try:
        model.set_execution("eager")
        w = windows.make(torch.tensor(q["tokens"], dtype=torch.long), q["seq_len"], q["windows"], q["stride"])
        ppl, _ = quality.score(model, w, progress=False)
        if not math.isfinite(ppl):
            raise UserError(f"perplexity is {ppl} (the logits are not finite)")
        info = {"perplexity": ppl, "perplexity_windows": w.count, "perplexity_seq_len": w.seq_len,
                "perplexity_predictions": w.predictions, "perplexity_convention": w.convention()}
    except Exception as e:  # out of memory, a broken checkpoint: the timings are still data
        info = {"quality_error": f"{type(e).__name__}: {e}".splitlines()[0][:300]}
    return [r.with_extra(**info) for r in records]
