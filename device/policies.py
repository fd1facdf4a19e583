"""Request policies: when should the device ask the cloud for a fresh candidate list?

Every policy answers one question per stream step, from what the device knows then
(`PolicyObservation`): `decide(obs) -> bool`. Policies keep per-user state (a random
stream, a request budget), so each user gets their own copy (`spawn(user)`), and
`reset()` starts it over. `knob` is the value a request-rate curve sweeps.

    never            never requests (the stale-list floor)
    always           requests at every step (the fresh-list ceiling)
    random(p)        requests with probability p, seeded
    periodic(m)      requests once the list is m steps old
    consistency(θ)   requests when a consistency measure is >= θ (LSC4Rec's policy)
    learned          a logistic regression on device-side features, thresholded
    budget           wraps any policy: at most r requests in any w consecutive steps

A threshold turns into a target request rate by quantiles over validation-stream scores
(`calibrate_threshold`, `calibrate_rule`); `ThresholdRule` can randomise exact ties so a
score with few distinct values (e.g. top-k overlap) still hits the target rate.

Letters used in shape comments:
    U  users / examples   N  list length   F  features   K  recent clicks
"""

from __future__ import annotations

import copy
from collections import deque
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

import numpy as np

from device.consistency import (
    MEASURES,
    ConsistencyMeasure,
    KendallDisagreement,
    MeanRankDifference,
    RBODisagreement,
    TopKDisagreement,
    build_measure,
)
from device.fusion import as_batch, list_ranks, sigmoid


@dataclass(frozen=True)
class PolicyObservation:
    """What the device knows at one stream step, before it shows a list.

    Attributes:
        step: 0-based stream step (clicks observed since the session started).
        steps_since_request: age of the cached list in steps (= clicks since it was fetched).
        items: `[N]` cached candidate ids, LLM order (0 = padding).
        llm_scores: `[N]` their LLM log-probabilities.
        srm_logits: `[N]` the SRM's logits for them, from the up-to-date history.
        history: `[H]` the user's clicks so far, oldest first.
    """

    step: int
    steps_since_request: int
    items: np.ndarray
    llm_scores: np.ndarray
    srm_logits: np.ndarray
    history: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __post_init__(self) -> None:
        if self.step < 0 or self.steps_since_request < 0:
            raise ValueError(
                f"step and steps_since_request must be >= 0, got {self.step}, "
                f"{self.steps_since_request}"
            )
        shapes = {np.shape(self.items), np.shape(self.llm_scores), np.shape(self.srm_logits)}
        if len(shapes) != 1 or len(np.shape(self.items)) != 1:
            raise ValueError(f"items, llm_scores and srm_logits must be equal-length 1-D: {shapes}")

    @cached_property
    def valid(self) -> np.ndarray:
        """`[N]` bool: slots that may be shown (not padding, not already clicked)."""
        items = np.asarray(self.items, dtype=np.int64)
        return (items != 0) & ~np.isin(items, np.asarray(self.history, dtype=np.int64))

    def recent(self, k: int) -> np.ndarray:
        """`[k]` the last `k` clicks, oldest first, left-padded with 0."""
        tail = np.asarray(self.history, dtype=np.int64)[-k:] if k > 0 else np.zeros(0, np.int64)
        return np.concatenate([np.zeros(k - tail.size, dtype=np.int64), tail])


# ---------------------------------------------------------------- thresholds and calibration


def _check_rate(target_rate: float) -> None:
    if not 0.0 <= target_rate <= 1.0:
        raise ValueError(f"target_rate must be in [0, 1], got {target_rate}")


def _check_scores(scores: Any) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if scores.size == 0:
        raise ValueError("need at least one score to calibrate on")
    if not np.isfinite(scores).all():
        raise ValueError("calibration scores must be finite")
    return scores


def calibrate_threshold(scores: Any, target_rate: float) -> float:
    """The threshold θ whose rate `mean(scores >= θ)` is closest to `target_rate`.

    Candidates are the distinct score values (a θ between two equal scores would be
    meaningless) plus `+inf` (rate 0). With many distinct values this is the
    `1 − target_rate` quantile; with heavy ties it is the closest achievable rate — use
    `calibrate_rule` to split a tie and hit the target exactly.

    Args:
        scores: validation-stream scores of the policy (any shape).
        target_rate: wanted share of steps with a request, in [0, 1].
    Raises:
        ValueError: empty or non-finite scores, or a rate outside [0, 1].
    """
    _check_rate(target_rate)
    scores = _check_scores(scores)
    ascending = np.sort(scores)
    values = np.unique(ascending)  # [V] ascending
    rates = 1.0 - np.searchsorted(ascending, values, side="left") / ascending.size  # [V]
    values = np.append(values, np.inf)
    rates = np.append(rates, 0.0)
    return float(values[np.argmin(np.abs(rates - target_rate))])


@dataclass(frozen=True)
class ThresholdRule:
    """Request when `score > threshold`, and with probability `tie_prob` when it is equal.

    `tie_prob = 1` gives the plain rule `score >= threshold`.
    """

    threshold: float = 0.0  # θ, on the policy's score scale
    tie_prob: float = 1.0  # share of exact ties that request; splits a tie to hit a rate

    def __post_init__(self) -> None:
        if np.isnan(self.threshold):
            raise ValueError("threshold must not be NaN")
        if not 0.0 <= self.tie_prob <= 1.0:
            raise ValueError(f"tie_prob must be in [0, 1], got {self.tie_prob}")

    def decide(self, scores: Any, rng: np.random.Generator) -> np.ndarray:
        """`[U]` bool decisions for `[U]` scores; the rng is drawn only for partial ties."""
        scores = np.asarray(scores, dtype=np.float64)
        above = scores > self.threshold
        tie = scores == self.threshold
        if 0.0 < self.tie_prob < 1.0 and tie.any():
            tie &= rng.random(scores.shape) < self.tie_prob
        elif self.tie_prob == 0.0:
            tie[...] = False
        return above | tie


def calibrate_rule(scores: Any, target_rate: float) -> ThresholdRule:
    """A `ThresholdRule` whose expected rate on `scores` equals `target_rate` exactly.

    θ is the score at the target quantile; of the scores equal to θ, the share needed to
    make up the rate requests: `tie_prob = (target·n − #(s > θ)) / #(s = θ)`.

    Raises:
        ValueError: empty or non-finite scores, or a rate outside [0, 1].
    """
    _check_rate(target_rate)
    scores = _check_scores(scores)
    descending = np.sort(scores)[::-1]
    wanted = target_rate * descending.size
    index = min(int(np.floor(wanted)), descending.size - 1)
    threshold = float(descending[index])
    above = int((scores > threshold).sum())
    ties = int((scores == threshold).sum())
    tie_prob = float(np.clip((wanted - above) / ties, 0.0, 1.0))
    return ThresholdRule(threshold, tie_prob)


# ---------------------------------------------------------------- the policies


@dataclass(eq=False)
class RequestPolicy:
    """Base of the request policies.

    Subclasses set `name`, implement `decide`, and keep any per-user state in `reset`.
    `seed` and the key given to `spawn` seed the policy's random stream, so users differ
    and a replay of the same users draws the same numbers.
    """

    name: ClassVar[str] = ""
    seed: int = field(default=0, kw_only=True)  # base seed of this policy's random stream

    def __post_init__(self) -> None:
        self._key = 0
        self.reset()

    @property
    def knob(self) -> float | None:
        """The value a request-rate curve sweeps (None when the policy has none)."""
        return None

    @property
    def label(self) -> str:
        """Short description for tables and plots, e.g. `periodic(m=5)`."""
        return self.name if self.knob is None else f"{self.name}({self.knob:g})"

    def reset(self) -> None:
        """Start over: a fresh random stream and no remembered requests."""
        self.rng = np.random.default_rng([self.seed, self._key])

    def spawn(self, key: int) -> RequestPolicy:
        """A reset copy for one user; `key` (e.g. the user id) picks its random stream."""
        clone = copy.deepcopy(self)
        clone._key = int(key)
        clone.reset()
        return clone

    def decide(self, obs: PolicyObservation) -> bool:
        """True to request a fresh list at this step."""
        raise NotImplementedError


@dataclass(eq=False)
class NeverPolicy(RequestPolicy):
    """Never requests: every step reranks the initial list."""

    name: ClassVar[str] = "never"

    def decide(self, obs: PolicyObservation) -> bool:
        return False


@dataclass(eq=False)
class AlwaysPolicy(RequestPolicy):
    """Requests at every step: the cloud always sees the up-to-date history."""

    name: ClassVar[str] = "always"

    def decide(self, obs: PolicyObservation) -> bool:
        return True


@dataclass(eq=False)
class RandomPolicy(RequestPolicy):
    """Requests with probability `p` at each step (LSC4Rec's baseline at a matched rate)."""

    name: ClassVar[str] = "random"
    p: float = 0.1  # request probability per step = the expected request rate

    def __post_init__(self) -> None:
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {self.p}")
        super().__post_init__()

    @property
    def knob(self) -> float:
        return self.p

    def decide(self, obs: PolicyObservation) -> bool:
        return bool(self.rng.random() < self.p)


@dataclass(eq=False)
class PeriodicPolicy(RequestPolicy):
    """Requests once the cached list is `m` steps old: `steps_since_request >= m`.

    With requests that succeed, they fall on steps m, 2m, 3m, … of the stream.
    """

    name: ClassVar[str] = "periodic"
    m: int = 5  # steps between requests; rate ≈ 1 / m

    def __post_init__(self) -> None:
        if self.m < 1:
            raise ValueError(f"m must be >= 1, got {self.m}")
        super().__post_init__()

    @property
    def knob(self) -> float:
        return float(self.m)

    def decide(self, obs: PolicyObservation) -> bool:
        return obs.steps_since_request >= self.m


@dataclass(eq=False)
class ConsistencyPolicy(RequestPolicy):
    """Requests when the list's disagreement score reaches θ (LSC4Rec's intelligent request).

    `decide(obs)` is `measure(srm_logits, valid) >= threshold` (exact ties request with
    probability `tie_prob`, 1 by default). `calibrate` sets θ for a target request rate.
    """

    name: ClassVar[str] = "consistency"
    measure: ConsistencyMeasure | str = "rank_diff"  # a measure or its name in MEASURES
    threshold: float = 0.0  # θ on the measure's scale; higher = fewer requests
    tie_prob: float = 1.0  # share of scores exactly at θ that request

    def __post_init__(self) -> None:
        if isinstance(self.measure, str):
            self.measure = build_measure(self.measure)
        ThresholdRule(self.threshold, self.tie_prob)  # validates both
        super().__post_init__()

    @property
    def knob(self) -> float:
        return self.threshold

    @property
    def label(self) -> str:
        return f"{self.name}[{self.measure.name}]({self.threshold:g})"

    def score(self, obs: PolicyObservation) -> float:
        """The measure's disagreement score for this step."""
        return float(self.measure(obs.srm_logits, obs.valid)[0])

    def decide(self, obs: PolicyObservation) -> bool:
        rule = ThresholdRule(self.threshold, self.tie_prob)
        return bool(rule.decide(np.array([self.score(obs)]), self.rng)[0])

    def calibrate(self, scores: Any, target_rate: float, split_ties: bool = True) -> None:
        """Set θ (and `tie_prob`) so that `target_rate` of the `scores` would request.

        Args:
            scores: this measure's scores over a validation stream.
            target_rate: wanted request rate in [0, 1].
            split_ties: randomise exact ties to hit the rate (else closest `score >= θ`).
        """
        if split_ties:
            rule = calibrate_rule(scores, target_rate)
            self.threshold, self.tie_prob = rule.threshold, rule.tie_prob
        else:
            self.threshold, self.tie_prob = calibrate_threshold(scores, target_rate), 1.0


@dataclass(eq=False)
class BudgetPolicy(RequestPolicy):
    """At most `max_requests` requests in any `window` consecutive steps, on top of `inner`.

    The inner policy is asked at every step (so its own state moves on as if unwrapped);
    its request is let through only while the window still has budget. Approved requests
    count against the budget whether or not the fetch then succeeds: the budget bounds
    traffic, and a failed call costs traffic too.
    """

    name: ClassVar[str] = "budget"
    inner: RequestPolicy = field(default_factory=lambda: AlwaysPolicy())  # the policy to cap
    max_requests: int = 1  # r: requests allowed per window
    window: int = 10  # w: window length in steps

    def __post_init__(self) -> None:
        if self.max_requests < 0:
            raise ValueError(f"max_requests must be >= 0, got {self.max_requests}")
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")
        super().__post_init__()

    @property
    def knob(self) -> float | None:
        return self.inner.knob

    @property
    def label(self) -> str:
        return f"{self.inner.label}+budget({self.max_requests}/{self.window})"

    def reset(self) -> None:
        super().reset()
        self.inner.reset()
        self._approved: deque[int] = deque()

    def spawn(self, key: int) -> BudgetPolicy:
        clone = super().spawn(key)
        clone.inner = self.inner.spawn(key)
        return clone

    def decide(self, obs: PolicyObservation) -> bool:
        wanted = self.inner.decide(obs)
        while self._approved and self._approved[0] <= obs.step - self.window:
            self._approved.popleft()  # left the window [step − w + 1, step]
        if not wanted or len(self._approved) >= self.max_requests:
            return False
        self._approved.append(obs.step)
        return True


# ---------------------------------------------------------------- the learned policy

FEATURE_NAMES: tuple[str, ...] = (
    "rank_diff",  # LSC4Rec's mean |Δrank| with its missing-slot penalty
    "kendall",  # (1 − τ) / 2
    "topk",  # 1 − top-k overlap
    "rbo",  # 1 − RBO
    "log_list_age",  # log(1 + steps since the list was fetched) = clicks since the request
    "srm_max_prob",  # max σ(s) over the valid slots: how sure the SRM is of its top item
    "srm_entropy",  # entropy of softmax(s) over the valid slots, divided by log n
    "recent_overlap",  # share of the last K clicks that are items of the cached list
    "valid_fraction",  # valid slots / list width: how much of the list is left
)


@dataclass(frozen=True)
class FeatureConfig:
    """How device-side features for the learned policy are computed."""

    recent_k: int = 5  # K: clicks looked back on for the overlap with the list
    top_k: int = 10  # depth of the top-k overlap measure (the shown list)
    rbo_p: float = 0.9  # persistence of the RBO measure

    def __post_init__(self) -> None:
        if self.recent_k < 1:
            raise ValueError(f"recent_k must be >= 1, got {self.recent_k}")
        TopKDisagreement(self.top_k)  # validates top_k
        RBODisagreement(self.rbo_p)  # validates rbo_p

    def measures(self) -> dict[str, ConsistencyMeasure]:
        return {
            MeanRankDifference.name: MeanRankDifference(),
            KendallDisagreement.name: KendallDisagreement(),
            TopKDisagreement.name: TopKDisagreement(self.top_k),
            RBODisagreement.name: RBODisagreement(self.rbo_p),
        }


def _srm_confidence(srm_logits: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`[U]` max σ(s) and normalised entropy of softmax(s) over each row's valid slots."""
    n = valid.sum(axis=1)  # [U]
    max_prob = np.where(valid, sigmoid(srm_logits), 0.0).max(axis=1)  # [U]
    shifted = np.where(valid, srm_logits, -np.inf)
    top = np.where(n > 0, shifted.max(axis=1), 0.0)[:, None]  # [U, 1]
    e = np.where(valid, np.exp(shifted - top), 0.0)  # [U, N]
    prob = e / np.maximum(e.sum(axis=1, keepdims=True), 1e-300)
    entropy = -(prob * np.log(np.where(prob > 0, prob, 1.0))).sum(axis=1)  # [U]
    return max_prob, np.where(n > 1, entropy / np.log(np.maximum(n, 2)), 0.0)


def request_features(
    items: Any,
    srm_logits: Any,
    valid: Any,
    recent: Any,
    list_age: Any,
    config: FeatureConfig | None = None,
) -> np.ndarray:
    """The learned policy's `[U, F]` features (columns in `FEATURE_NAMES` order).

    Args:
        items: `[U, N]` cached candidate ids.
        srm_logits: `[U, N]` SRM logits of those items.
        valid: `[U, N]` bool, slots that may be shown.
        recent: `[U, K]` the last K clicks (0 = none).
        list_age: `[U]` steps since each list was fetched.
        config: feature settings (defaults if None).
    """
    config = FeatureConfig() if config is None else config
    items = as_batch(items, np.int64)
    logits = as_batch(srm_logits)
    valid = as_batch(valid, bool)
    recent = as_batch(recent, np.int64)
    r_llm, r_srm, n = list_ranks(logits, valid)
    scores = [m.score(r_llm, r_srm, n) for m in config.measures().values()]  # 4 × [U]
    max_prob, entropy = _srm_confidence(logits, valid)
    in_list = (recent[:, :, None] == items[:, None, :]).any(axis=2) & (recent != 0)  # [U, K]
    age = np.log1p(np.asarray(list_age, dtype=np.float64).reshape(-1))
    columns = [*scores, age, max_prob, entropy, in_list.mean(axis=1), n / items.shape[1]]
    return np.stack(columns, axis=1)  # [U, F]


def observation_features(obs: PolicyObservation, config: FeatureConfig | None = None) -> np.ndarray:
    """`[F]` features of one observation (see `request_features`)."""
    config = FeatureConfig() if config is None else config
    features = request_features(
        obs.items,
        obs.srm_logits,
        obs.valid,
        obs.recent(config.recent_k),
        [obs.steps_since_request],
        config,
    )
    return features[0]


def request_gain_labels(rank_cached: Any, rank_fresh: Any) -> np.ndarray:
    """Training labels: would a fresh list have ranked the target strictly higher?

    Args:
        rank_cached: `[U]` 0-based target rank in the final list from the cached candidates
            (inf when absent).
        rank_fresh: `[U]` the same with a freshly requested list.
    Returns:
        `[U]` float 0/1.
    """
    return (np.asarray(rank_fresh, np.float64) < np.asarray(rank_cached, np.float64)).astype(
        np.float64
    )


@dataclass
class LogisticRegression:
    """L2-regularised logistic regression on standardised features, fitted by Newton steps.

    `p(y = 1 | x) = σ(b + wᵀz)`, `z = (x − μ) / σ_x`; minimises
    `mean BCE + (l2 / 2)·‖w‖²` (the bias is not penalised). A few features and Newton's
    method converge in a handful of exact steps; l2 > 0 keeps them finite on separable data.
    """

    l2: float = 1e-2  # ridge strength; keeps weights finite when the classes separate
    max_iter: int = 50  # Newton steps; convergence usually takes < 15
    tol: float = 1e-8  # stop when no weight moves by more than this
    mean: np.ndarray | None = None  # [F] feature means (set by fit)
    scale: np.ndarray | None = None  # [F] feature stds (1 for constant features)
    weights: np.ndarray | None = None  # [F + 1] bias first

    def __post_init__(self) -> None:
        if self.l2 <= 0.0:
            raise ValueError(f"l2 must be > 0, got {self.l2}")
        if self.max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {self.max_iter}")

    def _design(self, features: Any) -> np.ndarray:
        z = (np.asarray(features, np.float64) - self.mean) / self.scale  # [U, F]
        return np.concatenate([np.ones((z.shape[0], 1)), z], axis=1)  # [U, F + 1]

    def fit(self, features: Any, labels: Any) -> LogisticRegression:
        """Fit on `[U, F]` features and `[U]` 0/1 labels; returns self."""
        x = np.asarray(features, np.float64)
        y = np.asarray(labels, np.float64).reshape(-1)
        if x.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
            raise ValueError(f"need [U, F] features and [U] labels, got {x.shape} and {y.shape}")
        if not np.isin(y, (0.0, 1.0)).all():
            raise ValueError("labels must be 0 or 1")
        self.mean, std = x.mean(axis=0), x.std(axis=0)
        self.scale = np.where(std > 0, std, 1.0)
        design = self._design(x)  # [U, F + 1]
        penalty = np.full(design.shape[1], self.l2)
        penalty[0] = 0.0  # the bias is free
        w = np.zeros(design.shape[1])
        for _ in range(self.max_iter):
            p = sigmoid(design @ w)  # [U]
            grad = design.T @ (p - y) / len(y) + penalty * w  # [F + 1]
            hess = (design.T * (p * (1 - p))) @ design / len(y) + np.diag(penalty + 1e-12)
            step = np.linalg.solve(hess, grad)
            w -= step
            if np.abs(step).max() < self.tol:
                break
        self.weights = w
        return self

    def predict_proba(self, features: Any) -> np.ndarray:
        """`[U]` probabilities for `[U, F]` features.

        Raises:
            RuntimeError: the model has not been fitted.
        """
        if self.weights is None:
            raise RuntimeError("LogisticRegression is not fitted; call fit first")
        return sigmoid(self._design(np.atleast_2d(features)) @ self.weights)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe parameters (no pickle needed to ship them to a device)."""
        arrays = {k: None if v is None else np.asarray(v).tolist() for k, v in self._arrays()}
        return {"l2": self.l2, "max_iter": self.max_iter, "tol": self.tol, **arrays}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LogisticRegression:
        """Inverse of `to_dict`."""
        arrays = {
            k: None if data.get(k) is None else np.asarray(data[k], np.float64)
            for k in ("mean", "scale", "weights")
        }
        return cls(l2=data["l2"], max_iter=data["max_iter"], tol=data["tol"], **arrays)

    def _arrays(self) -> list[tuple[str, np.ndarray | None]]:
        return [("mean", self.mean), ("scale", self.scale), ("weights", self.weights)]


@dataclass(eq=False)
class LearnedPolicy(RequestPolicy):
    """Requests when a classifier says a fresh list would raise the target's rank.

    `decide(obs)` is `P(gain | features(obs)) >= threshold` (ties split by `tie_prob`).
    Train with `fit` on validation-stream features and `request_gain_labels`; set the
    threshold by `calibrate` to hit a target request rate instead of the default 0.5.
    """

    name: ClassVar[str] = "learned"
    model: LogisticRegression = field(default_factory=LogisticRegression)  # the classifier
    feature_config: FeatureConfig = field(default_factory=FeatureConfig)  # how inputs are built
    threshold: float = 0.5  # on the predicted probability; 0.5 = the Bayes rule
    tie_prob: float = 1.0  # share of probabilities exactly at θ that request

    def __post_init__(self) -> None:
        ThresholdRule(self.threshold, self.tie_prob)  # validates both
        super().__post_init__()

    @property
    def knob(self) -> float:
        return self.threshold

    def fit(self, features: Any, labels: Any) -> LearnedPolicy:
        """Train the classifier on `[U, F]` features (`request_features`) and `[U]` labels."""
        self.model.fit(features, labels)
        return self

    def probability(self, obs: PolicyObservation) -> float:
        """The classifier's probability that a fresh list would help at this step."""
        return float(self.model.predict_proba(observation_features(obs, self.feature_config))[0])

    def decide(self, obs: PolicyObservation) -> bool:
        rule = ThresholdRule(self.threshold, self.tie_prob)
        return bool(rule.decide(np.array([self.probability(obs)]), self.rng)[0])

    def calibrate(self, features: Any, target_rate: float) -> None:
        """Set the threshold so that `target_rate` of the `[U, F]` feature rows would request."""
        rule = calibrate_rule(self.model.predict_proba(features), target_rate)
        self.threshold, self.tie_prob = rule.threshold, rule.tie_prob


POLICIES: dict[str, type[RequestPolicy]] = {
    cls.name: cls
    for cls in (
        NeverPolicy,
        AlwaysPolicy,
        RandomPolicy,
        PeriodicPolicy,
        ConsistencyPolicy,
        BudgetPolicy,
        LearnedPolicy,
    )
}


def build_policy(name: str, **kwargs: Any) -> RequestPolicy:
    """The policy registered under `name`, built with its fields (e.g. `p=0.1, seed=3`).

    Raises:
        ValueError: unknown name (the message lists the valid ones), unknown field or bad value.
    """
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; valid names: {', '.join(sorted(POLICIES))}")
    try:
        return POLICIES[name](**kwargs)
    except TypeError as err:
        raise ValueError(f"bad arguments for policy {name!r}: {err}") from None


__all__ = [
    "FEATURE_NAMES",
    "MEASURES",
    "POLICIES",
    "AlwaysPolicy",
    "BudgetPolicy",
    "ConsistencyPolicy",
    "FeatureConfig",
    "LearnedPolicy",
    "LogisticRegression",
    "NeverPolicy",
    "PeriodicPolicy",
    "PolicyObservation",
    "RandomPolicy",
    "RequestPolicy",
    "ThresholdRule",
    "build_policy",
    "calibrate_rule",
    "calibrate_threshold",
    "observation_features",
    "request_features",
    "request_gain_labels",
]
