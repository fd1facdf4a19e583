import json

import pytest

from cli.main import main


def test_stats_on_movielens_100k_gives_the_real_numbers(capsys):
    assert main(["data", "stats", "--dataset", "ml-100k", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["users"], stats["items"], stats["interactions"]) == (943, 1682, 100000)
    assert stats["length_min"] == 20  # ML-100k keeps users with at least 20 ratings


def test_stats_table_is_readable(capsys):
    assert main(["data", "stats", "--dataset", "synthetic", "--synthetic-users", "40"]) == 0
    out = capsys.readouterr().out
    assert "users" in out and "40" in out and "time span" in out


@pytest.mark.parametrize("simulator", ["per-user", "batched"])
def test_the_synthetic_catalogue_size_and_simulator_are_options(capsys, simulator):
    argv = ["data", "stats", "--dataset", "synthetic", "--synthetic-users", "300"]
    argv += ["--synthetic-items", "200", "--synthetic-simulator", simulator, "--json"]
    assert main(argv) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["users"] == 300 and stats["items"] == 200


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["data", "stats", "--dataset", "imdb"], "unknown dataset 'imdb'"),
        (["data", "stats", "--dataset", "csv"], "needs --path"),
        (["data", "stats", "--dataset", "synthetic", "--synthetic-items", "10"], "num_topics"),
        (["data", "stats", "--dataset", "csv", "--path", "missing.csv"], "no such file"),
    ],
)
def test_bad_cli_input_prints_one_line_and_fails(capsys, argv, problem):
    assert main(argv) != 0
    err = capsys.readouterr().err.strip()
    assert problem in err and len(err.splitlines()) == 1


def test_bad_file_through_cli_names_it(tmp_path, capsys):
    path = tmp_path / "bad.csv"
    path.write_text("user,item,timestamp\n1,2,noon\n")
    assert main(["data", "stats", "--dataset", "csv", "--path", str(path)]) != 0
    err = capsys.readouterr().err.strip()
    assert str(path) in err and "not a number" in err and len(err.splitlines()) == 1


def test_experiment_scripts_are_subcommands_with_their_own_help(capsys):
    from cli.main import main

    with pytest.raises(SystemExit) as done:
        main(["model-table", "--help"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("usage: lsc4rec model-table")
    assert main(["model-table", "--models", "bogus", "--dataset", "synthetic"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["lsc4rec model-table: error: unknown model name 'bogus'; valid names: din, "
                   "gru4rec, sasrec, ttt4rec"]  # fmt: skip


def test_unknown_arguments_of_a_subcommand_are_refused(capsys):
    from cli.main import main

    with pytest.raises(SystemExit) as done:
        main(["data", "stats", "--dataset", "synthetic", "--bogus"])
    assert done.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err
