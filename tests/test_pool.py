import json

import numpy as np
import pytest

from al_lightning.data.pool import ActivePool, PoolError


def make_pool():
    pool = ActivePool(10, 3)
    pool.label([1, 4], [0, 2], cycle=0)
    return pool


def test_labeled_and_unlabeled_partition_the_pool():
    pool = make_pool()
    pool.label([7], [1], cycle=1)
    labeled, unlabeled = set(pool.labeled_indices), set(pool.unlabeled_indices)
    assert labeled == {1, 4, 7}
    assert labeled.isdisjoint(unlabeled) and labeled | unlabeled == set(range(10))
    assert pool.labels_of([4, 7]).tolist() == [2, 1]
    assert pool.cycle_of([1, 7]).tolist() == [0, 1]
    assert pool.class_counts().tolist() == [1, 1, 1]
    assert pool.history == [{"cycle": 0, "indices": [1, 4]}, {"cycle": 1, "indices": [7]}]


@pytest.mark.parametrize("ids, labels, message", [
    ([2, 2], [0, 0], "duplicate ids"),
    ([4, 5], [0, 0], "already labeled: [4]"),
    ([10], [0], "out of range"),
    ([-1], [0], "out of range"),
    ([5], [3], "labels outside [0, 3)"),
    ([5], [-1], "labels outside [0, 3)"),
    ([5, 6], [0], "2 indices but 1 labels"),
    ([0.5], [0], "must be integers"),
])
def test_bad_label_requests_are_rejected_and_change_nothing(ids, labels, message):
    pool = make_pool()
    before = json.dumps(pool.state_dict())
    with pytest.raises(PoolError, match=message.replace("[", r"\[").replace(")", r"\)")):
        pool.label(ids, labels, cycle=1)
    assert json.dumps(pool.state_dict()) == before


def test_state_dict_round_trip_and_atomic_save(tmp_path):
    pool = make_pool()
    pool.label([0, 9], [1, 1], cycle=2)
    path = tmp_path / "pool.json"
    pool.save(path)
    loaded = ActivePool.load(path)
    assert loaded.state_dict() == pool.state_dict()
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    pool = make_pool()
    path = tmp_path / "pool.json"
    pool.save(path)
    before = path.read_text()
    pool.label([5], [0], cycle=1)

    def broken_dump(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(json, "dump", broken_dump)
    with pytest.raises(OSError):
        pool.save(path)
    assert path.read_text() == before
    assert list(tmp_path.iterdir()) == [path]


def test_load_state_dict_validates_before_touching_state():
    pool = make_pool()
    state = pool.state_dict()
    other = ActivePool(10, 3)
    other.label([3], [0])
    broken = dict(state, history=[{"cycle": 0, "indices": [1]}])  # does not account for id 4
    with pytest.raises(PoolError, match="history"):
        other.load_state_dict(broken)
    assert other.labeled_indices.tolist() == [3]
    with pytest.raises(PoolError, match="size=12"):
        other.load_state_dict(dict(state, size=12))


def test_load_names_the_file_on_errors(tmp_path):
    with pytest.raises(PoolError, match="no pool state at"):
        ActivePool.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PoolError, match="bad.json is not valid JSON"):
        ActivePool.load(bad)


def test_numpy_inputs_are_accepted():
    pool = ActivePool(5, 2)
    pool.label(np.array([0, 3], dtype=np.int32), np.array([1, 0], dtype=np.int64))
    assert pool.num_labeled == 2 and pool.num_unlabeled == 3
