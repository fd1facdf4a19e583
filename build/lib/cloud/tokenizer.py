"""The word-level tokenizer of a generator trained from scratch, built with `tokenizers`.

Its vocabulary is exactly what prompts and identifiers use: special tokens, the template
words, digits and "," for sequential ids, one token per item for atomic ids. It is wrapped as
a transformers fast tokenizer, so it saves and loads with `save_pretrained`/`from_pretrained`.
"""

from __future__ import annotations

from collections.abc import Sequence

from cloud.indexing import ItemIndex

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"


def template_words(templates: Sequence[str]) -> list[str]:
    """Whitespace-separated words of the templates, in first-seen order, without "{history}"."""
    words: list[str] = []
    for template in templates:
        for word in template.split():
            if word != "{history}" and word not in words:
                words.append(word)
    return words


def build_tokenizer(index: ItemIndex, templates: Sequence[str]):
    """A `PreTrainedTokenizerFast` for these identifiers and templates (pad 0, eos 1, unk 2)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab_words = [PAD, EOS, UNK] + template_words(templates)
    if index.scheme == "sequential":
        vocab_words += [str(d) for d in range(10)] + [","]
        # Numbers are split into single digits: the model writes identifiers digit by digit.
        splitter = pre_tokenizers.Sequence(
            [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Digits(individual_digits=True)]
        )
    else:
        vocab_words += list(index.identifiers[1:])
        splitter = pre_tokenizers.WhitespaceSplit()
    vocab: dict[str, int] = {}
    for word in vocab_words:
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    backend.pre_tokenizer = splitter
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=PAD, eos_token=EOS, unk_token=UNK
    )


def add_item_tokens(tokenizer, index: ItemIndex) -> list[int]:
    """Add atomic item tokens missing from a pretrained tokenizer; returns the new token ids."""
    if index.scheme != "atomic":
        return []
    vocab = tokenizer.get_vocab()
    missing = [ident for ident in index.identifiers[1:] if ident not in vocab]
    tokenizer.add_tokens(missing)
    return [int(i) for i in tokenizer.convert_tokens_to_ids(missing)]
