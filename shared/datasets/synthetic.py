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

Two simulators tell this story. The default steps one user at a time (its data are what every
synthetic result in the README was measured on); `batched=True` steps every user at once in
numpy, for 10⁵–10⁶ users in seconds: the same distributions (a click "never twice" is drawn
by rejection, which is the renormalisation over unseen items the default computes), a
different random stream, so the same seed gives other data.
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
    batched: bool = False  # simulate every user at once (fast; another random stream)

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


def _batched_dataset(world: _World, cfg: SyntheticConfig, rng: np.random.Generator):
    """The batched simulation as a `SequenceDataset` without re-indexing: its clicks come
    grouped by user and in time order, and item `i` of the world is item id `i + 1`."""
    users, items, stamps, topics = _simulate_batched(world, cfg, rng)
    bounds = np.flatnonzero(np.diff(users)) + 1
    ids = range(1, cfg.num_items + 1)
    return SequenceDataset(
        name="synthetic",
        sequences=np.split(items + 1, bounds),
        timestamps=np.split(stamps.astype(np.int64), bounds),
        num_items=cfg.num_items,
        user_ids=[str(u) for u in range(cfg.num_users)],
        item_ids=[""] + [str(i - 1) for i in ids],
        item_titles=[""] + [f"topic {world.topic_of[i - 1]} · item {i - 1}" for i in ids],
        item_attributes=[()] + [(f"topic={world.topic_of[i - 1]}",) for i in ids],
        latent_topics=np.split(topics, bounds),
    )


BITMAP_BYTES = 64 * 2**20  # the batched simulator's seen-item bitmap per group of users
REDRAWS = 8  # rejection draws per source before the next source takes over


class _Sampler:
    """Vectorised draws by popularity: inside a topic, and over the whole catalogue."""

    def __init__(self, world: _World) -> None:
        members = world.topic_items
        self.offsets = np.cumsum([0] + [len(m) for m in members])  # topic k: [o_k, o_k+1)
        self.flat = np.concatenate(members)
        # topic k's cumulative weights shifted by k, so one searchsorted serves every topic
        self.topic_cdf = np.concatenate(
            [k + np.cumsum(w) / w.sum() for k, w in enumerate(world.topic_weights)]
        )
        self.topic_cdf[self.offsets[1:] - 1] = np.arange(1, len(members) + 1)  # exact ends
        weights = world.global_weights
        self.global_cdf = np.cumsum(weights) / weights.sum()
        self.global_cdf[-1] = 1.0
        width = max(len(m) for m in members)
        self.members = np.zeros((len(members), width), dtype=np.int64)  # [K, S], padded
        self.weights = np.zeros((len(members), width))  # 0 on the padding
        for k, (m, w) in enumerate(zip(members, world.topic_weights)):
            self.members[k, : len(m)], self.weights[k, : len(m)] = m, w

    def popular_in(self, rng: np.random.Generator, topics: np.ndarray) -> np.ndarray:
        """One item of each of `topics` by popularity (seen or not)."""
        index = np.searchsorted(self.topic_cdf, topics + rng.random(len(topics)), side="right")
        return self.flat[np.minimum(index, self.offsets[topics + 1] - 1)]

    def in_topic(
        self, rng: np.random.Generator, topics: np.ndarray, seen: np.ndarray, rows: np.ndarray
    ) -> np.ndarray:
        """For each of `rows`, an item of its topic by popularity among the items its row
        of `seen [U, items]` has not: the per-user simulator's renormalised draw; -1 where
        the user has seen the whole topic."""
        members = self.members[topics]  # [R, S]
        weights = self.weights[topics] * ~seen[rows[:, None], members]  # [R, S]
        cdf = np.cumsum(weights, axis=1)
        total = cdf[:, -1]
        index = (cdf < (rng.random(len(rows)) * total)[:, None]).sum(axis=1)
        index = np.minimum(index, members.shape[1] - 1)
        return np.where(total > 0, members[np.arange(len(rows)), index], -1)

    def anywhere(self, rng: np.random.Generator, count: int) -> np.ndarray:
        index = np.searchsorted(self.global_cdf, rng.random(count), side="right")
        return np.minimum(index, len(self.global_cdf) - 1)


def _simulate_batched(
    world: _World, cfg: SyntheticConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every user's clicks at once, in groups whose seen-item bitmap stays near
    `BITMAP_BYTES`: `(users, items, stamps, topics)` as flat arrays, each user's clicks in
    order."""
    sampler = _Sampler(world)
    group = max(256, BITMAP_BYTES // cfg.num_items)
    parts = []
    for first in range(0, cfg.num_users, group):
        count = min(group, cfg.num_users - first)
        clicks, topics, lengths = _simulate_group(world, sampler, cfg, rng, count)
        starts = rng.integers(0, 10**6, size=count)
        present = np.arange(cfg.max_length)[None, :] < lengths[:, None]  # [U, T]
        rows, cols = np.nonzero(present)
        parts.append(
            (rows + first, clicks[rows, cols], starts[rows] + 60 * cols, topics[rows, cols])
        )
    return tuple(np.concatenate(column) for column in zip(*parts))


def _simulate_group(
    world: _World, sampler: _Sampler, cfg: SyntheticConfig, rng: np.random.Generator, count: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`[U, T]` clicks and topics (-1 past a user's length) and `[U]` lengths of `count` users."""
    horizon = cfg.max_length
    lengths = rng.integers(cfg.min_length, cfg.max_length + 1, size=count)
    topic = rng.integers(cfg.num_topics, size=count)
    dwell = rng.geometric(1.0 / cfg.mean_dwell, size=count)
    clicks = np.full((count, horizon), -1, dtype=np.int64)
    topics = np.full((count, horizon), -1, dtype=np.int64)
    seen = np.zeros((count, cfg.num_items), dtype=bool)  # [U, items]: clicked already
    everyone = np.arange(count)
    for step in range(horizon):
        if cfg.num_topics > 1:
            moving = np.flatnonzero(dwell == 0)
            shift = rng.integers(1, cfg.num_topics, len(moving))
            topic[moving] = (topic[moving] + shift) % cfg.num_topics
            dwell[moving] = rng.geometric(1.0 / cfg.mean_dwell, size=len(moving))
        item = np.full(count, -1, dtype=np.int64)
        noise = rng.random(count) < cfg.noise
        # off-topic clicks by global popularity
        rows = np.flatnonzero(noise)
        item[rows] = _unseen(lambda r: sampler.anywhere(rng, len(r)), seen, rows)
        if step > 0:
            previous = clicks[:, step - 1]
            walking = ~noise & (world.topic_of[previous] == topic)
            walking &= rng.random(count) < cfg.walk_prob
            rows = np.flatnonzero(walking)
            item[rows] = _walk(world, sampler, cfg, rng, previous[rows], topic[rows], seen, rows)
        # by popularity in the topic among unseen items: rejection (exact, and cheap while
        # few of the topic's popular items are seen), then the renormalised draw for the rest
        rows = np.flatnonzero(item < 0)
        item[rows] = _unseen(lambda r: sampler.popular_in(rng, topic[r]), seen, rows)
        rows = np.flatnonzero(item < 0)
        item[rows] = sampler.in_topic(rng, topic[rows], seen, rows)
        rows = np.flatnonzero(item < 0)  # a topic exhausted for this user, or no luck
        item[rows] = _unseen(lambda r: sampler.anywhere(rng, len(r)), seen, rows)
        for row in np.flatnonzero(item < 0):  # practically never: the first unseen item
            item[row] = np.flatnonzero(~seen[row])[0]
        seen[everyone, item] = True
        clicks[:, step] = item
        topics[:, step] = topic
        dwell -= 1
    return clicks, topics, lengths


def _walk(
    world: _World,
    sampler: _Sampler,
    cfg: SyntheticConfig,
    rng: np.random.Generator,
    previous: np.ndarray,
    topics: np.ndarray,
    seen: np.ndarray,
    rows: np.ndarray,
) -> np.ndarray:
    """For each of `rows`, one of the next `walk_window` items after its previous click in
    the topic's order, uniformly among those its row of `seen` has not; -1 where none is
    left (the topic ends, or all were clicked)."""
    base = world.position[previous] + 1  # [R]: position of the first item ahead
    steps = np.arange(cfg.walk_window)  # [W]
    position = base[:, None] + steps  # [R, W]
    size = np.diff(sampler.offsets)[topics]
    inside = position < size[:, None]
    items = sampler.members[topics[:, None], np.minimum(position, sampler.members.shape[1] - 1)]
    open_ = inside & ~seen[rows[:, None], items]
    keys = np.where(open_, rng.random(open_.shape), -1.0)  # a uniform choice among the open
    choice = keys.argmax(axis=1)
    return np.where(open_.any(axis=1), items[np.arange(len(rows)), choice], -1)


def _unseen(draw, seen: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """For each of `rows`, an item from `draw(open_rows)` (one item per row) that its row
    of `seen [U, items]` has not, by up to `REDRAWS` draws; -1 where every draw was seen."""
    out = np.full(len(rows), -1, dtype=np.int64)
    open_at = np.arange(len(rows))  # positions in `rows` still without an item
    for _ in range(REDRAWS):
        if not len(open_at):
            break
        candidates = draw(rows[open_at])
        fresh = ~seen[rows[open_at], candidates]
        out[open_at[fresh]] = candidates[fresh]
        open_at = open_at[~fresh]
    return out


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
    if config.batched:
        return _batched_dataset(world, config, rng)
    else:
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
