"""A seeded synthetic data set whose users drift between interests over time.

Generative story (all draws from one `numpy` generator, so a seed fixes the data):
- Items belong to `num_topics` topics; inside a topic they sit in a fixed order, and a
  Zipf-like weight gives a few of them most of the popularity.
- A user stays in one topic for a geometric number of clicks (mean `mean_dwell`), then
  moves to another topic: interests drift, so a candidate list made a few clicks ago goes
  stale — the situation where adapting on the device after every click matters.
- Inside a topic the next click is, with probability `walk_prob`, one of the next few items
  after the previous click in the topic's order (a learnable sequential pattern), else an
  item drawn by popularity; with probability `noise` it is any item by global popularity.
- A user never clicks the same item twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.datasets.base import InteractionLog, SequenceDataset, build_sequence_dataset


@dataclass
class SyntheticConfig:
    num_users: int = 500  # users to simulate
    num_items: int = 1000  # catalogue size
    num_topics: int = 20  # latent interests; each item belongs to one
    min_length: int = 20  # shortest user sequence
    max_length: int = 80  # longest user sequence
    mean_dwell: float = 6.0  # mean clicks before a user moves to another topic
    walk_prob: float = 0.6  # chance the next click follows the topic's item order
    walk_window: int = 5  # how far ahead in the topic order a "walk" click may land
    noise: float = 0.05  # chance of a click by global popularity, off-topic
    zipf_exponent: float = 1.0  # popularity skew inside each topic
    seed: int = 0  # fixes the data

    def __post_init__(self) -> None:
        if self.num_users < 1 or self.num_items < 1:
            raise ValueError(
                f"need at least one user and item, got {self.num_users}, {self.num_items}"
            )
        if not 1 <= self.num_topics <= self.num_items:
            raise ValueError(f"num_topics must be in [1, num_items], got {self.num_topics}")
        if not 1 <= self.min_length <= self.max_length:
            raise ValueError(
                f"need 1 <= min_length <= max_length, got {self.min_length}, {self.max_length}"
            )
        if self.max_length > self.num_items:
            raise ValueError(f"max_length {self.max_length} exceeds num_items {self.num_items}")
        if self.mean_dwell < 1:
            raise ValueError(f"mean_dwell must be >= 1, got {self.mean_dwell}")
        for name in ("walk_prob", "noise"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


class _World:
    """Topic membership, order inside topics and popularity of the items."""

    def __init__(self, cfg: SyntheticConfig, rng: np.random.Generator) -> None:
        self.cfg = cfg
        self.topic_items = np.array_split(rng.permutation(cfg.num_items), cfg.num_topics)
        self.position = np.empty(cfg.num_items, dtype=np.int64)  # item -> index inside its topic
        self.topic_of = np.empty(cfg.num_items, dtype=np.int64)
        self.topic_weights = []
        for t, members in enumerate(self.topic_items):
            self.position[members] = np.arange(len(members))
            self.topic_of[members] = t
            weights = 1.0 / np.arange(1, len(members) + 1) ** cfg.zipf_exponent
            self.topic_weights.append(rng.permutation(weights))
        self.global_weights = np.concatenate(self.topic_weights)[
            np.argsort(np.concatenate(self.topic_items))
        ]

    def pick(self, rng, pool: np.ndarray, weights: np.ndarray, seen: set) -> int | None:
        mask = np.fromiter((i not in seen for i in pool), dtype=bool, count=len(pool))
        if not mask.any():
            return None
        w = weights[mask]
        return int(rng.choice(pool[mask], p=w / w.sum()))

    def next_click(self, rng, topic: int, previous: int | None, seen: set) -> int:
        cfg = self.cfg
        members = self.topic_items[topic]
        item = None
        if rng.random() < cfg.noise:
            item = self.pick(rng, np.arange(cfg.num_items), self.global_weights, seen)
        elif (
            previous is not None
            and self.topic_of[previous] == topic
            and rng.random() < cfg.walk_prob
        ):
            start = self.position[previous] + 1
            ahead = members[start : start + cfg.walk_window]
            if len(ahead):
                item = self.pick(rng, ahead, np.ones(len(ahead)), seen)
        if item is None:
            item = self.pick(rng, members, self.topic_weights[topic], seen)
        if item is None:  # topic exhausted for this user: fall back to anything unseen
            item = self.pick(rng, np.arange(cfg.num_items), self.global_weights, seen)
        return item


def _simulate_user(
    world: _World, cfg: SyntheticConfig, rng: np.random.Generator
) -> tuple[list[int], list[int]]:
    """One user's clicks and the topic each was drawn from (the latent interest)."""
    length = int(rng.integers(cfg.min_length, cfg.max_length + 1))
    topic = int(rng.integers(cfg.num_topics))
    dwell_left = int(rng.geometric(1.0 / cfg.mean_dwell))
    seen: set = set()
    clicks: list[int] = []
    topics: list[int] = []
    for _ in range(length):
        if dwell_left == 0 and cfg.num_topics > 1:
            topic = int((topic + rng.integers(1, cfg.num_topics)) % cfg.num_topics)
            dwell_left = int(rng.geometric(1.0 / cfg.mean_dwell))
        item = world.next_click(rng, topic, clicks[-1] if clicks else None, seen)
        seen.add(item)
        clicks.append(item)
        topics.append(topic)
        dwell_left -= 1
    return clicks, topics


def make_synthetic(config: SyntheticConfig | None = None, **overrides) -> SequenceDataset:
    """Generate the drifting-interest data set (see the module docstring).

    Args:
        config: a `SyntheticConfig`; keyword overrides build or modify one.
    Returns:
        A `SequenceDataset` named "synthetic" whose item titles name each item's topic and
        whose item attributes are the topic (`topic=k`); `latent_topics` holds the topic
        each click was drawn from (known only because the data are simulated).
    """
    if config is None:
        config = SyntheticConfig(**overrides)
    elif overrides:
        config = SyntheticConfig(**{**config.__dict__, **overrides})
    rng = np.random.default_rng(config.seed)
    world = _World(config, rng)
    users, items, stamps, topics = [], [], [], []
    for user in range(config.num_users):
        clicks, user_topics = _simulate_user(world, config, rng)
        start = int(rng.integers(0, 10**6))
        users += [user] * len(clicks)
        items += clicks
        topics += user_topics
        stamps += list(range(start, start + 60 * len(clicks), 60))
    titles = {i: f"topic {world.topic_of[i]} · item {i}" for i in range(config.num_items)}
    # The topic is the item's category, as a genre is a film's: metadata a catalogue has.
    attributes = {i: (f"topic={world.topic_of[i]}",) for i in range(config.num_items)}
    log = InteractionLog(
        np.asarray(users),
        np.asarray(items),
        np.asarray(stamps, dtype=np.int64),
        titles,
        attributes,
        latent=np.asarray(topics, dtype=np.int64),  # known here, so surprise can be scored
    )
    return build_sequence_dataset(log, name="synthetic")
