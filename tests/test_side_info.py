"""User side information (ml-100k u.user, ml-1m users.dat) and its use by the fm model."""
from __future__ import annotations

import numpy as np
import pytest

from recsys_jax.data import DataError, load_movielens
from recsys_jax.data.movielens import load_ml100k_fold
from recsys_jax.models import fm
from tests.test_movielens import write_ml100k


def test_u_user_is_read_with_ages_by_decade(tmp_path):
    folder = write_ml100k(tmp_path)
    (folder / "u.user").write_text("22|25|M|writer|40206\n186|39|F|executive|00000\n196|49|M|writer|55105\n")
    r = load_movielens("ml-100k", data_dir=tmp_path, download=False, cache_dir=tmp_path / "c")
    assert r.user_info.loc[186].tolist() == ["30s", "F", "executive"]
    assert r.user_info.loc[22].tolist() == ["20s", "M", "writer"]
    train, test = load_ml100k_fold(1, data_dir=tmp_path, download=False, cache_dir=tmp_path / "c")
    assert train.user_info is not None and test.user_info.loc[196, "age"] == "40s"
    # fm turns them into features: every user has age, gender and occupation (value 1).
    aux = fm.prepare(r, fm.Config())
    assert np.all(np.asarray(aux.user_values) == 1.0) and np.asarray(aux.user_features).shape == (3, 3)
    feats = np.asarray(aux.user_features)
    assert feats[r.user_index([22])[0], 2] == feats[r.user_index([196])[0], 2]  # both writers
    assert feats[r.user_index([22])[0], 0] != feats[r.user_index([186])[0], 0]  # 20s vs 30s


def test_users_dat_is_read(tmp_path):
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "ratings.dat").write_text("1::10::5::978300760\n2::10::3::978302109\n")
    (folder / "movies.dat").write_text("10::GoldenEye (1995)::Action|Adventure|Thriller\n")
    (folder / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    r = load_movielens("ml-1m", data_dir=tmp_path, download=False, cache_dir=tmp_path / "c")
    assert r.user_info.loc[1].tolist() == ["1", "F", "10"]
    assert r.user_info.loc[2].tolist() == ["56", "M", "16"]


def test_bad_user_files_name_the_line(tmp_path):
    folder = write_ml100k(tmp_path)
    (folder / "u.user").write_text("22|25|M|writer|40206\n186|old|F|executive|00000\n")
    with pytest.raises(DataError, match=r"u\.user, line 2"):
        load_movielens("ml-100k", data_dir=tmp_path, download=False, cache_dir=tmp_path / "c")


def test_latest_small_has_no_user_info(data_dir):
    r = load_movielens("ml-latest-small", data_dir=data_dir, download=False)
    assert r.user_info is None
    aux = fm.prepare(r, fm.Config())
    assert np.all(np.asarray(aux.user_values) == 0.0)  # only the null feature
