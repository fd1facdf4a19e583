import numpy as np
import pytest
import torch

from seqrec.collaborative import (
    CandidateBatcher,
    CollaborativeConfig,
    cached_candidate_examples,
    choose_positions,
    train_collaborative,
)
from seqrec.models import build_model
from seqrec.training import TrainConfig, ValidationSet
from shared.candidates import CandidateList
from shared.datasets.synthetic import make_synthetic
from shared.splits import split_stream


class PopularityLists:
    """A real, if simple, candidate generator: the most popular items outside the history."""

    def __init__(self, sequences, num_items):
        counts = np.bincount(np.concatenate(sequences), minlength=num_items + 1)
        counts[0] = -1
        self.order = np.argsort(-counts, kind="stable")
        self.calls = 0

    def __call__(self, histories, n=20):
        self.calls += 1
        out = []
        for h in histories:
            items = [i for i in self.order if i not in set(h.tolist()) and i != 0][:n]
            out.append(CandidateList(np.asarray(items), -np.arange(n, dtype=np.float32)))
        return out


@pytest.fixture(scope="module")
def split():
    data = make_synthetic(
        num_users=40, num_items=120, num_topics=4, min_length=20, max_length=30, seed=4
    )
    return split_stream(data)


def test_choose_positions_takes_the_newest_clicks():
    users, positions = choose_positions([np.arange(1, 8), np.array([3, 4])], per_user=3)
    assert users.tolist() == [0, 0, 0, 1] and positions.tolist() == [4, 5, 6, 1]


def test_candidate_batches_put_target_first_and_never_use_the_users_items(split, tmp_path):
    lists = PopularityLists(split.train, split.num_items)
    examples = cached_candidate_examples(lists, "pop", split.train, tmp_path, per_user=2, n=20)
    assert lists.calls > 0
    calls = lists.calls
    again = cached_candidate_examples(lists, "pop", split.train, tmp_path, per_user=2, n=20)
    assert lists.calls == calls, "the second call reads the cache"
    np.testing.assert_array_equal(again.candidates, examples.candidates)
    for fill in (True, False):
        batcher = CandidateBatcher(
            split.train,
            examples,
            split.num_items,
            max_len=10,
            list_size=30,
            fill_random=fill,
            batch_size=16,
        )
        for batch in batcher:
            assert batch.items.shape[1] == 30 and (batch.labels[:, 0] == 1).all()
            for user, row in zip(batch.users, batch.items):
                own = set(split.train[user].tolist())
                assert row[0] in own
                assert not own & set(row[1:].tolist())
                assert (row[1:] != 0).all() if fill else (row[21:] == 0).all()
    few = CandidateBatcher(
        split.train,
        examples,
        split.num_items,
        max_len=10,
        list_size=30,
        hard_negatives=3,
        fill_random=False,
    )
    for batch in few:
        assert (batch.items[:, 4:] == 0).all()  # at most 3 LLM candidates, nothing else
        assert (batch.items[:, 1:4] != 0).any()
    with pytest.raises(ValueError, match="hard_negatives"):
        CandidateBatcher(split.train, examples, split.num_items, hard_negatives=-1)


def test_cooperative_training_improves_ranking_inside_the_lists(split, tmp_path):
    torch.manual_seed(0)
    lists = PopularityLists(split.train, split.num_items)
    examples = cached_candidate_examples(lists, "pop", split.train, tmp_path, per_user=5, n=20)
    users = split.stream_users
    valid_lists = cached_candidate_examples(
        lists, "pop", [split.history_at_stream_start(u) for u in users], tmp_path, per_user=1, n=20
    )
    valid = ValidationSet.build(
        [split.train[u] for u in users], split.valid_target[users], split.num_items, max_len=10
    ).with_lists(valid_lists.candidates)
    model = build_model("sasrec", num_items=split.num_items, hidden_size=16, max_len=10)
    before = valid.evaluate(model, "list")["NDCG@10"]
    config = TrainConfig(epochs=1, max_len=10, batch_size=32, progress=False)
    results = train_collaborative(
        model,
        split.train,
        valid,
        examples,
        config,
        CollaborativeConfig(per_user=5, list_size=40, epochs=4, adaptive_epochs=1),
    )
    assert set(results) == {"collaborative", "adaptive"}
    losses = [r["loss"] for r in results["collaborative"].epochs]
    assert losses[-1] < losses[0]
    assert valid.evaluate(model, "list")["NDCG@10"] >= before


def test_collaborative_config_is_validated():
    with pytest.raises(ValueError, match="per_user"):
        CollaborativeConfig(per_user=0)
