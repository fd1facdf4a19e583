"""Typed configs of the cloud candidate generator (no heavy imports here).

`GeneratorConfig` says how the generator is built and how it decodes; it is saved beside
the weights, so a model folder rebuilds itself. `TrainConfig` holds the training knobs
(used by `cloud.training`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

BACKBONES = ("t5", "llama", "qwen2")
DECODER_ONLY = ("llama", "qwen2")
INDEXINGS = ("sequential", "atomic")
SEARCHES = ("trie", "hf")

# P5-style prompt templates; "{history}" is replaced by the item identifiers. Training picks
# one at random per example (robustness to wording), inference always uses the first.
DEFAULT_TEMPLATES = (
    "user history : {history} ; next item :",
    "the user interacted with {history} . what comes next ?",
    "given the items {history} , predict the next one :",
    "items so far : {history} . recommend one more :",
    "sequence {history} next",
)


@dataclass
class BackboneConfig:
    """Architecture of a model trained from scratch (ignored when a base model is loaded)."""

    kind: str = "t5"  # "t5" = encoder-decoder (P5/OpenP5 style); "llama"/"qwen2" = decoder-only
    d_model: int = 128  # hidden width; small enough for p50 <= 30 ms per request on one CPU core
    num_layers: int = 2  # encoder layers (t5) or transformer layers (decoder-only)
    num_decoder_layers: int = 1  # t5 decoder layers: atomic ids decode in one step, so 1 suffices
    num_heads: int = 4  # attention heads; d_model must be divisible by it
    d_ff: int = 256  # feed-forward width (2 x d_model: training cost is what binds on CPU)
    dropout: float = 0.0  # dropout in training; a few epochs underfit ml-100k, 0.1 was worse
    max_positions: int = 512  # decoder-only position limit (prompt + identifier tokens)

    def __post_init__(self) -> None:
        if self.kind not in BACKBONES:
            raise ValueError(f"backbone kind must be one of {BACKBONES}, got {self.kind!r}")
        for name in ("d_model", "num_layers", "num_decoder_layers", "num_heads", "d_ff"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.num_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.max_positions < 16:
            raise ValueError(f"max_positions must be >= 16, got {self.max_positions}")

    @property
    def is_encoder_decoder(self) -> bool:
        return self.kind not in DECODER_ONLY


@dataclass
class LoraOptions:
    """How a pretrained base model is fine-tuned: LoRA adapters, or fully when rank is 0."""

    rank: int = 8  # LoRA rank r; 0 = full fine-tuning of every weight
    alpha: int = 16  # LoRA scaling numerator (scale = alpha / rank)
    dropout: float = 0.05  # dropout on the LoRA input during training
    target_modules: tuple[str, ...] = ()  # module names to adapt; () = the attention projections

    def __post_init__(self) -> None:
        self.target_modules = tuple(self.target_modules)
        if self.rank < 0:
            raise ValueError(f"lora rank must be >= 0, got {self.rank}")
        if self.alpha < 1:
            raise ValueError(f"lora alpha must be >= 1, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora dropout must be in [0, 1), got {self.dropout}")


@dataclass
class GeneratorConfig:
    """Everything a saved generator needs to rebuild itself and decode."""

    backbone: BackboneConfig = field(
        default_factory=BackboneConfig
    )  # used when training from scratch
    indexing: str = "atomic"  # item identifiers: "atomic" (1 token) or "sequential" (digit tokens)
    max_history: int = 20  # prompt holds the last L items: longer prompts cost latency
    num_beams: int = 50  # beam width; raised to n when a request asks for more candidates
    search: str = "trie"  # "trie" = our batched trie beam search; "hf" = model.generate (slower)
    templates: tuple[str, ...] = DEFAULT_TEMPLATES  # prompt wordings; index 0 is used at inference
    base_model: str = ""  # name of the pretrained base ("" = trained from scratch); never a path
    lora: LoraOptions | None = None  # set when a base model is fine-tuned

    def __post_init__(self) -> None:
        if isinstance(self.backbone, dict):
            self.backbone = BackboneConfig(**self.backbone)
        if isinstance(self.lora, dict):
            self.lora = LoraOptions(**self.lora)
        self.templates = tuple(self.templates)
        if self.indexing not in INDEXINGS:
            raise ValueError(f"indexing must be one of {INDEXINGS}, got {self.indexing!r}")
        if self.max_history < 1:
            raise ValueError(f"max_history must be >= 1, got {self.max_history}")
        if self.num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {self.num_beams}")
        if self.search not in SEARCHES:
            raise ValueError(f"search must be one of {SEARCHES}, got {self.search!r}")
        if not self.templates:
            raise ValueError("templates must not be empty")
        for template in self.templates:
            if template.count("{history}") != 1:
                raise ValueError(f"template must contain '{{history}}' once: {template!r}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["templates"] = list(self.templates)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GeneratorConfig:
        """Rebuild from `to_dict` output; unknown keys raise ValueError (a newer format)."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown generator config keys: {sorted(unknown)}")
        return cls(**data)


@dataclass
class TrainConfig:
    """Optimisation and validation knobs."""

    epochs: int = 6  # passes over the sampled examples (ml-100k: about 5 minutes on CPU)
    batch_size: int = 128  # examples per step
    lr: float = 3e-3  # peak AdamW learning rate (from scratch; LoRA/full tuning may want less)
    weight_decay: float = 0.01  # AdamW decoupled weight decay
    warmup_ratio: float = 0.05  # share of steps with a linear warm-up
    samples_per_epoch: int = 30000  # examples drawn per epoch; 0 = every prefix of every sequence
    grad_clip: float = 1.0  # max gradient norm
    eval_n: int = 50  # candidates per validation request (Recall@eval_n picks the best epoch)
    eval_batch_size: int = 64  # validation requests decoded together
    max_eval_users: int = 0  # validate on at most this many users; 0 = every stream user
    seed: int = 0  # fixes sampling, templates, dropout and initialisation order
    progress: bool = True  # show a tqdm progress bar

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_n", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.samples_per_epoch < 0 or self.max_eval_users < 0:
            raise ValueError("samples_per_epoch and max_eval_users must be >= 0")
        if self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be > 0, got {self.grad_clip}")
