"""One user's device: history, the SRM's carried state, the cached list and the request policy.

A stream step on the device (docs/design.md §3) is

    outcome = session.serve_step(fetch)  # ask the policy, maybe fetch, rerank, show top-k
    session.observe(click)               # history grows, the SRM state takes its step

`device.driver.run_stream` runs these two over a user's stream; the session replay and the
live fleet both go through it.

`fetch` is any callable `fetch(history, exclude=older)` returning a `CandidateList`, or a
result object with `ok` and `candidates` attributes such as the gRPC client's `FetchResult` (so
`session.request_fresh(client.fetch)` works as is). `history` is the last `request_history`
clicks, what the cloud model reads; `exclude` the user's older consumed items, which the list
must not hold either, so every list arrives with N items the user has not consumed. It may fail, by returning None or a
result that is not ok, or by raising one of the session's recoverable errors (`FetchError`,
`ConnectionError`, `TimeoutError` by default); the session then keeps
reranking its cached list, waits a doubling number of steps before asking again, and never
loses a click: clicks go to the history and the SRM state whatever happens to requests.

The SRM sits behind `SRMRunner` (`init_state`, `step_with_surprise`, `score_items`): on a device
the onnxruntime step graphs of TTT4Rec or GRU4Rec (`OnnxStepModel` behind `StatefulRunner`);
offline, the torch models behind the adapters of `seqrec.runners` (TTT4Rec and GRU4Rec
stepping their state; SASRec and DIN re-reading the history). The session itself needs numpy only.

The runners, the cached list and the session stay in one module: the session's contract
(never lose a click, keep recommending without the cloud) spans all three, and each piece is
short.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from device.fusion import Fusion, RankSigmoidFusion, rerank_valid
from device.policies import AlwaysPolicy, PolicyObservation, RequestPolicy
from device.policies.surprise import click_row, empty_rows, list_columns
from shared.candidates import CandidateList, request_parts

# fetch(history, exclude=older) -> CandidateList | a FetchResult-like | None
FetchFn = Callable[..., Any]


class FetchError(RuntimeError):
    """A candidate request failed in a way the device should ride out (raise it from `fetch`)."""


def _unwrap(result: Any) -> tuple[CandidateList | None, FetchError | None]:
    """The usable list in a fetch's return value, or None and why not.

    Raises:
        TypeError: neither a `CandidateList`, an object with `ok`/`candidates`, nor None.
    """
    if result is None:
        return None, FetchError("fetch returned None")
    if not isinstance(result, CandidateList):
        if not (hasattr(result, "ok") and hasattr(result, "candidates")):
            raise TypeError(f"fetch returned a {type(result).__name__}, not a CandidateList")
        if not result.ok or result.candidates is None:
            return None, FetchError(getattr(result, "message", "") or "fetch failed")
        result = result.candidates
    if not isinstance(result, CandidateList):
        raise TypeError(f"fetch result holds a {type(result).__name__}, not a CandidateList")
    if len(result) == 0:
        return None, FetchError("fetch returned an empty list")
    return result, None


# ---------------------------------------------------------------- SRM adapters


class SRMRunner(Protocol):
    """What the session needs from an SRM, whatever runs it."""

    def init_state(self) -> Any:
        """The carried state of a user with no clicks."""

    def step(self, state: Any, item: int) -> Any:
        """The state after one more click `item`."""

    def step_with_surprise(self, state: Any, history: np.ndarray, item: int) -> tuple[Any, Any]:
        """`step`, plus the click's `[5]` surprise (`SURPRISE_COLUMNS`) before it was taken
        in; `history` is the clicks before `item`."""

    def score_items(self, state: Any, history: np.ndarray, items: np.ndarray) -> np.ndarray:
        """`[C]` logits of `items` given the state (or, for stateless models, the history)."""

    @property
    def num_items(self) -> int | None:
        """The catalogue size (items 1..num_items), None if the model does not say."""


class StatefulRunner:
    """Adapter for a model that carries a state: `init_state(B)`, `step_with_surprise(state,
    items[B])` and `score_features(features, items)`, in numpy (`OnnxStepModel`).

    The carried state is `(model_state, F_s)`; one click costs one step, whatever the history
    length. (The torch models have their adapters in `seqrec.runners`.)
    """

    stateful = True

    def __init__(self, model: Any) -> None:
        for method in ("init_state", "step_with_surprise", "score_features"):
            if not callable(getattr(model, method, None)):
                raise ValueError(f"{type(model).__name__} has no {method}(); it carries no state")
        self.model = model
        self.num_items = getattr(model, "num_items", None)

    def init_state(self) -> tuple[Any, np.ndarray]:
        state = self.model.init_state(1)
        return state, state.feature

    def step(self, state: tuple[Any, np.ndarray], item: int) -> tuple[Any, np.ndarray]:
        new_state, features, _ = self.model.step_with_surprise(state[0], np.array([item]))
        return new_state, features

    def step_with_surprise(
        self, state: tuple[Any, np.ndarray], history: np.ndarray, item: int
    ) -> tuple[tuple[Any, np.ndarray], np.ndarray]:
        new_state, features, surprise = self.model.step_with_surprise(state[0], np.array([item]))
        return (new_state, features), np.asarray(surprise[0], np.float64)

    def score_items(
        self, state: tuple[Any, np.ndarray], history: np.ndarray, items: np.ndarray
    ) -> np.ndarray:
        candidates = np.asarray(items, dtype=np.int64)[None]  # [1, C]
        return np.asarray(self.model.score_features(state[1], candidates)[0], np.float64)

    def step_and_score(
        self, state: tuple[Any, np.ndarray], history: np.ndarray, item: int, items: np.ndarray
    ) -> tuple[tuple[Any, np.ndarray], np.ndarray, np.ndarray]:
        """`step_with_surprise`, plus `score_items` of `items` under the new state, in one
        graph run when the model has a fused click graph (`OnnxStepModel.click`)."""
        candidates = np.asarray(items, dtype=np.int64)[None]  # [1, C]
        new_state, features, surprise, scores = self.model.click(
            state[0], np.array([item]), candidates
        )
        return (new_state, features), np.asarray(surprise[0], np.float64), scores[0]


# ---------------------------------------------------------------- the session


@dataclass(frozen=True)
class SessionConfig:
    """Knobs of one device session."""

    top_k: int = 10  # items shown per step (recommend's default k)
    request_history: int = 50  # L: most recent clicks sent with a request (docs/design.md §3)
    backoff_steps: int = 1  # steps to wait after a failed request before the next try
    max_backoff_steps: int = 16  # the wait doubles after each failure up to this

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.request_history < 1:
            raise ValueError(f"request_history must be >= 1, got {self.request_history}")
        if self.backoff_steps < 0:
            raise ValueError(f"backoff_steps must be >= 0, got {self.backoff_steps}")
        if self.max_backoff_steps < self.backoff_steps:
            raise ValueError(
                f"max_backoff_steps must be >= backoff_steps={self.backoff_steps}, "
                f"got {self.max_backoff_steps}"
            )


@dataclass(frozen=True)
class CachedList:
    """The candidate list the device holds and the step it arrived at."""

    candidates: CandidateList
    fetched_at: int  # session step when the list was stored
    clicks_at_fetch: int = 0  # clicks in the history when the list was stored

    @property
    def items(self) -> np.ndarray:
        return self.candidates.items

    @property
    def scores(self) -> np.ndarray:
        return self.candidates.scores

    @property
    def ranks(self) -> np.ndarray:
        """`[N]` 0-based LLM ranks (lists arrive best first)."""
        return np.arange(len(self.candidates))


@dataclass(frozen=True)
class StepOutcome:
    """What one stream step did and showed.

    Attributes:
        shown: the top-k items shown (the SRM's own ranking while no list is held).
        requested: a fresh list was requested at this step.
        succeeded: ... and it arrived (False when no request was made).
        list_step: the session step the shown list was fetched at; -1 = no list held.
        step: the session step of this outcome.
    """

    shown: np.ndarray
    requested: bool
    succeeded: bool
    list_step: int
    step: int

    @property
    def failed(self) -> bool:
        return self.requested and not self.succeeded

    @property
    def list_age(self) -> int | None:
        """Steps since the shown list was fetched (None without a list)."""
        return None if self.list_step < 0 else self.step - self.list_step


@dataclass
class SessionStats:
    """Request counters of one session (the initial list counts as a request too)."""

    requests: int = 0  # fetch calls made
    failures: int = 0  # of which failed (raised a recoverable error, returned None or empty)


class DeviceSession:
    """One user's device state and the per-step logic.

    Args:
        runner: the SRM behind its adapter (`StatefulRunner`, or `seqrec.runners.make_runner`).
        policy: decides when to request; `AlwaysPolicy()` if None.
        fusion: merges LLM ranks and SRM scores; LSC4Rec's α = 0.5 fusion if None.
        config: session knobs.
        history: clicks before the session starts (folded into the SRM state, not counted
            as steps).
        candidates: the initial cached list, if the device already has one.
        recoverable: exception types from `fetch` that mean "keep the cache, retry later";
            anything else is a bug and propagates.
    """

    def __init__(
        self,
        runner: SRMRunner,
        policy: RequestPolicy | None = None,
        fusion: Fusion | None = None,
        config: SessionConfig | None = None,
        history: Iterable[int] = (),
        candidates: CandidateList | None = None,
        recoverable: tuple[type[BaseException], ...] = (FetchError, ConnectionError, TimeoutError),
    ) -> None:
        self.runner = runner
        self.policy = AlwaysPolicy() if policy is None else policy
        self.fusion = RankSigmoidFusion() if fusion is None else fusion
        self.config = SessionConfig() if config is None else config
        self.recoverable = recoverable
        self.stats = SessionStats()
        self.step = 0  # stream steps (clicks) since the session started
        self.cached: CachedList | None = None
        self.last_error: BaseException | None = None
        self.last_fetch: Any = None  # what the last fetch call returned
        self._history: list[int] = []
        # clicked[i]: item i is in the history (a lookup per candidate instead of a search of
        # the whole history at every step); None when the runner does not know the catalogue
        size = getattr(runner, "num_items", None)
        self._clicked = np.zeros(int(size) + 1, dtype=bool) if size else None
        self._state = runner.init_state()
        self._logits: np.ndarray | None = None  # SRM logits of the cached list, this step
        self._surprise: list[np.ndarray] = []  # one CLICK_COLUMNS row per click
        self._backoff = self.config.backoff_steps
        self._retry_at = 0  # first step at which a request may be made again
        for item in history:
            self._fold_click(item)
        if candidates is not None:
            self.update_candidates(candidates)

    @property
    def history(self) -> np.ndarray:
        """`[H]` every click so far, oldest first (a copy)."""
        return np.asarray(self._history, dtype=np.int64)

    @property
    def state(self) -> Any:
        """The SRM runner's carried state (None for models that re-read the history)."""
        return self._state

    def _fold_click(self, item: int) -> None:
        item = int(item)
        if item < 1:
            raise ValueError(f"clicked item ids are >= 1, got {item}")
        held = None if self.cached is None else (self.cached.items, self.srm_logits())
        # History first: if the SRM step raised, the click would still be kept.
        self._history.append(item)
        seen_before = self._mark_clicked(item)
        self._logits = None
        if held is not None and hasattr(self.runner, "step_and_score"):
            # one graph run: the step, and the held list's scores for the next decision
            self._state, surprise, logits = self.runner.step_and_score(
                self._state, self._history[:-1], item, held[0]
            )
            self._logits = np.asarray(logits, np.float64)
        else:
            before = np.asarray(self._history[:-1], dtype=np.int64)  # a re-reading model's input
            self._state, surprise = self.runner.step_with_surprise(self._state, before, item)
        self._surprise.append(self._click_row(item, surprise, held, seen_before))

    def _mark_clicked(self, item: int) -> bool:
        """Record `item` in the clicked table; whether it had been clicked before."""
        table = self._clicked
        if table is None or item >= len(table):
            return item in self._history[:-1]
        seen, table[item] = bool(table[item]), True
        return seen

    def _click_row(
        self,
        item: int,
        surprise: np.ndarray,
        held: tuple[np.ndarray, np.ndarray] | None,
        seen_before: bool,
    ) -> np.ndarray:
        """The click's surprise row, with its rank and position in the list held at it (the
        list's showable slots as they were before this click)."""
        if held is None:
            return click_row(surprise)
        items, logits = held
        valid = self.showable(items)
        if not seen_before:
            valid |= items == item  # showable until this very click
        part = list_columns([item], [surprise[0]], items[None], logits[None], valid[None])
        return click_row(surprise, part[0])

    def surprise_rows(self) -> np.ndarray:
        """`[A, S]` rows of the clicks since the cached list was fetched (the last click's
        alone when none came since, or while no list is held; empty before any click)."""
        start = len(self._surprise) if self.cached is None else self.cached.clicks_at_fetch
        rows = self._surprise[start:] or self._surprise[-1:]
        return np.stack(rows) if rows else empty_rows()

    def observe(self, click: int) -> None:
        """Record one click: the history grows and the SRM state takes its step.

        Raises:
            ValueError: `click` is not a valid item id (>= 1).
        """
        self._fold_click(click)
        self.step += 1

    # ------------------------------------------------------------ the cached list

    def srm_logits(self) -> np.ndarray:
        """`[N]` SRM logits of the cached list's items (computed once per step)."""
        if self.cached is None:
            return np.zeros(0)
        if self._logits is None:
            self._logits = self.runner.score_items(self._state, self.history, self.cached.items)
        return self._logits

    def observation(self) -> PolicyObservation:
        """What the policy sees now.

        Raises:
            RuntimeError: no candidate list is cached yet.
        """
        if self.cached is None:
            raise RuntimeError("no candidate list cached yet")
        return PolicyObservation(
            step=self.step,
            steps_since_request=self.step - self.cached.fetched_at,
            items=self.cached.items,
            llm_scores=self.cached.scores,
            srm_logits=self.srm_logits(),
            history=self.history,
            surprise=self.surprise_rows(),
        )

    def recommend(self, k: int | None = None) -> np.ndarray:
        """Top-`k` items (default `config.top_k`): the cached list reranked, history removed.

        While no list is cached (the cloud was never reached), the SRM ranks the whole
        catalogue instead (`fallback`): a device always shows something.
        """
        k = self.config.top_k if k is None else k
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if self.cached is None:
            return self.fallback(k)
        valid = self.showable(self.cached.items)
        age = len(self._history) - self.cached.clicks_at_fetch  # clicks since it was made
        return rerank_valid(self.cached.candidates, self.srm_logits(), valid, self.fusion, k, age)

    def showable(self, items: np.ndarray) -> np.ndarray:
        """`[N]` bool: the slots of `items` that are not padding and not clicked before."""
        table = self._clicked
        if table is not None and (items.size == 0 or items.max() < len(table)):
            return (items != 0) & ~table[items]
        return (items != 0) & ~np.isin(items, np.asarray(self._history, dtype=np.int64))

    def fallback(self, k: int) -> np.ndarray:
        """Top-`k` of the SRM over every item outside the history (empty if the runner does
        not know its catalogue size)."""
        num_items = getattr(self.runner, "num_items", None)
        if not num_items:
            return np.zeros(0, dtype=np.int64)
        items = np.arange(1, num_items + 1, dtype=np.int64)
        logits = np.asarray(self.runner.score_items(self._state, self.history, items), float)
        logits[np.asarray(self._history, dtype=np.int64) - 1] = -np.inf  # never a clicked item
        order = np.argsort(-logits, kind="stable")[:k]
        return items[order[np.isfinite(logits[order])]]

    def update_candidates(self, candidates: CandidateList) -> None:
        """Cache a new list, stamped with the current step.

        Raises:
            TypeError: not a `CandidateList`.
            ValueError: an empty list.
        """
        if not isinstance(candidates, CandidateList):
            raise TypeError(f"expected a CandidateList, got {type(candidates).__name__}")
        if len(candidates) == 0:
            raise ValueError("an empty candidate list cannot replace the cache")
        self.cached = CachedList(candidates, self.step, len(self._history))
        self._logits = None

    # ------------------------------------------------------------ requests

    def needs_refresh(self) -> bool:
        """Whether to request now: always without a list, else the policy (ask once per step).

        The policy is asked at every step, even while backing off after a failure, so its
        own state (random stream, budget window) moves on exactly as without failures.
        """
        wanted = True if self.cached is None else self.policy.decide(self.observation())
        return wanted and self.step >= self._retry_at

    def request_items(self) -> tuple[np.ndarray, np.ndarray]:
        """What a request sends: the last `request_history` clicks, and the distinct items
        clicked before them that are not among them (to exclude from the list)."""
        return request_parts(self.history, self.config.request_history)

    def request_fresh(self, fetch: FetchFn) -> bool:
        """Ask `fetch` for a fresh list with the last `request_history` clicks.

        Returns:
            True when a new list was cached; False when the request failed (the cached list,
            if any, stays, and the next try waits out the back-off). `last_fetch` keeps what
            `fetch` returned (e.g. the client's `FetchResult` with its latency).
        Raises:
            TypeError: `fetch` returned something other than a list, a result or None.
            Any exception from `fetch` not listed in `recoverable`.
        """
        self.stats.requests += 1
        try:
            recent, older = self.request_items()
            self.last_fetch = fetch(recent, exclude=older)
        except self.recoverable as err:
            self._on_failure(err)
            return False
        fresh, error = _unwrap(self.last_fetch)
        if fresh is None:
            self._on_failure(error)
            return False
        self.update_candidates(fresh)
        self._backoff, self._retry_at, self.last_error = self.config.backoff_steps, 0, None
        return True

    def _on_failure(self, error: BaseException | None) -> None:
        self.stats.failures += 1
        self.last_error = error
        self._retry_at = self.step + self._backoff
        self._backoff = min(max(2 * self._backoff, 1), self.config.max_backoff_steps)

    def serve_step(self, fetch: FetchFn, k: int | None = None) -> StepOutcome:
        """Steps 1–2 of a stream step: maybe request, then show the top-`k` items."""
        requested = self.needs_refresh()
        succeeded = self.request_fresh(fetch) if requested else False
        shown = self.recommend(k)
        list_step = -1 if self.cached is None else self.cached.fetched_at
        return StepOutcome(shown, requested, succeeded, list_step, self.step)
