import gzip
import json

import numpy as np
import pytest

from shared.datasets import DatasetError, load_dataset
from shared.datasets.synthetic import make_synthetic


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_reindexes_from_one_and_sorts_by_time_with_stable_ties(tmp_path):
    path = write(
        tmp_path / "log.csv",
        "user,item,timestamp,rating\nu1,b,20,5\nu1,a,10,4\nu2,c,5,3\nu1,c,20,1\nu2,a,30,2\n",
    )
    ds = load_dataset("csv", path=path)
    assert ds.num_users == 2 and ds.num_items == 3 and ds.num_interactions == 5
    # items numbered by first appearance in time: c(5)=1, a(10)=2, b(20)=3
    assert ds.item_ids == ["", "c", "a", "b"]
    assert ds.user_ids == ["u1", "u2"]
    # u1: a(10), then b and c tie at 20 and keep file order (b before c)
    assert ds.sequences[0].tolist() == [2, 3, 1]
    assert ds.sequences[1].tolist() == [1, 2]
    assert ds.timestamps[0].tolist() == [10, 20, 20]


def test_movielens_1m_reads_ratings_and_titles(tmp_path):
    write(
        tmp_path / "ratings.dat", "1::10::5::978300760\n1::20::3::978300700\n2::10::4::978300800\n"
    )
    write(tmp_path / "movies.dat", "10::Toy Story (1995)::Animation\n20::Heat (1995)::Action\n")
    ds = load_dataset("ml-1m", path=tmp_path / "ratings.dat")
    assert ds.num_users == 2 and ds.num_items == 2
    assert [ds.title(i) for i in ds.sequences[0]] == ["Heat (1995)", "Toy Story (1995)"]


@pytest.mark.parametrize("gz", [False, True])
def test_amazon_json_lines_plain_and_gzipped(tmp_path, gz):
    rows = [
        {"reviewerID": "A", "asin": "x", "unixReviewTime": 3, "overall": 5.0},
        {"reviewerID": "A", "asin": "y", "unixReviewTime": 1},
        {"reviewerID": "B", "asin": "x", "unixReviewTime": 2},
    ]
    text = "\n".join(json.dumps(r) for r in rows) + "\n"
    path = tmp_path / ("reviews.json.gz" if gz else "reviews.json")
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        write(path, text)
    ds = load_dataset("amazon", path=path)
    assert ds.num_users == 2 and ds.num_items == 2 and ds.num_interactions == 3
    assert [ds.item_ids[i] for i in ds.sequences[0]] == ["y", "x"]


def test_k_core_filter_drops_sparse_users_and_items(tmp_path):
    lines = ["user,item,timestamp"]
    for u in range(3):
        lines += [f"{u},{i},{u * 10 + i}" for i in range(3)]
    lines.append("9,99,100")  # a user and an item with one interaction each
    ds = load_dataset("csv", path=write(tmp_path / "k.csv", "\n".join(lines) + "\n"), k_core=2)
    assert ds.num_users == 3 and ds.num_items == 3 and ds.num_interactions == 9


@pytest.mark.parametrize(
    ("name", "filename", "text", "problem"),
    [
        ("csv", "bad.csv", "user,item\n1,2\n", "missing column.*timestamp"),
        (
            "csv",
            "bad.csv",
            "user,item,timestamp\n1,2,yesterday\n",
            "timestamp 'yesterday' is not a number",
        ),
        ("csv", "empty.csv", "", "empty"),
        ("csv", "header_only.csv", "user,item,timestamp\n", "no interactions"),
        (
            "amazon",
            "bad.json",
            '{"reviewerID": "A", "asin": "x"}\n',
            "missing field.*unixReviewTime",
        ),
        ("amazon", "bad.json", "not json\n", "not a JSON object"),
        ("amazon", "empty.json", "", "no interactions"),
        ("ml-1m", "ratings.dat", "1::2::3\n", "expected user::item::rating::timestamp"),
        ("ml-1m", "ratings.dat", "1::2::3::soon\n", "timestamp 'soon' is not a number"),
    ],
)
def test_bad_files_give_one_clear_line_naming_file_and_problem(
    tmp_path, name, filename, text, problem
):
    path = write(tmp_path / filename, text)
    with pytest.raises(DatasetError, match=problem) as info:
        load_dataset(name, path=path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message


def test_unknown_dataset_and_missing_path():
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        load_dataset("nope")
    with pytest.raises(ValueError, match="needs --path"):
        load_dataset("csv")
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_dataset("csv", path="does/not/exist.csv")


SIMULATORS = pytest.mark.parametrize("batched", [False, True], ids=["per-user", "batched"])


@SIMULATORS
def test_synthetic_is_seeded_and_has_no_repeats(batched):
    small = dict(num_users=30, num_items=120, num_topics=6, min_length=10, max_length=30)
    a = make_synthetic(**small, seed=5, batched=batched)
    b = make_synthetic(**small, seed=5, batched=batched)
    c = make_synthetic(**small, seed=6, batched=batched)
    assert all(np.array_equal(x, y) for x, y in zip(a.sequences, b.sequences))
    assert not all(np.array_equal(x, y) for x, y in zip(a.sequences, c.sequences))
    for seq in a.sequences:
        assert len(set(seq.tolist())) == len(seq) and 10 <= len(seq) <= 30
        assert seq.min() >= 1 and seq.max() <= a.num_items


@SIMULATORS
def test_synthetic_interests_drift_between_topics(batched):
    ds = make_synthetic(
        batched=batched,
        num_users=50,
        num_items=400,
        num_topics=10,
        min_length=40,
        max_length=40,
        noise=0.0,
        mean_dwell=5.0,
        seed=1,
    )
    topic = lambda item: ds.item_titles[item].split(" · ")[0]  # noqa: E731
    switches, same = 0, 0
    for seq in ds.sequences:
        topics = [topic(i) for i in seq]
        switches += sum(a != b for a, b in zip(topics, topics[1:]))
        same += sum(a == b for a, b in zip(topics, topics[1:]))
    rate = switches / (switches + same)
    # about one switch every mean_dwell clicks: users neither stay put nor jump at random
    assert 0.1 < rate < 0.35


def test_synthetic_config_is_validated():
    with pytest.raises(ValueError, match="num_topics"):
        make_synthetic(num_items=10, num_topics=20)


@SIMULATORS
def test_synthetic_data_expose_the_latent_topic_of_every_click(batched):
    dataset = make_synthetic(
        num_users=30, num_items=200, num_topics=5, noise=0.0, seed=2, batched=batched
    )
    assert [len(t) for t in dataset.latent_topics] == [len(s) for s in dataset.sequences]
    item_topic = {i: int(a[0].split("=")[1]) for i, a in enumerate(dataset.item_attributes) if a}
    drawn = np.concatenate(dataset.latent_topics)
    clicked = np.array([item_topic[i] for s in dataset.sequences for i in s])
    # without noise a click leaves its topic only when the topic runs out of unseen items
    assert (drawn == clicked).mean() > 0.95
    switches = np.concatenate([np.diff(t) != 0 for t in dataset.latent_topics])
    assert 0.05 < switches.mean() < 0.4  # mean dwell 6 clicks


def _same_topic_share(dataset) -> float:
    """Share of consecutive clicks whose items share a topic."""
    item_topic = np.array([int(a[0].split("=")[1]) if a else -1 for a in dataset.item_attributes])
    same = np.concatenate([item_topic[s[1:]] == item_topic[s[:-1]] for s in dataset.sequences])
    return float(same.mean())


def _common_pair_share(dataset, at_least: int = 5) -> float:
    """Share of consecutive click pairs (raw item ids) that at least `at_least` users made:
    the topics' item order makes some transitions common (the sequential pattern)."""
    raw = np.array([int(i) if i else -1 for i in dataset.item_ids])
    pairs = np.concatenate([raw[s[:-1]] * 100_000 + raw[s[1:]] for s in dataset.sequences])
    _, inverse, counts = np.unique(pairs, return_inverse=True, return_counts=True)
    return float((counts[inverse] >= at_least).mean())


def test_the_batched_simulator_tells_the_per_user_story():
    """Same world (seed), same distributions: item popularity, staying in a topic, lengths."""
    options = dict(num_users=1500, num_items=300, num_topics=10, seed=3)
    per_user = make_synthetic(**options)
    batched = make_synthetic(**options, batched=True)

    def counts(dataset):
        raw = np.array([int(i) for i in dataset.item_ids[1:]])  # the world's item index
        clicks = np.bincount(np.concatenate(dataset.sequences), minlength=dataset.num_items + 1)
        out = np.zeros(options["num_items"])
        out[raw] = clicks[1:]
        return out

    a, b = counts(per_user), counts(batched)
    assert np.corrcoef(a, b)[0, 1] > 0.95  # the same items are popular
    assert abs(_same_topic_share(per_user) - _same_topic_share(batched)) < 0.02
    assert abs(_common_pair_share(per_user) - _common_pair_share(batched)) < 0.03
    lengths = [np.mean([len(s) for s in d.sequences]) for d in (per_user, batched)]
    assert abs(lengths[0] - lengths[1]) < 2.0
    stays = [np.concatenate([np.diff(t) == 0 for t in d.latent_topics]).mean()
             for d in (per_user, batched)]  # fmt: skip
    assert abs(stays[0] - stays[1]) < 0.02
