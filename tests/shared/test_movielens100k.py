import subprocess
import zipfile

import pytest

from shared import wheels
from shared.datasets import DatasetError
from shared.datasets import movielens100k as ml


def test_failed_download_names_the_command_to_run(tmp_path, monkeypatch):
    monkeypatch.setenv("LSC4REC_CACHE", str(tmp_path))

    def no_network(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found")

    monkeypatch.setattr(wheels.subprocess, "run", no_network)
    with pytest.raises(
        DatasetError, match=r"run by hand: pip download --no-deps recbole==1\.2\.1 -d"
    ):
        ml.load_movielens_100k()


def test_corrupt_wheel_fails_the_checksum(tmp_path, monkeypatch):
    monkeypatch.setenv("LSC4REC_CACHE", str(tmp_path))
    ml.wheel_path().parent.mkdir(parents=True)
    with zipfile.ZipFile(ml.wheel_path(), "w") as archive:
        archive.writestr(
            ml.INTER_MEMBER, "user_id:token\titem_id:token\ttimestamp:float\n1\t2\t3\n"
        )
        archive.writestr(ml.ITEM_MEMBER, "item_id:token\tmovie_title:token_seq\n2\tX\n")
    with pytest.raises(DatasetError, match="checksum mismatch"):
        ml.load_movielens_100k()


def test_movielens_titles_are_kept():
    ds = ml.load_movielens_100k()
    titles = {ds.title(i) for i in range(1, ds.num_items + 1)}
    assert "Toy Story" in titles and "Star Wars" in titles
