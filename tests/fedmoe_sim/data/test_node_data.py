"""A node's own data (`data-path` in its node config): loading, the checks against the run, one run.

Fixtures are written here: 8x8 PNG image folders and `datasets` saves in tmp_path.
"""

import datasets
import numpy as np
import pytest
from PIL import Image

from fedmoe_sim.data.base import Benchmark, Domain
from fedmoe_sim.data.node_data import load_node_split, node_data_path, read_node_data

CLASSES = tuple(str(k) for k in range(10))


def _bench(kind="image", shape=(1, 8, 8), classes=CLASSES) -> Benchmark:
    x = np.zeros((2, *shape), np.float32) if kind == "image" else np.array(["a", "b"], dtype=object)
    y = np.zeros(2, np.int64)
    return Benchmark("tiny", kind, len(classes) or 10, (Domain("rot90", x, y, x, y), Domain("invert", x, y, x, y)),
                     class_names=classes)


def _png(path, value, size=(8, 8), mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, value).convert(mode).save(path)


def _folder(root, counts, size=(8, 8), mode="L"):
    """counts: class name -> images; pixel value = 20 * class index in sorted order + image number."""
    for k, (name, n) in enumerate(sorted(counts.items())):
        for i in range(n):
            _png(root / name / f"{i}.png", 20 * k + i, size, mode)
    return root


def _saved(root, labels, *, names=CLASSES, size=(8, 8), domains=None, test_labels=None):
    features = {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(names))}

    def table(ys, offset):
        cols = {"image": [Image.new("L", size, offset + i) for i in range(len(ys))], "label": list(ys)}
        if domains is not None:
            cols["domain"] = [domains] * len(ys) if isinstance(domains, str) else list(domains)
            features["domain"] = datasets.Value("string")
        return datasets.Dataset.from_dict(cols, features=datasets.Features(features))

    ds = table(labels, 0)
    if test_labels is not None:
        ds = datasets.DatasetDict({"train": ds, "test": table(test_labels, 100)})
    ds.save_to_disk(str(root))
    return root


def _split(path, bench=None, cid=0, **kw):
    return load_node_split(str(path), bench or _bench(), cid, seed=kw.pop("seed", 0),
                           test_fraction=kw.pop("test_fraction", 0.2), **kw)


# -- loading ------------------------------------------------------------------------------

def test_imagefolder_loads_in_the_run_format_labels_by_name_and_cut_like_a_partition(tmp_path):
    _folder(tmp_path / "node", {"3": 6, "7": 4})
    s = _split(tmp_path / "node", cid=1, default_domain=1)
    assert s.client_id == 1 and s.domain == 1                     # no domain named: the client's own
    assert (s.num_train, len(s.y_test)) == (8, 2)                 # 10 images, test_fraction 0.2
    assert s.x_train.shape == (8, 1, 8, 8) and s.x_train.dtype == np.float32
    x = np.concatenate([s.x_train, s.x_test])
    y = np.concatenate([s.y_train, s.y_test])
    assert sorted(y.tolist()) == [3] * 6 + [7] * 4                # folder names -> the run's class indices
    # folder "3" is sorted first: pixel 20*0 + i; folder "7": 20*1 + i (over 255)
    assert set(np.unique(np.round(x[y == 7] * 255)).astype(int)) <= {20, 21, 22, 23}
    again = _split(tmp_path / "node", cid=1)
    np.testing.assert_array_equal(again.x_test, s.x_test)         # seeded: reruns see the same cut


def test_imagefolder_train_and_test_dirs_are_kept_and_colour_becomes_the_runs_grey(tmp_path):
    _folder(tmp_path / "node" / "train", {"1": 3, "2": 3}, mode="RGB")
    _folder(tmp_path / "node" / "test", {"2": 2}, mode="RGB")
    s = _split(tmp_path / "node")
    assert (s.num_train, len(s.y_test)) == (6, 2) and s.x_test.shape == (2, 1, 8, 8)
    assert s.y_test.tolist() == [2, 2]                            # test/ has only "2": mapped by name


def test_saved_dataset_loads_with_its_splits_and_its_domain_column(tmp_path):
    path = _saved(tmp_path / "ds", [0, 1, 2, 3, 4], test_labels=[5, 6], domains="invert")
    s = _split(path)
    assert (s.num_train, len(s.y_test)) == (5, 2)
    assert s.y_train.tolist() == [0, 1, 2, 3, 4] and s.y_test.tolist() == [5, 6]
    assert s.domain == 1                                          # "invert" is the run's domain 1
    np.testing.assert_allclose(s.x_train[:, 0, 0, 0], np.arange(5) / 255)


def test_saved_dataset_without_test_split_is_cut_and_the_node_config_names_the_domain(tmp_path):
    path = _saved(tmp_path / "ds", list(range(10)))
    s = _split(path, domain="invert", test_fraction=0.3)
    assert (s.num_train, len(s.y_test), s.domain) == (7, 3, 1)
    assert sorted([*s.y_train.tolist(), *s.y_test.tolist()]) == list(range(10))


def test_text_node_data_needs_a_text_column(tmp_path):
    ds = datasets.Dataset.from_dict({"text": ["x y", "y z", "z x"], "label": [0, 1, 0]})
    ds.save_to_disk(str(tmp_path / "t"))
    data = read_node_data(str(tmp_path / "t"), _bench("text", classes=()))
    assert data.x_train.dtype == object and list(data.x_train) == ["x y", "y z", "z x"]
    with pytest.raises(ValueError, match="no 'image' or 'img' column"):
        read_node_data(str(tmp_path / "t"), _bench())


# -- mismatches: one line naming what differs ----------------------------------------------

def _one_line(err) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_classes_outside_the_runs_label_space_are_named(tmp_path):
    _folder(tmp_path / "node", {"3": 2, "cat": 2})
    with pytest.raises(ValueError) as err:
        _split(tmp_path / "node")
    message = _one_line(err)
    assert "classes cat are not in the run's label space" in message and "0, 1, 2" in message
    path = _saved(tmp_path / "ds", [0, 1], names=("0", "dog"))
    with pytest.raises(ValueError, match="classes dog are not in the run's label space"):
        _split(path)


def test_integer_labels_must_fit_the_runs_classes(tmp_path):
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    ds = datasets.Dataset.from_dict({"image": [Image.new("L", (8, 8))] * 2, "label": [1, 12]}, features=features)
    ds.save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(ValueError) as err:
        _split(tmp_path / "ds")
    assert "labels 1..12 are outside the run's 10 classes" in _one_line(err)


def test_wrong_image_size_is_named_and_never_resized(tmp_path):
    _folder(tmp_path / "node", {"1": 2}, size=(16, 16))
    with pytest.raises(ValueError) as err:
        _split(tmp_path / "node")
    assert "images are 16x16 (width x height), the run takes 8x8" in _one_line(err)
    path = _saved(tmp_path / "ds", [0, 1], size=(8, 9))
    with pytest.raises(ValueError, match="images are 8x9"):
        _split(path)


def test_unknown_domain_is_named_with_the_runs_domains(tmp_path):
    _folder(tmp_path / "node", {"1": 2})
    with pytest.raises(ValueError) as err:
        _split(tmp_path / "node", domain="sketch")
    assert "domain sketch is not one of the run's domains (rot90, invert)" in _one_line(err)
    path = _saved(tmp_path / "ds", [0, 1], domains=["rot90", "photo"])
    with pytest.raises(ValueError, match="domain photo is not one of"):
        _split(path)


def test_data_path_needs_partition_placement_and_an_existing_directory(tmp_path):
    assert node_data_path({"partition-id": 0}, "shard") == ""
    assert node_data_path({"data-path": "/d"}, "partition") == "/d"
    with pytest.raises(ValueError, match="needs federation.placement='partition' \\(got 'shard'\\)"):
        node_data_path({"data-path": "/d"}, "shard")
    with pytest.raises(FileNotFoundError, match="no such directory"):
        _split(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="an image folder, but the run's benchmark 'tiny' is text"):
        read_node_data(str(tmp_path / "empty"), _bench("text"))


# -- a run: the node's client trains on the node's data --------------------------------------

def test_a_node_with_data_path_trains_its_client_on_its_own_data(tmp_path, monkeypatch):
    """Two nodes, placement=partition; node 1 (partition-id 0) names a saved dataset of 11
    train / 3 test images: client 0 reports 11 training examples, client 1 its partition's."""
    import clients.app
    from experiments.catalogue import build_config
    from experiments.inprocess import InProcessGrid, run_inprocess
    from fedmoe_sim import wire
    from fedmoe_sim.workspace import get_workspace

    path = _saved(tmp_path / "node-data", [k % 10 for k in range(11)], test_labels=[0, 1, 2], domains="blur")
    cfg = build_config("digits-domains", {"strategy": "fedavg", "federation.num_clients": 2, "federation.rounds": 1,
                                          "federation.placement": "partition", "data.samples_per_client": 20,
                                          "model.pretrain_steps": 50, "train.local_epochs": 1})
    nodes = [{"partition-id": 0, "num-partitions": 2, "data-path": str(path)},
             {"partition-id": 1, "num-partitions": 2}]
    reported: dict[tuple[str, int], float] = {}
    current: dict = {}

    def app(msg, context):
        current["node"] = context.node_config
        reply = clients.app.app(msg, context)
        for cid, metrics in wire.unpack_reply(reply.content)[1].items():
            reported[(msg.metadata.message_type, cid)] = metrics[wire.NUM_EXAMPLES]
        return reply

    # clients/app.py builds its workspace with `get_workspace(cfg)`; the node data hook needs the
    # node's config there (`get_workspace(cfg, context.node_config)`): pass it through here.
    monkeypatch.setattr(clients.app, "get_workspace",
                        lambda c, node_config=None: get_workspace(c, current["node"] if node_config is None
                                                                  else node_config))
    summary = run_inprocess([cfg], InProcessGrid(2, nodes, client_app=app))[0]
    assert reported[("train", 0)] == 11
    assert reported[("evaluate", 0)] == 3
    assert reported[("train", 1)] == get_workspace(cfg).splits[1].num_train == 20      # its simulated partition
    rows = {int(c["client"]): c for c in summary.per_client}
    assert rows[0]["num-examples"] == 3 and rows[0]["domain"] == 2      # its own test split; "blur" = domain 2
    assert rows[1]["domain"] == 1                                        # client 1: its partition's (1 % 4)
