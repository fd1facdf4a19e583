"""Replay of the online stream (docs/design.md §3) against cached fresh lists, for any request policy.

What a device shows at a stream step depends on the policy only through *which* list it
holds: at step `t` it is the fresh list made for the history before some step `j <= t`
(`j = 0` is the initial list, made from `s_1 … s_{n−T}`; a request at step `t` makes it
`j = t`). Everything expensive is therefore computed once, before any policy runs:

    fresh lists   the generator's list for every (user, step), batched    -> npz disk cache
    SRM logits    of list j at step t for every j <= t, by stepping the
                  same runner the device uses, click by click              -> npz disk cache
    fused ranks   the target's rank in the final list of (t, j), per fusion  (in memory)

A policy's replay is then only its decisions: each user's policy copy (`spawn(user)`) is
asked `decide(obs)` with the very `PolicyObservation` a `DeviceSession` builds, the held
list moves to `j = t` on a request, and the step's target rank is looked up.
`replay_sessions` runs the same stream through `DeviceSession` itself (a cache-reading
fetch function, and either the precomputed logits or the real SRM runner) and gives the
same records, bit for bit; it is the bridge a live fleet is tested against.

    stream = stream_from_split(split, "test")
    data = prepare_replay(stream, generator, srm, cache_dir="runs/replay_cache")
    result = replay(data, RandomPolicy(p=0.1))
    result.request_rate, result.summary()

Policy random streams are keyed by the data set's user index (`stream.users`), so a live
device for user `u` must use `policy.spawn(u)` to draw the same numbers.

The package, one module per concern: `stream` (the stream and its config), `keys` (cache
fingerprints), `lists` (fresh lists), `tables` (SRM outputs), `engine` (the fast replay and its
results), `sessions` (the same through `DeviceSession`). The disk cache is `shared.cache`.

Letters used in shape comments:
    U  stream users   T  stream steps   N  list length   I  num_items + 1   M  flattened rows
"""

from __future__ import annotations

from simulations.replay.engine import (
    ReplayData,
    ReplayResult,
    prepare_replay,
    reference_result,
    replay,
    target_positions,
)
from simulations.replay.keys import dataset_label, generator_fingerprint, srm_fingerprint
from simulations.replay.lists import (
    FreshLists,
    generate_lists,
    list_cache_key,
    load_or_generate_lists,
    stream_requests,
)
from simulations.replay.sessions import CachedFetch, PrecomputedRunner, replay_sessions
from simulations.replay.stream import (
    CACHE_FORMAT,
    KS,
    ROLES,
    ListGenerator,
    ReplayConfig,
    ReplayStream,
    stream_from_split,
)
from simulations.replay.tables import SRMTables, compute_srm_tables, load_or_compute_srm_tables

__all__ = [
    "CACHE_FORMAT",
    "CachedFetch",
    "FreshLists",
    "KS",
    "ListGenerator",
    "PrecomputedRunner",
    "ROLES",
    "ReplayConfig",
    "ReplayData",
    "ReplayResult",
    "ReplayStream",
    "SRMTables",
    "compute_srm_tables",
    "dataset_label",
    "generate_lists",
    "generator_fingerprint",
    "list_cache_key",
    "load_or_compute_srm_tables",
    "load_or_generate_lists",
    "prepare_replay",
    "reference_result",
    "replay",
    "replay_sessions",
    "stream_requests",
    "srm_fingerprint",
    "stream_from_split",
    "target_positions",
]
