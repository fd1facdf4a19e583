"""One training harness for every SRM: Adam, per-epoch validation, early stopping, the best
epoch kept.

    result = train_srm(model, train_sequences, valid, TrainConfig(epochs=10, seed=0))

The pairs are every (history → next item) of the training sequences. By default they are
trained sequence-level: windows of `max_len` clicks (`shared.batching.WindowBatcher`), one
forward pass giving the logits after every position (`level="sequence"`); `level="prefix"`
encodes one history per example instead (the original path, BCE only). Losses
(`seqrec.losses`): `bce` with `num_negatives` items the user never clicked per pair (1:4 as
both papers train), `sampled-softmax`, `ce`.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from seqrec import distributed
from seqrec.evaluation import evaluate_full, evaluate_in_lists, evaluate_sampled
from seqrec.losses import LOSSES, batch_loss
from seqrec.models.base import SequentialRecommender
from shared.batching import NextItemBatcher, WindowBatcher, fixed_eval_negatives, pad_histories
from shared.progress import progress_bar

PROTOCOLS = ("full", "sampled", "list")
LEVELS = ("sequence", "prefix")
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
DEFAULT_KS = (5, 10)


def metric_cutoff(name: str) -> int:
    """K of a metric name like "NDCG@10" or "HR@50" (ValueError when it has none)."""
    head, _, k = name.partition("@")
    if head not in ("HR", "NDCG", "MRR") or not k.isdigit() or int(k) < 1:
        raise ValueError(f"select_metric must look like NDCG@10, HR@50 or MRR@10, got {name!r}")
    return int(k)


@dataclass
class TrainConfig:
    epochs: int = 10  # most passes over the training pairs (both papers: 10)
    batch_size: int = 256  # examples per Adam step (level "prefix")
    level: str = "sequence"  # "sequence": whole windows in one pass; "prefix": one per example
    loss: str = "bce"  # "bce" (1:num_negatives), "sampled-softmax" or "ce" (full softmax)
    windows_per_batch: int = 32  # windows per Adam step (level "sequence")
    stride: int = 0  # clicks between window starts (0 = max_len // 2; see WindowBatcher)
    shared_negatives: bool = False  # sampled-softmax: one negative set per batch, not per row
    sampler: str = "uniform"  # negatives "uniform" or by "popularity" (log-Q corrected)
    lr: float = 1e-3  # Adam learning rate (both papers: 1e-3)
    weight_decay: float = 0.0  # L2 on all weights (decoupled with adamw); off as in the papers
    optimizer: str = "adam"  # "adam" (the papers) or "adamw" (decoupled weight decay)
    num_negatives: int = 4  # sampled negatives per positive (1:4)
    max_len: int = 50  # history length fed to the model
    prefixes_per_user: int = 0  # >0: at most this many (prefix -> next) examples per user per epoch
    seed: int = 0  # fixes initialisation, example order and negatives
    select_metric: str = "NDCG@10"  # validation metric that picks the best epoch
    select_protocol: str = "full"  # "full" ranking, "sampled" 1:99, or inside LLM "list"s
    patience: int = 0  # stop after this many epochs without improvement (0 = never)
    grad_clip: float = 5.0  # max gradient norm; keeps the TTT inner loop stable early on
    progress: bool = True  # show tqdm bars
    device: str = "cpu"  # where the model trains: "cpu", "cuda", "cuda:1" (`resolve_device`)

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.num_negatives < 1:
            raise ValueError(f"num_negatives must be >= 1, got {self.num_negatives}")
        if self.level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, got {self.level!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.level == "prefix" and self.loss != "bce":
            raise ValueError(f'level "prefix" trains with loss bce only, got {self.loss!r}')
        if self.prefixes_per_user and self.level != "prefix":
            raise ValueError('prefixes_per_user applies to level "prefix" only')
        if self.windows_per_batch < 1:
            raise ValueError(f"windows_per_batch must be >= 1, got {self.windows_per_batch}")
        if not 0 <= self.stride <= self.max_len:
            raise ValueError(f"stride must be in 0..max_len={self.max_len}, got {self.stride}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        metric_cutoff(self.select_metric)  # raises on a malformed name
        if self.select_protocol not in PROTOCOLS:
            raise ValueError(
                f"select_protocol must be one of {PROTOCOLS}, got {self.select_protocol!r}"
            )


@dataclass(frozen=True)
class ValidationSet:
    """(history → next item) pairs for model selection; negatives for the sampled protocol."""

    histories: np.ndarray  # [U, L] right-padded
    targets: np.ndarray  # [U]
    negatives: np.ndarray | None = None  # [U, 99] fixed negatives, for select_protocol="sampled"
    exclude: list[np.ndarray] | None = None  # per row, items masked in full ranking (whole history)
    lists: np.ndarray | None = None  # [U, N] the LLM's candidate lists, for protocol "list"

    @classmethod
    def build(
        cls,
        histories: Sequence[np.ndarray],
        targets: np.ndarray,
        num_items: int,
        max_len: int = 50,
        exclude: Sequence[np.ndarray] | None = None,
        seed: int = 0,
        sampled: int = 99,
    ) -> ValidationSet:
        """Pad the histories and draw fixed 1:`sampled` negatives outside `exclude` (default:
        history + target); `sampled = 0` leaves the sampled protocol out."""
        exclude = exclude or [np.append(h, t) for h, t in zip(histories, targets)]
        negatives = None
        if sampled:
            negatives = fixed_eval_negatives(exclude, num_items, count=sampled, seed=seed)
        full_histories = [np.asarray(h, dtype=np.int64) for h in histories]
        return cls(
            pad_histories(histories, max_len), np.asarray(targets), negatives, full_histories
        )

    def with_lists(self, lists: np.ndarray) -> ValidationSet:
        """The same pairs with the LLM's candidate list of each row (for protocol "list")."""
        return dataclasses.replace(self, lists=np.asarray(lists, dtype=np.int64))

    def evaluate(
        self, model: SequentialRecommender, protocol: str, ks: Sequence[int] = DEFAULT_KS
    ) -> dict[str, float]:
        """HR, NDCG and MRR at each of `ks` in one protocol ("full", "sampled" or "list")."""
        if protocol == "list":
            if self.lists is None:
                raise ValueError('protocol "list" needs candidate lists (ValidationSet.with_lists)')
            return evaluate_in_lists(model, self.histories, self.targets, self.lists, ks)
        if protocol == "sampled":
            if self.negatives is None:
                raise ValueError('protocol "sampled" needs negatives (ValidationSet.build)')
            return evaluate_sampled(model, self.histories, self.targets, self.negatives, ks)
        return evaluate_full(model, self.histories, self.targets, ks, exclude=self.exclude)


@dataclass
class TrainResult:
    best_epoch: int
    best_metric: float
    epochs: list[dict] = field(default_factory=list)  # per epoch: loss, metrics, seconds
    config: dict = field(default_factory=dict)


def train_srm(
    model: SequentialRecommender,
    train_sequences: Sequence[np.ndarray],
    valid: ValidationSet,
    config: TrainConfig,
    on_epoch: Callable[[int, dict], None] | None = None,
    batcher: Iterable | None = None,
) -> TrainResult:
    """Train `model` in place; on return it holds the weights of the best validation epoch.

    Args:
        model: an SRM built for the data set's catalogue.
        train_sequences: per-user training sequences (item ids 1..num_items).
        valid: the validation pairs that select the best epoch.
        config: optimisation settings.
        on_epoch: called after each epoch with (epoch, record).
        batcher: batches to train on instead of the default (prefix → next item, 1:K sampled
            negatives), e.g. `seqrec.collaborative.CandidateBatcher` for cooperative training.
    Returns:
        The best epoch, its metric and a per-epoch log.
    """
    torch.manual_seed(config.seed)
    model.to(config.device)
    batcher = batcher or make_batcher(model, train_sequences, config)
    optimizer = OPTIMIZERS[config.optimizer](
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    ks = tuple(sorted({*DEFAULT_KS, metric_cutoff(config.select_metric)}))
    result = TrainResult(best_epoch=-1, best_metric=-1.0, config=asdict(config))
    best_state, stale = None, 0
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        loss = _train_one_epoch(model, batcher, optimizer, config, epoch)
        metrics = valid.evaluate(model, config.select_protocol, ks)
        record = {"epoch": epoch, "loss": loss, "seconds": time.perf_counter() - start, **metrics}
        result.epochs.append(record)
        if on_epoch is not None:
            on_epoch(epoch, record)
        if metrics[config.select_metric] > result.best_metric:
            result.best_epoch, result.best_metric = epoch, metrics[config.select_metric]
            best_state, stale = copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
            if config.patience and stale >= config.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.to("cpu")  # what is saved, served and exported lives on the CPU
    return result


def resolve_device(name: str = "auto") -> str:
    """`auto` → "cuda" when a GPU is visible, else "cpu"; under torchrun each process takes
    the GPU of its `LOCAL_RANK`. Raises ValueError when CUDA is asked for and absent."""
    import os

    if name not in ("auto", "cpu") and not name.startswith("cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda[:N], got {name!r}")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return "cpu"
    if not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is visible to torch")
    if name in ("auto", "cuda") and "LOCAL_RANK" in os.environ:
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return name


def trains_sequence_level(model: SequentialRecommender) -> bool:
    """True when the model gives logits after every position of a window in one pass."""
    base = SequentialRecommender
    cls = type(model)
    return cls.encode_positions is not base.encode_positions or (
        cls.score_positions is not base.score_positions
    )


def make_batcher(
    model: SequentialRecommender, train_sequences: Sequence[np.ndarray], config: TrainConfig
):
    """The default batches: windows (level "sequence") or one example per prefix."""
    if config.level == "prefix":
        return NextItemBatcher(
            train_sequences,
            model.config.num_items,
            max_len=config.max_len,
            num_negatives=config.num_negatives,
            batch_size=config.batch_size,
            seed=config.seed,
            prefixes_per_user=config.prefixes_per_user or None,
        )
    if not trains_sequence_level(model):
        raise ValueError(f'{model.name} has no per-position scores; use level "prefix"')
    return WindowBatcher(
        train_sequences,
        model.config.num_items,
        max_len=config.max_len,
        stride=config.stride,
        num_negatives=0 if config.loss == "ce" else config.num_negatives,
        batch_size=config.windows_per_batch,
        seed=config.seed,
        shared_negatives=config.shared_negatives,
        sampler=config.sampler,
    )


def _train_one_epoch(model, batcher, optimizer, config: TrainConfig, epoch: int) -> float:
    """One pass over `batcher`; the mean loss per (history → next) pair."""
    model.train()
    total, count = 0.0, 0
    bar = progress_bar(
        batcher, desc=f"epoch {epoch}/{config.epochs}", enabled=config.progress, leave=False
    )
    for batch in bar:
        batch = distributed.shard_rows(batch)  # this process's rows (all of them when alone)
        loss, pairs = None, 0
        if len(batch.users):  # a process may get no rows of a small last batch
            own = batcher.own_item_mask(batch.users) if config.loss == "ce" else None
            loss, pairs = batch_loss(model, batch, config.loss, own)
        share = distributed.global_share(pairs)
        optimizer.zero_grad(set_to_none=True)
        if pairs:
            # weighted by this process's share of the batch's pairs: the summed gradient is
            # then the whole batch's (`seqrec.distributed`)
            (loss * share).backward()
        distributed.all_reduce_gradients(model)
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        total += loss.item() * pairs if pairs else 0.0
        count += pairs
        bar.set_postfix(loss=f"{total / max(count, 1):.4f}")
    total, count = distributed.all_reduce_sum(total, count)
    return total / max(count, 1)
