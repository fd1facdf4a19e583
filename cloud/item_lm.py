"""The default cloud generator: a decoder-only transformer over item tokens.

A `transformers` Qwen2 (or Llama) model trained from scratch as a causal language model whose
vocabulary is the catalogue itself (token k = item k, 0 = padding). It reads a user's history
and its next-token distribution is the next-item distribution, so the top-N among valid items
outside the history is exact from one forward pass — no beam search.

Item knowledge (optional): each item may carry attribute tokens from the data set (ml-100k:
genres, release year and decade, title words) and a text vector from a pretrained sentence
encoder (`cloud.item_text`: its title, year and genres, frozen). An item's vector is its id
embedding plus the mean of its attributes' embeddings plus its projected text vector, used
both as the model's input and as the output embedding it is scored with; rare items, whose id
embedding is barely trained, borrow from what they share with frequent ones. An item the
training part never shows keeps no id part at all (`mask_unseen_ids`): in the full softmax it
was only ever a negative, so its id embedding would only hold it down; its attributes and
text still place it.

Training reuses the device's sequence-level engine (`seqrec.training.train_srm`): the model
implements the SRM interface (`encode_positions`, `score_all`), so windows of histories train
every position at once with the full-softmax loss, and validation Recall@N picks the epoch.

    gen = ItemSequenceGenerator.create(ItemLMConfig(num_items=n), dataset_name="ml-100k")
    train_item_lm(gen, split)                      # cloud.item_lm_training
    lists = gen.generate([[12, 45, 78]], n=50)     # list[CandidateList]
    gen.save_pretrained("runs/llm"); ItemSequenceGenerator.from_pretrained("runs/llm")

Letters in shape comments: B requests, L history length, D hidden width, N num_items + 1,
A attribute entries of all items, T text-vector width.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from cloud import backbone as bb
from cloud.base import GENERATOR_FILE, GeneratorBase, read_json, read_meta, weights_version
from cloud.config import BackboneConfig
from seqrec.models.base import SequentialRecommender, SRMConfig, compact_history, gather_last
from shared.batching import pad_histories
from shared.candidates import CandidateList

ATTRIBUTES_FILE = "item_attributes.json"
ITEM_SIDE_FILE = "item_side.safetensors"
KINDS = ("qwen2", "llama")


@dataclass
class ItemLMConfig(SRMConfig):
    """Size of the decoder-only item model (chosen on validation Recall@50, see README)."""

    kind: str = "qwen2"  # transformers configuration family: "qwen2" or "llama"
    hidden_size: int = 64  # width D of the item embeddings and the transformer
    num_layers: int = 2  # decoder layers
    num_heads: int = 2  # attention heads (D must be divisible by it)
    d_ff: int = 256  # feed-forward width
    dropout: float = 0.5  # dropout on the input item vectors during training (grid: 0.5 > 0.2)
    attention_dropout: float = 0.5  # dropout on the attention weights during training
    max_len: int = 50  # history items read per request (the last L)
    num_attributes: int = 0  # size of the item-attribute vocabulary (0 = ids only)
    text_dim: int = 0  # width of the frozen item text vectors (0 = no text)
    mask_unseen_ids: bool = False  # zero the id part of items with no training click
    id_dropout: float = 0.0  # training: share of items whose id part is zeroed per step
    unknown_id: bool = False  # an item without an id part gets one learned "unknown" vector
    text_match: int = 0  # k: add a learned weight × cos(item text, mean text of the last k clicks)
    text_expert: bool = False  # mix the LM with a text expert (a softmax over that cosine)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        for name in ("num_layers", "num_heads", "d_ff"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_heads "
                f"({self.num_heads})"
            )
        if not 0.0 <= self.attention_dropout < 1.0:
            raise ValueError(f"attention_dropout must be in [0, 1), got {self.attention_dropout}")
        if self.num_attributes < 0:
            raise ValueError(f"num_attributes must be >= 0, got {self.num_attributes}")
        if not 0.0 <= self.id_dropout < 1.0:
            raise ValueError(f"id_dropout must be in [0, 1), got {self.id_dropout}")
        if self.text_dim < 0:
            raise ValueError(f"text_dim must be >= 0, got {self.text_dim}")
        if self.text_match < 0:
            raise ValueError(f"text_match must be >= 0, got {self.text_match}")


def build_decoder(config: ItemLMConfig):
    """A randomly initialised Qwen2/Llama causal LM whose vocabulary is the catalogue."""

    backbone = BackboneConfig(
        kind=config.kind,
        d_model=config.hidden_size,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        d_ff=config.d_ff,
        dropout=config.attention_dropout,
        max_positions=max(16, config.max_len),
    )
    return bb.build_decoder_only(backbone, config.num_items + 1, pad_id=0, eos_id=None)


class ItemLanguageModel(SequentialRecommender):
    """Item vectors → transformers decoder → hidden state · item vectors = next-item logits.

    Args:
        config: sizes.
        attributes: per item 0..num_items, its attribute indices (< `config.num_attributes`);
            needed when `num_attributes > 0`.
        decoder: an existing transformers causal LM (when loading); None builds a new one.
        text: `[N, T]` item text vectors (frozen); needed when `text_dim > 0`.
        known: `[N]` True for items with a training click; needed when `mask_unseen_ids`.
    """

    name = "item-lm"
    config_class = ItemLMConfig

    def __init__(
        self,
        config: ItemLMConfig,
        attributes: Sequence[Sequence[int]] | None = None,
        decoder=None,
        text: np.ndarray | torch.Tensor | None = None,
        known: np.ndarray | torch.Tensor | None = None,
    ) -> None:
        super().__init__(config)
        self.lm = decoder if decoder is not None else build_decoder(config)
        self.input_dropout = nn.Dropout(config.dropout)
        self.attributes = None
        if config.num_attributes:
            if attributes is None or len(attributes) != config.num_items + 1:
                raise ValueError("num_attributes > 0 needs the attributes of items 0..num_items")
            self.attributes = nn.EmbeddingBag(
                config.num_attributes, config.hidden_size, mode="mean"
            )
            nn.init.normal_(self.attributes.weight, std=0.02)
            flat = [int(a) for row in attributes for a in row]
            offsets = np.cumsum([0] + [len(row) for row in attributes[:-1]])
            self.register_buffer("attr_index", torch.tensor(flat, dtype=torch.long))  # [A]
            self.register_buffer("attr_offsets", torch.tensor(offsets, dtype=torch.long))  # [N]
        self.text_proj = None
        if config.text_dim:
            text = _item_rows(text, config, (config.text_dim,), "text", torch.float32)
            self.register_buffer("item_text", text)  # [N, T], frozen
            self.text_proj = nn.Linear(config.text_dim, config.hidden_size, bias=False)
            nn.init.normal_(self.text_proj.weight, std=0.02)
        if config.mask_unseen_ids:
            known = _item_rows(known, config, (), "known", torch.float32)
            self.register_buffer("id_known", known.unsqueeze(-1))  # [N, 1]: 1 seen, 0 never
        self.match_weight = None
        if config.text_match and not config.text_dim:
            raise ValueError("text_match needs item text (text_dim > 0)")
        if config.text_expert and not config.text_match:
            raise ValueError("text_expert needs text_match (the k clicks it reads)")
        self.expert_gate = self.expert_scale = None
        if config.text_expert:
            # p = (1 − g)·p_LM + g·softmax(s · cos): a content expert that can place an item
            # the id-driven LM scores low; g starts at 0.05 and s at 10, both learned
            self.expert_gate = nn.Parameter(torch.tensor(-3.0))
            self.expert_scale = nn.Parameter(torch.tensor(10.0))
        if config.text_match:
            # unit rows of the (centred) text vectors: a cosine is one product
            unit = nn.functional.normalize(self.item_text, dim=-1)
            self.register_buffer("unit_text", unit, persistent=False)  # [N, T], derived
            self.match_weight = nn.Parameter(torch.zeros(()))
        self.unknown_id = None
        if config.unknown_id:
            self.unknown_id = nn.Parameter(torch.zeros(config.hidden_size))
            nn.init.normal_(self.unknown_id, std=0.02)

    @property
    def item_embedding(self) -> nn.Embedding:
        return self.lm.get_input_embeddings()

    def all_item_features(self) -> torch.Tensor:
        """`[N, D]`: id part (its embedding; for an item never seen in training, when masked,
        zero or the learned unknown-item vector) plus the mean of the item's attribute
        embeddings plus its projected text vector."""
        ids = self.item_embedding.weight
        has_id = torch.ones(ids.shape[0], 1, dtype=ids.dtype, device=ids.device)
        if self.config.mask_unseen_ids:
            has_id = self.id_known
        if self.training and self.config.id_dropout:
            # DropoutNet (Volkovs et al., 2017): items trained now and then without their id
            # part, as a cold item is served, so the model learns to score from content
            # alone; no rescaling, so a dropped item looks exactly like a cold one.
            keep = torch.rand(ids.shape[0], 1, device=ids.device) >= self.config.id_dropout
            has_id = has_id * keep.to(ids.dtype)
        features = ids * has_id
        if self.unknown_id is not None:
            features = features + (1 - has_id) * self.unknown_id
        if self.attributes is not None:
            features = features + self.attributes(self.attr_index, self.attr_offsets)
        if self.text_proj is not None:
            features = features + self.text_proj(self.item_text)
        return features

    def item_features(self, items: torch.Tensor) -> torch.Tensor:
        return self.all_item_features()[items]

    def encode_positions(
        self, history: torch.Tensor, features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`[B, L]` right-padded ids -> `[B, L, D]` decoder states (causal: row t reads 0..t).

        `features`: `all_item_features()` when the caller already has them (computed once).
        """
        features = self.all_item_features() if features is None else features
        inputs = self.input_dropout(features[history])  # [B, L, D]
        mask = (history != 0).long()
        return self.lm.model(inputs_embeds=inputs, attention_mask=mask).last_hidden_state

    def encode(self, history: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """`[B, L_in]` ids (0 = padding anywhere) -> `[B, D]` state after the last click."""
        compact, lengths = compact_history(history, self.config.max_len)
        return gather_last(self.encode_positions(compact, features), lengths)

    def score(self, history: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.score_all(history).gather(1, items)  # [B, N] -> [B, C]

    def score_all(
        self, history: torch.Tensor, features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`[B, L_in]` ids -> `[B, N]` next-item logits after the last click.

        `features`: `all_item_features()` when the caller already has them (computed once).
        """
        features = self.all_item_features() if features is None else features
        compact, lengths = compact_history(history, self.config.max_len)
        state = gather_last(self.encode_positions(compact, features), lengths)  # [B, D]
        logits = state @ features.t()  # [B, D] @ [D, N]
        if self.match_weight is not None:
            recent = gather_last(self._recent_text(compact), lengths)  # [B, T]
            logits = self._with_text(logits, self._text_match(recent))
        return logits

    def score_positions_all(self, history: torch.Tensor) -> torch.Tensor:
        features = self.all_item_features()
        logits = self.encode_positions(history, features) @ features.t()  # [B, L, D] @ [D, N]
        if self.match_weight is not None:
            logits = self._with_text(logits, self._text_match(self._recent_text(history)))
        return logits

    def _with_text(self, logits: torch.Tensor, match: torch.Tensor) -> torch.Tensor:
        """The LM's logits with the text match: added with a learned weight, or, with the
        text expert, the log of the mixture (log-probabilities: a softmax of them is the
        mixture itself, so the full-softmax loss and the top-N need no change)."""
        if self.expert_gate is None:
            return logits + self.match_weight * match
        lm = torch.log_softmax(logits + self.match_weight * match, dim=-1)
        text = torch.log_softmax(self.expert_scale * match, dim=-1)
        gate = self.expert_gate
        return torch.logaddexp(
            lm + nn.functional.logsigmoid(-gate), text + nn.functional.logsigmoid(gate)
        )

    def _recent_text(self, history: torch.Tensor) -> torch.Tensor:
        """`[B, L]` right-padded ids -> `[B, L, T]`: at each position, the sum of the unit text
        vectors of the last k clicks up to it (a running window, pads count zero)."""
        k = self.config.text_match
        text = self.unit_text[history] * (history != 0).unsqueeze(-1).to(self.unit_text.dtype)
        total = text.cumsum(dim=1)  # [B, L, T]
        before = nn.functional.pad(total, (0, 0, k, 0))[:, : history.shape[1]]  # shifted by k
        return total - before

    def _text_match(self, recent: torch.Tensor) -> torch.Tensor:
        """`[…, T]` window sums -> `[…, N]` cosine of each item's text with their mean."""
        return nn.functional.normalize(recent, dim=-1) @ self.unit_text.t()


def _item_rows(values, config: ItemLMConfig, shape: tuple, what: str, dtype) -> torch.Tensor:
    """`values` as a `[num_items + 1, *shape]` tensor, or ValueError saying what is wrong."""
    if values is None:
        raise ValueError(f"the config needs the item {what} of items 0..num_items")
    tensor = torch.as_tensor(np.asarray(values), dtype=dtype)
    if tuple(tensor.shape) != (config.num_items + 1, *shape):
        raise ValueError(
            f"item {what} has shape {tuple(tensor.shape)}, the config wants "
            f"{(config.num_items + 1, *shape)}"
        )
    return tensor.clone()


def standardize_text(vectors: np.ndarray) -> np.ndarray:
    """Text vectors centred and scaled per dimension over the catalogue (rows 1…), divided by
    √T so a vector's norm stays near 1; row 0 (padding) stays zero.

    Sentence embeddings share a large common direction (all item texts are alike: a title,
    a year, genres); what tells items apart is the small variation around it, which the
    projection would otherwise need large weights to read.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    items = vectors[1:]
    scale = items.std(axis=0) * np.sqrt(vectors.shape[1])
    out = np.zeros_like(vectors)
    out[1:] = (items - items.mean(axis=0)) / np.where(scale > 0, scale, 1.0)
    return out


def items_with_clicks(sequences: Sequence[np.ndarray], num_items: int) -> np.ndarray:
    """`[num_items + 1]` bool: True for the items the sequences click at least once."""
    clicks = np.bincount(
        np.concatenate([np.zeros(0, np.int64), *sequences]), minlength=num_items + 1
    )
    return clicks[: num_items + 1] > 0


def attribute_vocabulary(
    item_attributes: Sequence[Sequence[str]], min_count: int = 2
) -> tuple[list[str], list[list[int]]]:
    """The attribute tokens shared by at least `min_count` items, and each item's indices.

    A token only one item has is an alias of its id and adds nothing an id embedding cannot.
    """
    counts = Counter(token for tokens in item_attributes for token in set(tokens))
    vocabulary = sorted(t for t, c in counts.items() if c >= min_count)
    position = {t: i for i, t in enumerate(vocabulary)}
    per_item = [
        sorted({position[t] for t in tokens if t in position}) for tokens in item_attributes
    ]
    return vocabulary, per_item


class ItemSequenceGenerator(GeneratorBase):
    """The item model as a candidate generator: exact top-N over items outside the history.

    Attributes:
        model: the `ItemLanguageModel` (its `lm` is a transformers causal LM).
        attribute_names: the attribute vocabulary (empty without item knowledge).
    """

    # The top-n is an exact sort of the whole catalogue, so the top-n of every n is a prefix
    # of the top-500: a server batch with many n needs one call (cloud.servicer.run_batch).
    nested_top_n = True
    accelerated = True

    def __init__(
        self,
        model: ItemLanguageModel,
        dataset_name: str = "",
        item_titles: Sequence[str] | None = None,
        attribute_names: Sequence[str] = (),
        model_version: str = "",
    ) -> None:
        self.model = model.eval()
        self.dataset_name = dataset_name
        self.item_titles = list(item_titles) if item_titles is not None else None
        self.attribute_names = list(attribute_names)
        self._model_version = model_version or self.refresh_model_version()
        self._features: tuple[str, torch.Tensor] | None = None  # (version, item vectors)

    @classmethod
    def create(
        cls,
        config: ItemLMConfig,
        dataset_name: str = "",
        item_titles: Sequence[str] | None = None,
        item_attributes: Sequence[Sequence[str]] | None = None,
        seed: int = 0,
        item_text: np.ndarray | None = None,
        train_sequences: Sequence[np.ndarray] | None = None,
    ) -> ItemSequenceGenerator:
        """A new, untrained generator.

        Args:
            item_attributes: index i = item i's tokens; turns on the attributes.
            item_text: `[num_items + 1, T]` text vectors (`cloud.item_text`); turns on text.
            train_sequences: the sequences it will train on; items they never click get no
                id part (`mask_unseen_ids`).
        """
        torch.manual_seed(seed)
        names, per_item = [], None
        if item_attributes is not None:
            names, per_item = attribute_vocabulary(item_attributes)
        config.num_attributes = len(names)
        if item_text is not None:
            item_text = standardize_text(item_text)
        config.text_dim = 0 if item_text is None else int(item_text.shape[1])
        config.mask_unseen_ids = train_sequences is not None
        known = None
        if train_sequences is not None:
            known = items_with_clicks(train_sequences, config.num_items)
        model = ItemLanguageModel(config, per_item if names else None, text=item_text, known=known)
        return cls(model, dataset_name, item_titles, names)

    @property
    def config(self) -> ItemLMConfig:
        return self.model.config

    @property
    def num_items(self) -> int:
        return self.config.num_items

    def refresh_model_version(self) -> str:
        self._model_version = weights_version(self.model.state_dict(), f"{self.config.kind}-items")
        return self._model_version

    def item_vectors(self) -> torch.Tensor:
        """`[N, D]` item vectors for serving, computed once per model version: with item
        text, the projection of the catalogue's text vectors alone costs more than a
        request's forward pass. Training changes the weights and refreshes the version."""
        if self._features is None or self._features[0] != self.model_version:
            with torch.inference_mode():
                self._features = (self.model_version, self.model.all_item_features())
        return self._features[1]

    def to(self, device: str) -> ItemSequenceGenerator:
        """Run the item model on `device` (the batch goes there, the top-N comes back)."""
        self.model.to(device)
        self._features = None  # the item vectors are recomputed there
        return self

    @torch.inference_mode()
    def _generate_batch(
        self, histories: list[np.ndarray], n: int, masked: list[np.ndarray]
    ) -> list[CandidateList]:
        self.model.eval()
        device = next(self.model.parameters()).device
        padded = torch.from_numpy(pad_histories(histories, self.config.max_len)).to(device)
        logits = self.model.score_all(padded, self.item_vectors())  # [B, N]
        log_probs = torch.log_softmax(logits[:, 1:], dim=-1)  # [B, N-1]
        for row, items in enumerate(masked):
            log_probs[row, torch.from_numpy(items - 1)] = float("-inf")  # history + exclusion
        scores, index = (t.cpu() for t in torch.topk(log_probs, n, dim=-1))  # exact, sorted
        version = self.model_version
        return [
            CandidateList(
                items=(index[row] + 1).numpy().astype(np.int64),
                scores=scores[row].numpy().astype(np.float32),
                model_version=version,
            )
            for row in range(len(histories))
        ]

    # ----------------------------------------------------------------- persistence

    def save_pretrained(self, folder: str | Path) -> None:
        """Write the transformers model (`model/`), the item side (attribute embeddings), the
        attribute vocabulary, titles and config into one folder (no pickle)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        bb.save_model(self.model.lm, folder)
        side = {k: v.contiguous() for k, v in self.model.state_dict().items() if k[:3] != "lm."}
        if side:
            save_file(side, str(folder / ITEM_SIDE_FILE))
        if self.attribute_names:
            (folder / ATTRIBUTES_FILE).write_text(json.dumps(self.attribute_names))
        self._write_meta(folder, "item-lm", self.config.to_dict())

    @classmethod
    def from_pretrained(cls, folder: str | Path, verify: bool = True) -> ItemSequenceGenerator:
        """Load a folder written by `save_pretrained`, strictly.

        Args:
            verify: check the folder against its manifest first (False: the caller did).
        Raises:
            FileNotFoundError: the folder or one of its parts is missing.
            ValueError: a file differs from the manifest or cannot be read, the weights do
                not fit the config, or the folder was written by a newer, unknown format.
        """
        folder = Path(folder)
        meta, titles = read_meta(folder, verify)
        try:
            config = ItemLMConfig(**meta["config"])
        except (TypeError, ValueError) as err:
            raise ValueError(f"{folder / GENERATOR_FILE}: bad item-LM config: {err}") from None
        side, per_item, names = {}, None, []
        expected = side_tensor_names(config)
        if expected:
            side = _read_item_side(folder / ITEM_SIDE_FILE, expected)
        if config.num_attributes:
            per_item = _rows(side["attr_index"], side["attr_offsets"])
            names = read_json(folder / ATTRIBUTES_FILE)
        text, known = side.get("item_text"), side.get("id_known")
        try:
            model = ItemLanguageModel(
                config,
                per_item,
                decoder=bb.load_model(folder),
                text=text,
                known=None if known is None else known.squeeze(-1),
            )
        except ValueError as err:
            raise ValueError(f"{folder / ITEM_SIDE_FILE}: {err}") from None
        _load_side(model, side, folder / ITEM_SIDE_FILE)
        return cls(
            model,
            dataset_name=meta.get("dataset", ""),
            item_titles=titles,
            attribute_names=names,
            model_version=meta["model_version"],
        )


def side_tensor_names(config: ItemLMConfig) -> tuple[str, ...]:
    """The tensors of the item side (everything outside the transformers model) a config has."""
    names: tuple[str, ...] = ()
    if config.num_attributes:
        names += ("attr_index", "attr_offsets", "attributes.weight")
    if config.text_dim:
        names += ("item_text", "text_proj.weight")
    if config.mask_unseen_ids:
        names += ("id_known",)
    if config.unknown_id:
        names += ("unknown_id",)
    if config.text_match:
        names += ("match_weight",)
    if config.text_expert:
        names += ("expert_gate", "expert_scale")
    return names


def _read_item_side(path: Path, expected: Sequence[str]) -> dict[str, torch.Tensor]:
    """The item side's tensors, all of them, or ValueError naming the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (the config has an item side)")
    try:
        side = load_file(str(path))
    except SafetensorError as err:
        raise ValueError(f"{path}: unreadable weights (truncated?): {err}") from None
    for name in expected:
        if name not in side:
            raise ValueError(f"{path}: missing weight {name}; refusing to load")
    for name in sorted(set(side) - set(expected)):
        raise ValueError(f"{path}: unexpected weight {name}; refusing to load")
    return side


def _load_side(model: ItemLanguageModel, side: dict[str, torch.Tensor], path: Path) -> None:
    """Copy the item side's trained weights into `model`, refusing a mis-shaped one."""
    params = dict(model.named_parameters())
    for name, tensor in side.items():
        if name not in params:
            continue  # buffers (indices, text, known) went in through the constructor
        if tensor.shape != params[name].shape:
            raise ValueError(
                f"{path}: mis-shaped weight {name} {tuple(tensor.shape)}, the config wants "
                f"{tuple(params[name].shape)}"
            )
        params[name].data.copy_(tensor)


def _rows(index: torch.Tensor, offsets: torch.Tensor) -> list[list[int]]:
    """The per-item attribute lists an EmbeddingBag's flat index and offsets encode."""
    bounds = offsets.tolist() + [len(index)]
    return [index[a:b].tolist() for a, b in zip(bounds[:-1], bounds[1:])]
