"""The cloud candidate generator: history in, N valid, distinct, unseen items out.

    gen = CandidateGenerator.create(GeneratorConfig(), split.train, dataset.num_items)
    train_generator(gen, split, TrainConfig())          # cloud.training
    lists = gen.generate([[12, 45, 78]], n=50)          # list[CandidateList]
    gen.save_pretrained("runs/llm"); CandidateGenerator.from_pretrained("runs/llm")

It holds no per-user state: every request carries its history. A gRPC servicer wraps it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from cloud import backbone as bb
from cloud.base import GeneratorBase, read_meta, weights_version
from cloud.config import BACKBONES, GeneratorConfig, LoraOptions
from cloud.indexing import ItemIndex, build_item_index
from cloud.search import (
    DecoderOnlyStepper,
    EncoderDecoderStepper,
    SearchResult,
    hf_beam_search,
    trie_beam_search,
)
from cloud.tokenizer import add_item_tokens, build_tokenizer
from cloud.trie import ItemTrie, build_trie, needs_end_token
from shared.candidates import CandidateList


class CandidateGenerator(GeneratorBase):
    """A transformers model, its tokenizer, the item identifiers and the item trie.

    Attributes:
        model: the transformers (or peft) model.
        tokenizer: its tokenizer.
        index: item identifiers.
        config: how it was built and how it decodes.
        dataset_name: data set it was trained on ("" if unknown).
        item_titles: index i = title of item i, or None.
    """

    def __init__(
        self,
        model,
        tokenizer,
        index: ItemIndex,
        config: GeneratorConfig,
        dataset_name: str = "",
        item_titles: Sequence[str] | None = None,
        model_version: str = "",
    ) -> None:
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token  # decoder-only tokenizers often lack one
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no end-of-sequence token")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.index = index
        self.config = config
        self.dataset_name = dataset_name
        self.item_titles = list(item_titles) if item_titles is not None else None
        self.item_tokens = identifier_token_ids(tokenizer, index)
        self.trie: ItemTrie = build_trie(self.item_tokens)
        self._model_version = model_version or self.refresh_model_version()

    # ----------------------------------------------------------------- construction

    @classmethod
    def create(
        cls,
        config: GeneratorConfig,
        train_sequences: Sequence[np.ndarray],
        num_items: int,
        base_model_path: str | Path | None = None,
        dataset_name: str = "",
        item_titles: Sequence[str] | None = None,
        seed: int = 0,
    ) -> CandidateGenerator:
        """A new, untrained generator: from scratch, or on a local pretrained base model.

        Args:
            config: generator config (`config.lora` decides LoRA vs full fine-tuning of a base).
            train_sequences: training sequences (sequential ids are numbered from them).
            num_items: catalogue size.
            base_model_path: local folder with a pretrained model and its tokenizer, or None.
            dataset_name, item_titles: stored with the model for display.
            seed: seeds the random initialisation.
        Raises:
            FileNotFoundError: the base model folder is incomplete.
        """
        torch.manual_seed(seed)
        index = build_item_index(config.indexing, train_sequences, num_items)
        if base_model_path is None:
            tokenizer = build_tokenizer(index, config.templates)
            model = bb.build_model(
                config.backbone, len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id
            )
        else:
            model, tokenizer, config = _prepare_base(config, index, base_model_path)
        return cls(model, tokenizer, index, config, dataset_name, item_titles)

    # ----------------------------------------------------------------- properties

    @property
    def num_items(self) -> int:
        return self.index.num_items

    @property
    def is_encoder_decoder(self) -> bool:
        return bool(bb.inference_model(self.model).config.is_encoder_decoder)

    def refresh_model_version(self) -> str:
        family = bb.inference_model(self.model).config.model_type
        prefix = f"{family}-{self.index.scheme}"
        self._model_version = weights_version(self.model.state_dict(), prefix)
        return self._model_version

    def identifier(self, item: int) -> str:
        return self.index.identifiers[item]

    # ----------------------------------------------------------------- prompts

    def prompt_ids(
        self, histories: Sequence[np.ndarray], templates: Sequence[int] | None = None
    ) -> list[list[int]]:
        """Token ids of each history's prompt (its last `max_history` items).

        Args:
            histories: item-id arrays.
            templates: template index per history; None = template 0 (inference).
        """
        limit = self.config.max_history
        chosen = templates if templates is not None else [0] * len(histories)
        texts = [
            self.config.templates[t].format(history=self.index.render(h[-limit:]))
            for h, t in zip(histories, chosen)
        ]
        return self.tokenizer(texts, add_special_tokens=True)["input_ids"]

    # ----------------------------------------------------------------- generation

    @torch.inference_mode()
    def _generate_batch(
        self, histories: list[np.ndarray], n: int, masked: list[np.ndarray]
    ) -> list[CandidateList]:
        self.model.eval()
        # The prompt shows the history; the trie masks the history and the exclusion.
        result = self._search(self.prompt_ids(histories), self.trie.allowed_counts(masked), n)
        version = self.model_version
        return [
            CandidateList(items=result.items[row], scores=result.scores[row], model_version=version)
            for row in range(len(histories))
        ]

    def _search(self, prompts: list[list[int]], counts: np.ndarray, n: int) -> SearchResult:
        model = bb.inference_model(self.model)
        pad = self.tokenizer.pad_token_id
        # Encoder inputs are right-padded; decoder-only prompts left-padded so they end together.
        ids, mask = pad_ids(prompts, pad, left=not self.is_encoder_decoder)
        if self.config.search == "hf":
            eos = self.tokenizer.eos_token_id
            return hf_beam_search(
                model, ids, mask, self.trie, counts, n, self.config.num_beams, eos
            )
        if self.is_encoder_decoder:
            stepper = EncoderDecoderStepper(model, ids, mask)
        else:
            stepper = DecoderOnlyStepper(model, ids, mask)
        return trie_beam_search(stepper, self.trie, counts, n, self.config.num_beams)

    @torch.inference_mode()
    def log_probs(self, history: Sequence[int], items: Sequence[int]) -> np.ndarray:
        """Sequence log-probability of each of `items` as the next item after `history`.

        Teacher-forced and unconstrained: the same number `generate` reports as a score.

        Args:
            history: the user's item ids, oldest first.
            items: item ids to score.
        Returns:
            `[len(items)]` float32 log-probabilities.
        Raises:
            ValueError: an empty history or an unknown item id.
        """
        hist = self._item_ids(history, "history")
        if len(items) == 0:
            return np.zeros(0, dtype=np.float32)
        targets = self._item_ids(items, "items")
        self.model.eval()
        batch = make_batch(self, [hist] * len(targets), targets)
        logits = self.model(**batch).logits.float()
        labels = batch["labels"]
        if not self.is_encoder_decoder:
            logits, labels = logits[:, :-1], labels[:, 1:]  # position p predicts token p + 1
        token_lp = torch.log_softmax(logits, dim=-1)  # [B, T, V]
        picked = token_lp.gather(-1, labels.clamp(min=0)[..., None])[..., 0]  # [B, T]
        return (picked * (labels >= 0)).sum(dim=1).numpy().astype(np.float32)

    # ----------------------------------------------------------------- persistence

    def save_pretrained(self, folder: str | Path) -> None:
        """Write model, tokenizer, item index, titles and config into one folder (no pickle)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        bb.save_model(self.model, folder)
        self.tokenizer.save_pretrained(folder / "tokenizer")
        self.index.save(folder)
        self._write_meta(folder, "prompt", self.config.to_dict())

    @classmethod
    def from_pretrained(cls, folder: str | Path, verify: bool = True) -> CandidateGenerator:
        """Load a folder written by `save_pretrained`, strictly.

        Args:
            verify: check the folder against its manifest first (False: the caller did).
        Raises:
            FileNotFoundError: the folder or one of its parts is missing.
            ValueError: a file differs from the manifest or cannot be read, the weights do
                not fit the config, or the folder was written by a newer, unknown format.
        """
        from transformers import AutoTokenizer

        folder = Path(folder)
        meta, titles = read_meta(folder, verify)
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
        except (OSError, ValueError) as err:
            raise ValueError(f"{folder / 'tokenizer'}: unreadable tokenizer ({err})") from None
        return cls(
            bb.load_model(folder),
            tokenizer,
            ItemIndex.load(folder),
            GeneratorConfig.from_dict(meta["config"]),
            dataset_name=meta.get("dataset", ""),
            item_titles=titles,
            model_version=meta["model_version"],
        )


IGNORE = -100  # label value the loss skips (prompt and padding positions)


def make_batch(
    generator: CandidateGenerator,
    histories: Sequence[np.ndarray],
    targets: Sequence[int],
    templates: Sequence[int] | None = None,
) -> dict[str, torch.Tensor]:
    """Model inputs whose loss is the cross-entropy of each target's identifier tokens."""
    prompts = generator.prompt_ids(histories, templates)
    answers = [generator.item_tokens[int(t) - 1] for t in targets]
    pad = generator.tokenizer.pad_token_id
    if generator.is_encoder_decoder:
        ids, mask = pad_ids(prompts, pad, left=False)  # [B, S]
        labels, label_mask = pad_ids(answers, pad, left=False)  # [B, T]
        labels = labels.masked_fill(label_mask == 0, IGNORE)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
    # Decoder-only: prompt + answer in one right-padded row; only answer tokens are labelled.
    ids, mask = pad_ids([p + a for p, a in zip(prompts, answers)], pad, left=False)
    labels = ids.masked_fill(mask == 0, IGNORE)
    for row, prompt in enumerate(prompts):
        labels[row, : len(prompt)] = IGNORE
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def identifier_token_ids(tokenizer, index: ItemIndex) -> list[list[int]]:
    """Token ids of every item's identifier (items 1..N), EOS-terminated when needed."""
    seqs = tokenizer(list(index.identifiers[1:]), add_special_tokens=False)["input_ids"]
    if needs_end_token(seqs):
        seqs = [list(s) + [tokenizer.eos_token_id] for s in seqs]
    return [list(s) for s in seqs]


def pad_ids(
    rows: Sequence[Sequence[int]], pad_id: int, left: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """`[B, S]` ids and attention mask; left padding for decoder-only prompts."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span] = torch.as_tensor(row, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


def _prepare_base(config: GeneratorConfig, index: ItemIndex, path: str | Path):
    """Load a base model, add item tokens, resize, and wrap with LoRA when configured."""
    model, tokenizer = bb.load_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # before counting the vocabulary
    new_ids = add_item_tokens(tokenizer, index)
    if new_ids:
        model.resize_token_embeddings(len(tokenizer))
    lora = config.lora if config.lora is not None else LoraOptions()
    family = model.config.model_type
    backbone = config.backbone
    if family in BACKBONES:  # record what was loaded; other families keep the given kind
        backbone = replace(backbone, kind=family)
    if lora.rank > 0:
        model = bb.apply_lora(model, lora, new_ids)
    # Only the folder's name is recorded: a model folder must not leak local paths.
    return (
        model,
        tokenizer,
        replace(config, base_model=Path(path).name, lora=lora, backbone=backbone),
    )
