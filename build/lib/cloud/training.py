"""Training of the candidate generators on the training part of a stream split.

The item LM (`train_item_lm`, the default generator) trains with the device's sequence-level
engine: every position of every window, full softmax, early stopping on validation Recall@50.

The prompt generator (`train_generator`): examples are every prefix of each training sequence
→ its next item (or a random subset per epoch, for speed), rendered with a random prompt
template. The loss is the token cross-entropy of the next item's identifier. After each epoch the generator makes candidate
lists for the validation targets (history = the training part) and the epoch with the best
Recall@N is kept.

Letters in shape comments: B batch, S prompt tokens, T identifier tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from cloud.config import TrainConfig
from cloud.generator import CandidateGenerator, make_batch
from cloud.item_lm import ItemSequenceGenerator
from seqrec.training import TrainConfig as SRMTrainConfig
from seqrec.training import TrainResult, ValidationSet, train_srm
from shared.metrics import candidate_list_ranks, hit_rate, ndcg
from shared.progress import progress_bar, progress_write
from shared.splits import StreamSplit

__all__ = [
    "TrainConfig",
    "TrainReport",
    "evaluate_candidates",
    "item_lm_train_config",
    "make_batch",
    "train_generator",
    "train_item_lm",
]


@dataclass
class TrainReport:
    """What training did: per-epoch mean loss and validation metrics, and the epoch kept."""

    losses: list[float] = field(default_factory=list)
    recalls: list[float] = field(default_factory=list)
    ndcgs: list[float] = field(default_factory=list)
    best_epoch: int = -1
    best_recall: float = -1.0


def prefix_examples(sequences: Sequence[np.ndarray]) -> np.ndarray:
    """`[E, 2]` (user, position) of every next-item example: history = seq[:position]."""
    pairs = [(u, t) for u, seq in enumerate(sequences) for t in range(1, len(seq))]
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


def validation_set(split: StreamSplit, max_users: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """Histories (training parts) and validation targets of the stream users."""
    users = split.stream_users[split.valid_target[split.stream_users] > 0]
    users = users[: max_users or None]
    return [split.train[u] for u in users], split.valid_target[users]


def evaluate_candidates(
    generator: CandidateGenerator,
    histories: Sequence[np.ndarray],
    targets: np.ndarray,
    n: int = 50,
    batch_size: int = 64,
) -> dict[str, float]:
    """Recall@n of the candidate lists and NDCG@10 of their ranking against `targets`."""
    lists = generator.generate(histories, n=n, batch_size=batch_size)
    ranks = candidate_list_ranks([c.items for c in lists], np.asarray(targets))
    return {
        f"Recall@{n}": float(hit_rate(ranks, n).mean()),
        "NDCG@10": float(ndcg(ranks, 10).mean()),
    }


def train_generator(
    generator: CandidateGenerator, split: StreamSplit, config: TrainConfig | None = None
) -> TrainReport:
    """Train in place on `split.train`, keep the epoch with the best validation Recall@N.

    Args:
        generator: the generator to train (its trainable parameters are updated).
        split: stream split; training parts train, validation targets select the epoch.
        config: optimisation knobs.
    Returns:
        a `TrainReport`; the generator ends with the best epoch's weights.
    Raises:
        ValueError: the split has no training example.
    """
    config = config or TrainConfig()
    examples = prefix_examples(split.train)
    if len(examples) == 0:
        raise ValueError("no training examples: every training sequence is shorter than 2")
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    valid = validation_set(split, config.max_eval_users)
    params = [p for p in generator.model.parameters() if p.requires_grad]
    per_epoch = min(config.samples_per_epoch or len(examples), len(examples))
    steps_per_epoch = math.ceil(per_epoch / config.batch_size)
    optimizer, scheduler = _optimizer(params, config, steps_per_epoch * config.epochs)
    report, best_state = TrainReport(), None
    for epoch in range(config.epochs):
        chosen = rng.permutation(len(examples))[:per_epoch]
        loss = _train_epoch(
            generator, split, examples[chosen], optimizer, scheduler, config, rng, epoch
        )
        report.losses.append(loss)
        if _validate(generator, valid, config, report, epoch):
            best_state = _snapshot(generator.model)
    _restore(generator.model, best_state)
    generator.model.eval()
    generator.refresh_model_version()
    return report


def _validate(generator, valid, config: TrainConfig, report: TrainReport, epoch: int) -> bool:
    """Score this epoch on the validation targets; True when it is the best so far.

    Without validation users every epoch counts as the best, so the last one is kept.
    """
    histories, targets = valid
    if len(targets) == 0:
        report.best_epoch = epoch
        return True
    metrics = evaluate_candidates(
        generator, histories, targets, config.eval_n, config.eval_batch_size
    )
    recall = metrics[f"Recall@{config.eval_n}"]
    report.recalls.append(recall)
    report.ndcgs.append(metrics["NDCG@10"])
    _log(
        config,
        f"epoch {epoch + 1}: loss {report.losses[-1]:.4f}  valid Recall@{config.eval_n} "
        f"{recall:.4f}  NDCG@10 {metrics['NDCG@10']:.4f}",
    )
    if recall <= report.best_recall:
        return False
    report.best_epoch, report.best_recall = epoch, recall
    return True


def _train_epoch(generator, split, examples, optimizer, scheduler, config, rng, epoch) -> float:
    """One pass over `examples` (`[E, 2]` user, position); returns the mean loss."""
    generator.model.train()
    num_templates = len(generator.config.templates)
    total, batches = 0.0, 0
    starts = range(0, len(examples), config.batch_size)
    bar = progress_bar(
        starts, desc=f"epoch {epoch + 1}/{config.epochs}", enabled=config.progress, leave=False
    )
    for start in bar:
        chunk = examples[start : start + config.batch_size]
        histories = [split.train[u][:t] for u, t in chunk]
        targets = [split.train[u][t] for u, t in chunk]
        templates = rng.integers(num_templates, size=len(chunk)).tolist()
        batch = make_batch(generator, histories, targets, templates)
        loss = generator.model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(optimizer.param_groups[0]["params"], config.grad_clip)
        optimizer.step()
        scheduler.step()
        total, batches = total + loss.detach().item(), batches + 1
        bar.set_postfix(loss=f"{total / batches:.4f}")
    return total / max(batches, 1)


def _optimizer(params, config: TrainConfig, total_steps: int):
    """AdamW with a linear warm-up and a linear decay to zero."""
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    warmup = max(1, int(config.warmup_ratio * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _snapshot(model) -> dict[str, torch.Tensor]:
    """Copies of the trainable parameters (frozen base weights never change)."""
    return {k: p.detach().clone() for k, p in model.named_parameters() if p.requires_grad}


def _restore(model, state: dict[str, torch.Tensor] | None) -> None:
    if state is None:
        return
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in state:
                param.copy_(state[name])


def _log(config: TrainConfig, message: str) -> None:
    progress_write(message, enabled=config.progress)


# ----------------------------------------------------------------- the item language model


def item_lm_train_config(**overrides) -> SRMTrainConfig:
    """The item LM's training defaults (tuned on ml-100k validation Recall@50, see README):
    full softmax over the catalogue, AdamW, the epoch with the best Recall@50 kept."""
    settings = {
        "loss": "ce",
        "optimizer": "adamw",
        "lr": 1e-3,
        "weight_decay": 0.1,
        "epochs": 200,
        "patience": 5,
        "windows_per_batch": 32,
        "select_metric": "HR@50",
    }
    settings.update(overrides)
    return SRMTrainConfig(**settings)


def train_item_lm(
    generator: ItemSequenceGenerator,
    split: StreamSplit,
    config: SRMTrainConfig | None = None,
    on_epoch=None,
) -> TrainResult:
    """Train the item LM in place with the sequence-level engine (`seqrec.training.train_srm`).

    Every position of every training window predicts the next click; the validation pairs are
    the stream users' training parts → validation targets, whole history excluded, as the
    generator serves them. The generator ends with the best epoch's weights.

    Raises:
        ValueError: the split has no training pair.
    """
    config = config or item_lm_train_config()
    config = replace(config, max_len=generator.config.max_len)
    histories, targets = validation_set(split)
    valid = ValidationSet.build(
        histories, targets, generator.num_items, config.max_len, exclude=histories, sampled=0
    )
    result = train_srm(generator.model, split.train, valid, config, on_epoch=on_epoch)
    generator.model.eval()
    generator.refresh_model_version()
    return result
