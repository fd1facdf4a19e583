"""Request-rate experiment: calibration on the validation stream, bootstrap, outputs, CLI."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from cli.main import main
from device.fusion import RankSigmoidFusion
from device.policies import (
    BudgetPolicy,
    ConsistencyPolicy,
    LearnedPolicy,
    RandomPolicy,
    ThresholdRule,
)
from seqrec.checkpoint import save_srm
from shared.datasets.synthetic import make_synthetic
from shared.splits import split_stream
from simulations.replay import ReplayConfig, replay
from simulations.request_rate import (
    RequestRateConfig,
    ScoreTables,
    batched_decisions,
    bootstrap_indices,
    bootstrap_interval,
    build_points,
    calibrate_on_stream,
    expected_rate,
    fit_learned,
    measure_table,
    paired_difference,
    periodic_knobs,
    prepare_streams,
    reachable,
    reference_points,
    replay_batched,
    run_request_rate,
    simulate_rule,
    state_index,
    write_outputs,
)
from simulations.request_rate.config import CONTROL_SUFFIX
from simulations.request_rate.experiment import controlled_points

RATES = (0.1, 0.3, 0.5)
CONFIG = ReplayConfig(n=20)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def streams(tiny_generator, tiny_ttt4rec):
    """Validation and test replay data of a synthetic data set (100 users, T = 10)."""
    dataset = make_synthetic(
        num_users=100, num_items=200, num_topics=8, min_length=25, max_length=30, seed=1
    )
    split = split_stream(dataset, test_window=10)
    generator = tiny_generator(split, 20, epochs=4)
    srm = tiny_ttt4rec(dataset.num_items)
    valid, test = prepare_streams(split, generator, srm, CONFIG)
    assert valid.stream.role == "valid" and np.isnan(valid.srm.full_ranks).all()
    return valid, test


def test_reachable_states():
    mask = reachable(4)
    assert mask.tolist() == [
        [True, False, False, False],
        [True, False, False, False],
        [True, True, False, False],
        [True, True, True, False],
    ]


def test_calibration_hits_the_rate_on_its_own_stream():
    rng = np.random.default_rng(0)
    # scores that grow with the list's age and drop after a refresh, plus noise
    steps, held = np.meshgrid(np.arange(10), np.arange(10), indexing="ij")
    table = (steps - held)[None] * 0.3 + rng.normal(size=(500, 10, 10))
    table[:, ~reachable(10)] = np.nan
    for rate in (0.05, 0.2, 0.5, 0.8):
        rule, achieved = calibrate_on_stream(table, rate)
        assert achieved == pytest.approx(rate, abs=0.005)
        assert expected_rate(table, rule) == achieved
    # the plain quantile of the scores misses: refreshed lists disagree less
    plain = calibrate_on_stream(table, 0.2, steps=1)[1]
    assert abs(plain - 0.2) > 0.01
    never, _ = simulate_rule(table, ThresholdRule(np.inf))
    assert not never.any()


@pytest.mark.parametrize("measure", ["rank_diff", "kendall", "topk", "rbo"])
def test_calibrated_policies_keep_their_rate_through_the_replay(streams, measure):
    """The calibrated policy objects (per-user copies, tie splitting) replayed on the stream
    they were calibrated on request at the target rate within 2 points."""
    valid, _ = streams
    table = measure_table(valid, measure)
    for rate in RATES:
        rule, _ = calibrate_on_stream(table, rate)
        policy = ConsistencyPolicy(measure, threshold=rule.threshold, tie_prob=rule.tie_prob)
        assert abs(replay(valid, policy).request_rate - rate) <= 0.02


def test_learned_policy_trains_on_validation_gains(streams):
    valid, _ = streams
    rows, steps, held = state_index(valid)
    assert len(rows) == valid.num_users * reachable(valid.window).sum()
    model, table, stats = fit_learned(valid, RankSigmoidFusion())
    assert stats["examples"] == len(rows) and 0.0 < stats["positive_share"] < 1.0
    assert np.isnan(table[:, 0, 1]).all() and not np.isnan(table[:, 3, 2]).any()
    for rate in RATES:
        rule, _ = calibrate_on_stream(table, rate)
        policy = LearnedPolicy(model=model, threshold=rule.threshold, tie_prob=rule.tie_prob)
        assert abs(replay(valid, policy).request_rate - rate) <= 0.02


def test_periodic_knobs():
    assert periodic_knobs((0.05, 0.1, 0.2, 0.3, 0.5, 0.8), 10) == [
        (5, 0.1),
        (4, 0.2),
        (3, 0.3),
        (2, 0.5),
        (1, 0.8),
    ]
    with pytest.raises(ValueError, match=">= 2 steps"):
        periodic_knobs((0.1,), 1)


def test_bootstrap_interval_contains_the_mean():
    rng = np.random.default_rng(1)
    values = rng.exponential(size=300)
    indices = bootstrap_indices(300, 1000, seed=0)
    mean, low, high = bootstrap_interval(values, indices)
    assert low < mean < high and mean == pytest.approx(values.mean())
    assert bootstrap_interval(values, bootstrap_indices(300, 1000, seed=0)) == (mean, low, high)
    wide = bootstrap_interval(values, indices, confidence=0.99)
    assert wide[1] < low and wide[2] > high
    # standard error of a mean of 300 unit-variance values is ~0.058: interval ~ ±0.11
    assert 0.15 < high - low < 0.30
    assert paired_difference(values, values, indices, 0.95) == (0.0, 0.0, 0.0)


def test_config_validation():
    with pytest.raises(ValueError, match="unknown policy 'greedy'"):
        RequestRateConfig(families=("random", "greedy"))
    with pytest.raises(ValueError, match="unknown measure"):
        RequestRateConfig(measures=("cosine",))
    with pytest.raises(ValueError, match="target_rates"):
        RequestRateConfig(target_rates=(1.5,))


def test_sweep_writes_tables_and_plot(streams, tmp_path):
    valid, test = streams
    config = RequestRateConfig(target_rates=(0.1, 0.3), measures=("kendall",), bootstrap_draws=100)
    experiment = run_request_rate(test, valid, config)
    labels = [row["policy"] for row in experiment.rows]
    for family in ("random", "periodic", "consistency[kendall]", "learned"):
        assert family in labels
    assert labels[-5:] == ["never", "never_llm_order", "always", "llm_only", "srm_only"]
    rows = {row["policy"]: row for row in experiment.rows if row["target_rate"] in (None, 0.3)}
    assert rows["never"]["request_rate"] == 0.0 and rows["always"]["request_rate"] == 1.0
    for row in experiment.rows:
        assert row["NDCG@10_lo"] <= row["NDCG@10"] <= row["NDCG@10_hi"]
    assert [g["target_rate"] for g in experiment.goal] == [0.1, 0.3]
    gaps = experiment.notes["reference_gaps"]
    assert set(gaps) == {
        "always-never", "always-llm_only", "always-srm_only", "never-never_llm_order"
    }  # fmt: skip
    always_never = gaps["always-never"]
    assert always_never[0] == pytest.approx(rows["always"]["NDCG@10"] - rows["never"]["NDCG@10"])
    device_share = rows["never"]["NDCG@10"] - rows["never_llm_order"]["NDCG@10"]
    assert gaps["never-never_llm_order"][0] == pytest.approx(device_share)
    # the per-age table: at never, age a is step a of the initial list; its mean over ages is
    # the never row (every user holds list 0 at every step)
    by_age = experiment.notes["list_age"]["never"]
    assert [r["age"] for r in by_age] == list(range(test.window))
    fused = np.mean([r["fused_NDCG@10"] for r in by_age])
    assert fused == pytest.approx(rows["never"]["NDCG@10"])
    llm = np.mean([r["llm_order_NDCG@10"] for r in by_age])
    assert llm == pytest.approx(rows["never_llm_order"]["NDCG@10"])
    policy = experiment.notes["list_age"]["by_age"]
    assert sum(r["states"] for r in policy) == test.num_users * test.window
    paths = write_outputs(experiment, tmp_path, config, {"dataset": "tiny"})
    with open(paths["csv"]) as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == len(experiment.rows) and "HR@20_hi" in table[0]
    payload = json.loads(paths["json"].read_text())
    assert payload["config"]["target_rates"] == [0.1, 0.3] and payload["goal"]
    text = paths["md"].read_text()
    assert "| never |" in text and "always − never" in text and "never − never (LLM order)" in text
    assert "## NDCG@10 by list age" in text
    assert paths["png"].stat().st_size > 10_000
    records = np.load(paths["records"])
    assert records["ranks"].shape == (len(experiment.rows), test.num_users, test.window)


# ---------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def saved_models(tiny_generator, tiny_ttt4rec, tmp_path_factory):
    """A tiny generator and TTT4Rec for `--dataset synthetic --synthetic-users 16`."""
    dataset = make_synthetic(num_users=16, seed=4)
    split = split_stream(dataset, test_window=5)
    folder = tmp_path_factory.mktemp("models")
    tiny_generator(split, 20, epochs=4).save_pretrained(folder / "llm")
    save_srm(tiny_ttt4rec(dataset.num_items), folder / "srm")
    return folder


def cli_args(folder, *extra) -> list[str]:
    return [
        "experiment",
        "request-rate",
        "--dataset",
        "synthetic",
        "--synthetic-users",
        "16",
        "--data-seed",
        "4",
        "--llm",
        str(folder / "llm"),
        "--srm",
        str(folder / "srm"),
        "--test-window",
        "5",
        "-n",
        "20",
        "--no-progress",
        *extra,
    ]


def test_cli_runs_and_reuses_the_cache(saved_models, tmp_path, capsys):
    extra = ["--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]
    extra += ["--rates", "0.2,0.5", "--measures", "rbo", "--bootstrap", "50"]
    assert main(cli_args(saved_models, *extra)) == 0
    assert "| always |" in capsys.readouterr().out
    meta = json.loads((tmp_path / "out" / "request_rate.json").read_text())["meta"]
    assert not meta["lists_from_cache"]
    assert main(cli_args(saved_models, *extra)) == 0
    meta = json.loads((tmp_path / "out" / "request_rate.json").read_text())["meta"]
    assert meta["lists_from_cache"]
    assert (tmp_path / "out" / "request_rate.png").is_file()


def test_cli_errors_are_one_line(saved_models, tmp_path, capsys):
    missing = ["--llm", str(tmp_path / "nowhere")]
    assert main(cli_args(saved_models, *missing)) == 2
    err = capsys.readouterr().err.strip()
    assert "no such model folder" in err and len(err.splitlines()) == 1
    assert main(cli_args(saved_models, "--policies", "random,greedy")) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown policy 'greedy'" in err and len(err.splitlines()) == 1
    assert main(cli_args(saved_models, "--srm", str(saved_models / "llm"))) == 2
    assert "not a model folder" in capsys.readouterr().err
    try:
        import ray  # noqa: F401
    except ImportError:  # the usual install: the Ray backend says what to install, in one line
        assert main(cli_args(saved_models, "--table-backend", "ray")) == 2
        err = capsys.readouterr().err.strip()
        assert "needs Ray" in err and len(err.splitlines()) == 1


def test_alpha_chosen_on_validation_keeps_lsc4rec_as_a_reference(streams):
    from device.fusion import RankSigmoidFusion
    from simulations.request_rate import always_ndcg10, choose_fusion

    valid, test = streams
    alphas = (0.0, 0.5, 1.0)
    config = RequestRateConfig(
        target_rates=(0.3,), families=("random",), alphas=alphas, bootstrap_draws=50
    )
    fusion, notes = choose_fusion(valid, config)
    scores = {a: always_ndcg10(valid, RankSigmoidFusion(alpha=a)) for a in alphas}
    assert notes["valid_ndcg10_by_alpha"] == scores
    assert fusion.alpha == notes["alpha"] and scores[fusion.alpha] == max(scores.values())
    experiment = run_request_rate(test, valid, config)
    labels = [row["policy"] for row in experiment.rows]
    assert labels[-6:] == [
        "never", "never_llm_order", "always", "llm_only", "srm_only", "always_alpha_0.5"
    ]  # fmt: skip
    assert "always-always_alpha_0.5" in experiment.notes["reference_gaps"]
    with pytest.raises(ValueError, match="alphas need a fusion in"):
        RequestRateConfig(fusion="rrf", alphas=(0.5,))


def test_age_alphas_are_each_the_best_on_the_validation_states_of_their_age(streams):
    """Brute force: for every bucket, no α of the grid beats the chosen one on the states of
    that age (every step t with every list j <= t)."""
    from device.fusion import AgeAlphaFusion, RankSigmoidFusion
    from shared.metrics import ndcg
    from simulations.request_rate import choose_fusion

    valid, _ = streams
    alphas = (0.0, 0.25, 0.5, 0.75, 1.0)
    config = RequestRateConfig(fusion="age_lsc4rec", alphas=alphas, target_rates=(0.3,))
    fusion, notes = choose_fusion(valid, config)
    assert isinstance(fusion, AgeAlphaFusion) and notes["alphas"] == list(fusion.alphas)
    ages = np.subtract.outer(np.arange(valid.window), np.arange(valid.window))  # [T, T] t − j
    bucket_of = np.searchsorted(fusion.ages, np.maximum(ages, 0), side="right") - 1
    for b, chosen in enumerate(fusion.alphas):
        states = (ages >= 0) & (bucket_of == b)

        def score(a, states=states):
            ranks = valid.fused_ranks(RankSigmoidFusion(alpha=a))[:, states]
            return float(ndcg(ranks, 10).mean())

        assert score(chosen) >= max(score(a) for a in alphas) - 1e-12
        assert notes["valid_ndcg10_by_alpha_and_bucket"][chosen][b] == pytest.approx(score(chosen))


def test_gap_share_is_the_ratio_of_paired_means():
    from simulations.request_rate import gap_share

    never = np.array([0.0, 0.1, 0.2, 0.1])
    always = never + np.array([0.4, 0.2, 0.2, 0.2])
    policy = never + np.array([0.2, 0.1, 0.1, 0.1])  # half of every user's gap
    share, low, high = gap_share(policy, never, always, bootstrap_indices(4, 200, seed=0))
    assert share == pytest.approx(0.5) and low == pytest.approx(0.5) and high == pytest.approx(0.5)
    uneven = never + np.array([0.4, 0.0, 0.0, 0.0])
    share, low, high = gap_share(uneven, never, always, bootstrap_indices(4, 200, seed=0))
    assert share == pytest.approx(0.4 / 1.0) and low < share < high


def test_auc_counts_ordered_pairs_and_half_ties():
    from simulations.request_rate.auc import auc

    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 60).astype(float)  # many ties
    labels = rng.random(60) < 0.4
    pos, neg = scores[labels], scores[~labels]
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert auc(scores, labels) == pytest.approx(pairs)
    assert auc(labels.astype(float), labels) == 1.0
    assert np.isnan(auc(scores, np.zeros(60, bool)))


def test_measure_auc_table_scores_every_measure_and_topic_switches(streams):
    from device.policies.surprise import REQUEST_MEASURES
    from simulations.request_rate.auc import auc_markdown

    valid, test = streams
    dataset = make_synthetic(  # the streams' data set: the same seed gives the same topics
        num_users=100, num_items=200, num_topics=8, min_length=25, max_length=30, seed=1
    )
    assert dataset.latent_topics is not None
    config = RequestRateConfig(
        target_rates=(0.2,), families=("random", "learned"), bootstrap_draws=50, auc_draws=30
    )
    experiment = run_request_rate(test, valid, config, topics=dataset.latent_topics)
    table = experiment.notes["auc"]
    assert [row["measure"] for row in table] == [*REQUEST_MEASURES, "learned", "learned[ndcg]"]
    for row in table:
        for label in ("fresh_better", "topic_switch"):
            assert 0.0 <= row[f"{label}_lo"] <= row[f"{label}_hi"] <= 1.0
            assert 0.0 <= row[f"{label}_auc"] <= 1.0
    assert 0.05 < table[0]["topic_switch_positives"] < 0.4  # mean dwell: 6 clicks
    assert 0.0 < table[0]["fresh_better_positives"] < 1.0
    assert "first click after a topic switch" in auc_markdown(table)
    goal = experiment.goal[0]
    assert abs(goal["random_request_rate"] - goal["best_request_rate"]) < 0.06


def test_cli_alpha_and_calibration_models(saved_models, tmp_path, capsys):
    base = ["--rates", "0.3", "--policies", "random", "--bootstrap", "20", "--auc-bootstrap", "0"]
    base += ["--cache-dir", str(tmp_path / "cache")]
    out = tmp_path / "fixed"
    assert main(cli_args(saved_models, *base, "--alpha", "0.5", "--out", str(out))) == 0
    payload = json.loads((out / "request_rate.json").read_text())
    assert "always_alpha_0.5" not in [row["policy"] for row in payload["points"]]
    assert payload["config"]["alphas"] == [0.5]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(cli_args(saved_models, *base, "--alpha", "2"))
    assert exited.value.code == 2
    assert "alpha must be in [0, 1]" in capsys.readouterr().err
    calibration = ["--calibration-llm", str(saved_models / "llm")]
    assert main(cli_args(saved_models, *base, *calibration)) == 2
    err = capsys.readouterr().err.strip()
    assert "go together" in err and len(err.splitlines()) == 1
    calibration += ["--calibration-srm", str(saved_models / "srm"), "--out", str(tmp_path / "c")]
    assert main(cli_args(saved_models, *base, *calibration)) == 0
    meta = json.loads((tmp_path / "c" / "request_rate.json").read_text())["meta"]
    assert meta["calibration_models"] == [str(saved_models / "llm"), str(saved_models / "srm")]


def test_the_learned_fusion_fits_a_hand_made_stream_and_never_shows_invalid_slots():
    """Clicks that follow the LLM's order on fresh lists and the SRM's on old ones (the
    clicked item is the top of `(1 − a)·(1 − j/n) + a·σ(s)`, `a` the age / 10): the fitted
    weights find most of them first, far more than any single α can."""
    from device.fusion import (
        FUSION_FEATURES,
        LearnedFusion,
        RankSigmoidFusion,
        fusion_features,
        sigmoid,
    )
    from simulations.request_rate.fusion_fit import fit_fusion

    rng = np.random.default_rng(0)
    rows, width = 800, 6
    llm = np.sort(rng.normal(size=(rows, width)), axis=1)[:, ::-1].copy()
    srm = 3 * rng.normal(size=(rows, width))
    valid = np.ones((rows, width), dtype=bool)
    age = rng.integers(0, 11, size=rows)
    a = (age / 10)[:, None]
    target = ((1 - a) * (1 - np.arange(width) / width) + a * sigmoid(srm)).argmax(axis=1)
    features = fusion_features(llm, srm, valid, age).astype(np.float32)
    weights, loss = fit_fusion(features, valid, target)
    assert len(weights) == len(FUSION_FEATURES) and np.isfinite(loss)
    fusion = LearnedFusion(weights=tuple(weights))
    learned = (fusion(llm, srm, valid, age).argmax(axis=1) == target).mean()
    single = max(
        (RankSigmoidFusion(alpha=alpha)(llm, srm, valid).argmax(axis=1) == target).mean()
        for alpha in np.linspace(0, 1, 11)
    )
    assert learned > 0.85 and learned > single + 0.1
    # padding and clicked slots are never shown, whatever the weights
    showable = valid.copy()
    showable[:, 0] = False
    scores = fusion(llm, srm, showable, age)
    assert np.isneginf(scores[:, 0]).all() and np.isfinite(scores[:, 1:]).all()


def test_auto_chooses_the_best_of_three_fusions_on_validation(streams):
    from simulations.request_rate import choose_fusion
    from simulations.request_rate.points import all_states_ndcg10

    valid, _ = streams
    config = RequestRateConfig(fusion="auto", alphas=(0.0, 0.5, 1.0), target_rates=(0.3,))
    fusion, notes = choose_fusion(valid, config)
    scores = notes["valid_ndcg10_all_states"]
    assert set(scores) == {"lsc4rec", "age_lsc4rec", "learned"}
    assert fusion.name == notes["chosen"] == max(scores, key=scores.get)
    assert scores[notes["chosen"]] == pytest.approx(all_states_ndcg10(valid, fusion))
    assert notes["learned"]["examples"] > 0 and len(notes["learned"]["weights"]) == 8


def test_batched_replay_decides_as_each_users_policy_copy(streams):
    """Every point the sweep builds (random, periodic, each measure, learned, the rate
    controller, the references) replayed for all users at once gives the per-user replay's
    decisions and ranks exactly, split ties drawn from each user's own stream included."""
    valid, test = streams
    config = RequestRateConfig(
        target_rates=RATES, measures=("rank_diff", "topk", "drift_mean"), bootstrap_draws=10
    )
    fusion = RankSigmoidFusion()
    points, _ = build_points(valid, test.window, config, fusion=fusion)
    points += controlled_points(points, valid, config)
    points += [p for p in reference_points(config, fusion) if p.policy is not None]
    families = {p.family for p in points}
    assert {"random", "periodic", "consistency[topk]", "learned", "never"} <= families
    assert any(f.endswith(CONTROL_SUFFIX) for f in families)
    tables = ScoreTables(test)
    split = 0
    for point in points:
        tie_prob = getattr(point.policy, "tie_prob", 1.0)
        if 0.0 < tie_prob < 1.0:
            table = tables.of(point.policy)
            split += int((table[:, reachable(test.window)] == point.policy.threshold).sum())
        fast = replay_batched(test, point.policy, point.fusion, tables=tables)
        slow = replay(test, point.policy, point.fusion)
        assert fast.label == slow.label
        np.testing.assert_array_equal(fast.requested, slow.requested, err_msg=point.family)
        np.testing.assert_array_equal(fast.lists_used, slow.lists_used, err_msg=point.family)
        np.testing.assert_array_equal(fast.ranks, slow.ranks, err_msg=point.family)
    assert split > 0  # some test states tie a split threshold: the tie draws were exercised


def test_batched_replay_falls_back_for_a_policy_it_does_not_know(streams):
    _, test = streams
    policy = BudgetPolicy(inner=RandomPolicy(p=0.5), max_requests=1, window=3)
    assert batched_decisions(test, policy, ScoreTables(test)) is None
    fast = replay_batched(test, policy)
    np.testing.assert_array_equal(fast.requested, replay(test, policy).requested)


def test_resampled_means_in_chunks_equal_the_whole_gather(monkeypatch):
    """The bootstrap's means a few resamples at a time are the whole gather's, bit for bit,
    and its int32 indices are the int64 draws."""
    from simulations.request_rate import statistics

    values = np.random.default_rng(0).normal(size=50)
    indices = bootstrap_indices(50, 37, seed=3)
    assert indices.dtype == np.int32
    drawn = np.random.default_rng([3, 2024]).integers(0, 50, size=(37, 50))
    np.testing.assert_array_equal(indices, drawn)
    monkeypatch.setattr(statistics, "RESAMPLE_CHUNK", 50 * 4)  # 4 resamples a chunk
    chunked = statistics.resample_means(values, indices)
    np.testing.assert_array_equal(chunked, values[drawn].mean(axis=1))
