"""Model shapes: presets with real architectures' numbers, and Hugging Face configs.

A `ModelConfig` is everything the runtime and the closed forms need to know about
a Llama-family decoder. Sources: a preset name, a model directory holding
`config.json` (and maybe safetensors weights), or a path to a `config.json`.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional

from sabench import layouts
from sabench.errors import UserError
from sabench.plan import PlanError, parse_variant
from sabench.values import is_int, is_positive


class ModelSourceError(UserError):
    """A model source that cannot be resolved to a config."""


_MAX_DIM = 1 << 30  # no real model has a dimension (or 2**30 positions) this large: larger is a typo
_HF_NAME = {"num_layers": "num_hidden_layers", "num_heads": "num_attention_heads",
            "num_kv_heads": "num_key_value_heads"}
ROPE_SCALING_FIELDS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def _check_rope_scaling(rs, where: str) -> None:
    """Llama-3 rope scaling: a mapping with every field, each a finite number > 0."""
    if not isinstance(rs, dict):
        raise ModelSourceError(f"{where}: rope_scaling must be a mapping with {', '.join(ROPE_SCALING_FIELDS)}, "
                               f"got {type(rs).__name__} {rs!r}, fix the model's config")
    for k in ROPE_SCALING_FIELDS:
        v = rs.get(k)
        if not is_positive(v):
            raise ModelSourceError(f"{where}: rope_scaling.{k} must be a finite number > 0, got {v!r}, "
                                   "fix the model's config")
    if rs["high_freq_factor"] <= rs["low_freq_factor"]:
        raise ModelSourceError(f"{where}: rope_scaling.high_freq_factor ({rs['high_freq_factor']}) must exceed "
                               f"low_freq_factor ({rs['low_freq_factor']}), fix the model's config")


@dataclass(frozen=True)
class ModelConfig:
    name: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    rope_theta: float = 10000.0
    # Llama-3 style scaling: {"factor", "low_freq_factor", "high_freq_factor",
    # "original_max_position_embeddings"}; None for plain RoPE.
    rope_scaling: Optional[dict] = field(default=None, hash=False, compare=True)
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    qkv_bias: bool = False  # Qwen2: biases on q/k/v only
    o_bias: bool = False  # Llama attention_bias=True: biases on q/k/v and o
    mlp_bias: bool = False
    source: str = "preset"
    # The K/V-sharing layout the model was built with (what variant "native" means), as a canonical
    # variant string: from config.json fields (layouts.py) or a preset's own; "baseline" for none.
    native_variant: str = "baseline"
    # Why sabench cannot execute this model (an architecture only its attention shape is read from,
    # for `inspect`'s closed forms); None: it runs.
    cannot_run: Optional[str] = None

    def __post_init__(self):
        """The one place a model's shape is checked for consistency (presets, config.json, results)."""
        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                    "num_kv_heads", "head_dim", "max_position_embeddings"):
            v = getattr(self, key)
            if not is_int(v) or not 1 <= v <= _MAX_DIM:
                raise ModelSourceError(f"model {self.name!r}: {_HF_NAME.get(key, key)} must be an integer in "
                                       f"1..{_MAX_DIM}, got {v!r}, fix the model's config")
        if self.num_heads % self.num_kv_heads:
            raise ModelSourceError(
                f"model {self.name!r}: num_attention_heads ({self.num_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_kv_heads}), fix the model's config"
            )
        if self.head_dim % 2:
            raise ModelSourceError(f"model {self.name!r}: head_dim must be even for RoPE, got {self.head_dim}, "
                                   "fix the model's config")
        for key in ("rope_theta", "rms_norm_eps"):
            v = getattr(self, key)
            if not is_positive(v):
                raise ModelSourceError(f"model {self.name!r}: {key} must be a finite number > 0, got {v!r}, "
                                       "fix the model's config")
        if self.rope_scaling is not None:
            _check_rope_scaling(self.rope_scaling, f"model {self.name!r}")
        if self.native_variant != "baseline":
            self._check_native_variant()

    def _check_native_variant(self) -> None:
        try:
            native = parse_variant(self.native_variant, self.num_layers)
        except PlanError as e:
            raise ModelSourceError(f"model {self.name!r}: its native layout: {e}") from None
        if native.variant != self.native_variant:
            raise ModelSourceError(f"model {self.name!r}: native_variant {self.native_variant!r} is not canonical, "
                                   f"write {native.variant!r}")

    @property
    def attention_kind(self) -> str:
        if self.num_kv_heads == self.num_heads:
            return "MHA"
        if self.num_kv_heads == 1:
            return "MQA"
        return f"GQA{self.num_heads // self.num_kv_heads}"

    def to_dict(self) -> dict:
        d = asdict(self)
        # left out at their defaults, so a results.json written before these fields existed still
        # compares equal on --resume and merge
        if d["native_variant"] == "baseline":
            del d["native_variant"]
        if d["cannot_run"] is None:
            del d["cannot_run"]
        return d

    def to_hf_dict(self) -> dict:
        """A `config.json` for transformers' LlamaConfig (or Qwen2Config when qkv_bias)."""
        d = {
            "model_type": "qwen2" if self.qkv_bias and not self.o_bias else "llama",
            "architectures": ["Qwen2ForCausalLM" if self.qkv_bias and not self.o_bias else "LlamaForCausalLM"],
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.max_position_embeddings,
            "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
        }
        if self.rope_scaling:
            d["rope_scaling"] = dict(self.rope_scaling, rope_type="llama3")
        if d["model_type"] == "llama":
            d["attention_bias"] = self.o_bias
            d["mlp_bias"] = self.mlp_bias
        return d


def _gemma3n(name: str, mlp: int, layers: int, shared: int) -> ModelConfig:
    types = ["full_attention" if (i + 1) % 5 == 0 else "sliding_attention" for i in range(layers)]
    native = layouts.native_variant({"num_kv_shared_layers": shared, "layer_types": types}, layers, name)
    return ModelConfig(name, 262400, 2048, mlp, layers, 8, 2, 256, 32768, 1000000.0, rms_norm_eps=1e-6,
                       tie_word_embeddings=True, native_variant=native)


_LLAMA3_SCALING_8B = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192}
_LLAMA3_SCALING_SMALL = dict(_LLAMA3_SCALING_8B, factor=32.0)

PRESETS: dict[str, ModelConfig] = {
    c.name: c
    for c in [
        ModelConfig("llama-2-7b", 32000, 4096, 11008, 32, 32, 32, 128, 4096, 10000.0),
        ModelConfig("llama-3-8b", 128256, 4096, 14336, 32, 32, 8, 128, 8192, 500000.0),
        ModelConfig("llama-3.1-8b", 128256, 4096, 14336, 32, 32, 8, 128, 131072, 500000.0,
                    _LLAMA3_SCALING_8B),
        ModelConfig("llama-3.1-70b", 128256, 8192, 28672, 80, 64, 8, 128, 131072, 500000.0,
                    _LLAMA3_SCALING_8B),
        ModelConfig("llama-3.2-1b", 128256, 2048, 8192, 16, 32, 8, 64, 131072, 500000.0,
                    _LLAMA3_SCALING_SMALL, tie_word_embeddings=True),
        ModelConfig("llama-3.2-3b", 128256, 3072, 8192, 28, 24, 8, 128, 131072, 500000.0,
                    _LLAMA3_SCALING_SMALL, tie_word_embeddings=True),
        ModelConfig("mistral-7b", 32768, 4096, 14336, 32, 32, 8, 128, 32768, 1000000.0),
        ModelConfig("qwen2.5-7b", 152064, 3584, 18944, 28, 28, 4, 128, 32768, 1000000.0,
                    rms_norm_eps=1e-6, qkv_bias=True),
        # The CLA paper's 1B design space (Table 1): d_model 2048, 20 layers, 16 heads of 128.
        # Vocabulary and MLP width are not in that table: we take Llama-2's 32000 and 5632.
        ModelConfig("cla-1b-mha", 32000, 2048, 5632, 20, 16, 16, 128, 4096, 10000.0),
        ModelConfig("cla-1b-gqa4", 32000, 2048, 5632, 20, 16, 4, 128, 4096, 10000.0),
        ModelConfig("cla-1b-mqa", 32000, 2048, 5632, 20, 16, 1, 128, 4096, 10000.0),
        # The CLA paper's 3B scale; our reading of its shape: d_model 3072, 32 layers, 24 heads of 128.
        ModelConfig("cla-3b-mqa", 32000, 3072, 8192, 32, 24, 1, 128, 4096, 10000.0),
        # Gemma 3n's attention shapes with their KV-sharing tails, as Llama-shaped decoders (what the
        # closed forms and the runtime model). From the public text_config of google/gemma-3n-E4B and
        # -E2B (as reproduced in ai-edge-torch's gemma3n get_model_config_e4b/_e2b and in serving
        # engines' test fixtures): vocab 262400, hidden 2048, MLP 16384 (E4B) / 8192 (E2B), 35 / 30
        # layers, 8 heads and 2 KV heads of 256, 32768 positions, every 5th layer full attention (the
        # rest sliding, window 512), num_kv_shared_layers 15 / 10, rope_theta 1e6 (full layers).
        # `native` is the tail (layouts.py: each shared layer takes the last non-shared layer of its
        # attention type). Left out: per-layer embeddings (vocab_size_per_layer_input 262144 x
        # hidden_size_per_layer_input 256 x layers: 2.35 G more parameters for E4B), AltUp, LAuReL, activation sparsity, QK/V norms, GELU instead of
        # SiLU, the vision and audio towers, and sliding windows: every layer's cache is counted at
        # full length, so KV bytes are an upper bound (a sliding layer keeps 512 positions).
        _gemma3n("gemma-3n-e4b", 16384, 35, 15),
        _gemma3n("gemma-3n-e2b", 8192, 30, 10),
        # CPU work: small enough that a test suite and the smoke benchmark run in seconds.
        ModelConfig("tiny", 512, 64, 176, 4, 4, 2, 16, 4096, 10000.0),
    ]
}


RUNNABLE_MODEL_TYPES = ("llama", "mistral", "qwen2", "lckv-llama")  # lckv-llama: Llama with LCKV's layer_types


def _cfg_from_hf_dict(d: dict, name: str, source: str, closed_forms_only: bool = False) -> ModelConfig:
    """closed_forms_only: read the attention shape of an architecture sabench does not run (for
    `inspect`), marking the config `cannot_run`; otherwise such a config is refused."""
    mt = d.get("model_type")
    cannot_run = None
    if mt not in RUNNABLE_MODEL_TYPES:
        if not closed_forms_only:
            raise ModelSourceError(
                f"{source}: model_type {mt!r} is not a Llama-family decoder sabench runs "
                f"(supported: {', '.join(RUNNABLE_MODEL_TYPES)}); sabench inspect gives its closed forms"
            )
        cannot_run = (f"model_type {mt!r} is not a Llama-family decoder sabench runs; these are the closed "
                      f"forms of its attention shape, leaving out {layouts.left_out(mt)}")
        if isinstance(d.get("text_config"), dict):  # Gemma 3n / 4 nest their decoder
            d = d["text_config"]
    if isinstance(d.get("intermediate_size"), list):  # Gemma 3n writes one width per layer
        widths = set(d["intermediate_size"])
        if len(widths) != 1:
            raise ModelSourceError(f"{source}: intermediate_size differs between layers ({sorted(widths)}); "
                                   "sabench models one MLP width")
        d = dict(d, intermediate_size=widths.pop())

    def get_int(key, default=None):
        """A positive integer field of config.json (JSON 4.0 is accepted as 4, 4.5 or "4" are not)."""
        if key not in d or d[key] is None:
            if default is None and cannot_run:
                raise ModelSourceError(f"{source}: model_type {mt!r} is not a Llama-family decoder sabench runs, "
                                       f"and its config has no {key!r} to read an attention shape from")
            if default is None:
                raise ModelSourceError(f"{source}: config has no {key!r}, add it to the config")
            return default
        v = d[key]
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if not is_int(v) or not 1 <= v <= _MAX_DIM:
            raise ModelSourceError(f"{source}: {key} must be an integer in 1..{_MAX_DIM}, got {v!r}, "
                                   "fix the model's config")
        return v

    def get_number(value, key):
        if not is_positive(value):
            raise ModelSourceError(f"{source}: {key} must be a finite number > 0, got {value!r}, "
                                   "fix the model's config")
        return float(value)

    hidden = get_int("hidden_size")
    heads = get_int("num_attention_heads")
    if d.get("head_dim") is None:
        if hidden % heads:
            raise ModelSourceError(f"{source}: hidden_size ({hidden}) is not divisible by num_attention_heads "
                                   f"({heads}) and head_dim is not given, fix the model's config or give head_dim")
        head_dim = hidden // heads
    else:
        head_dim = get_int("head_dim")
    # the closed forms do not read RoPE: a foreign architecture's own scaling schemes are not checked
    rs = _hf_rope_scaling(d, source) if cannot_run is None else None
    rope_theta = d.get("rope_theta")
    if not isinstance(rope_theta, (int, float)):  # transformers 5 nests it under rope_parameters
        params = d.get("rope_parameters")
        rope_theta = params.get("rope_theta", 10000.0) if isinstance(params, dict) else 10000.0
    num_layers = get_int("num_hidden_layers")
    attention_bias = bool(d.get("attention_bias", False))
    return ModelConfig(
        name=name,
        vocab_size=get_int("vocab_size"),
        hidden_size=hidden,
        intermediate_size=get_int("intermediate_size"),
        num_layers=num_layers,
        num_heads=heads,
        num_kv_heads=get_int("num_key_value_heads", default=heads),  # absent (or null): MHA; 0 is refused
        head_dim=head_dim,
        max_position_embeddings=get_int("max_position_embeddings", default=2048),
        rope_theta=get_number(rope_theta, "rope_theta"),
        rope_scaling=rs,
        rms_norm_eps=get_number(d.get("rms_norm_eps", 1e-6), "rms_norm_eps"),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        qkv_bias=(mt == "qwen2") or attention_bias,
        o_bias=attention_bias and mt != "qwen2",
        mlp_bias=bool(d.get("mlp_bias", False)),
        source=source,
        native_variant=layouts.native_variant(d, num_layers, source),
        cannot_run=cannot_run,
    )


def _hf_rope_scaling(d: dict, source: str) -> Optional[dict]:
    """transformers 4 writes `rope_scaling` (+ top-level rope_theta); 5 writes `rope_parameters`."""
    key = "rope_scaling" if d.get("rope_scaling") is not None else "rope_parameters"
    rs = d.get(key)
    if rs is None:
        return None
    if not isinstance(rs, dict):
        raise ModelSourceError(f"{source}: {key} must be a mapping (e.g. {{\"rope_type\": \"llama3\", ...}}) "
                               f"or null, got {type(rs).__name__} {rs!r}, fix the model's config")
    rtype = rs.get("rope_type", rs.get("type"))
    if rtype in (None, "default"):
        return None
    if rtype != "llama3":
        raise ModelSourceError(f"{source}: {key} type {rtype!r} is not supported (llama3 is), "
                               "use a model with llama3 or default RoPE")
    missing = [k for k in ROPE_SCALING_FIELDS if k not in rs]
    if missing:
        raise ModelSourceError(f"{source}: {key} lacks {', '.join(missing)}, add them to the config")
    out = {k: rs[k] for k in ROPE_SCALING_FIELDS}
    _check_rope_scaling(out, source)
    return {k: float(out[k]) for k in ROPE_SCALING_FIELDS[:3]} | {
        "original_max_position_embeddings": int(out["original_max_position_embeddings"])}


def weight_files(source: str | os.PathLike) -> list[Path]:
    """Safetensors files of a model directory (empty when it holds only a config)."""
    p = Path(source)
    if p.is_file():
        p = p.parent
    return sorted(p.glob("*.safetensors")) if p.is_dir() else []


def resolve_config(source: str | os.PathLike | ModelConfig, closed_forms_only: bool = False) -> ModelConfig:
    """A preset name, a model directory, or a config.json path -> ModelConfig.

    closed_forms_only: also read an architecture sabench cannot run (`inspect`); see ModelConfig.cannot_run."""
    if isinstance(source, ModelConfig):
        return source
    s = str(source)
    if s.lower() in PRESETS:
        return PRESETS[s.lower()]
    p = Path(s).expanduser()
    if p.is_dir():
        cfg_path = p / "config.json"
        if not cfg_path.is_file():
            raise ModelSourceError(f"model directory {s!r} has no config.json")
    elif p.is_file():
        cfg_path = p
    else:
        raise ModelSourceError(
            f"unknown model {s!r}: not a preset ({', '.join(PRESETS)}) and no such file or directory"
        )
    try:
        d = json.loads(cfg_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelSourceError(f"cannot read {str(cfg_path)!r}: {e}") from None
    if not isinstance(d, dict):
        raise ModelSourceError(f"{str(cfg_path)!r} is not a JSON object")
    name = p.name if p.is_dir() else p.parent.name or "model"
    return _cfg_from_hf_dict(d, name=name, source=str(cfg_path), closed_forms_only=closed_forms_only)


def with_overrides(cfg: ModelConfig, **kw) -> ModelConfig:
    return replace(cfg, **kw)
