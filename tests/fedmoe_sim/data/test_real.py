"""Real loaders on tiny on-disk fixtures written here: nothing downloads."""

import pickle

import datasets
import numpy as np
import pytest
from PIL import Image

from fedmoe_sim.config import DataConfig
from fedmoe_sim.data import load_benchmark
from fedmoe_sim.data.real import TORCHVISION_DATASETS, load_hf, load_imagefolder, load_torchvision

COLOURS = {"apple": (255, 0, 0), "berry": (0, 0, 255), "cress": (0, 255, 0)}


def _png(path, colour, size=(12, 9), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).convert(mode).save(path)


def _assert_images(x, n, size):
    assert x.shape == (n, 3, size, size) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0


def _assert_colour_matches_label(x, y, classes, names=COLOURS):
    for img, label in zip(x, y, strict=True):
        expected = np.array(names[classes[label]]) / 255.0
        np.testing.assert_allclose(img.mean(axis=(1, 2)), expected, atol=0.03)


# -- ImageFolder ---------------------------------------------------------------------------

def test_imagefolder_with_train_and_test_dirs(tmp_path):
    for i in range(3):
        for cls, colour in COLOURS.items():
            _png(tmp_path / "train" / cls / f"{i}.png", colour, size=(10 + i, 7))
    _png(tmp_path / "test" / "berry" / "0.png", COLOURS["berry"], mode="L")  # grayscale becomes RGB
    _png(tmp_path / "test" / "cress" / "0.png", COLOURS["cress"])
    bench = load_imagefolder(str(tmp_path), size=16)
    dom = bench.domains[0]
    assert bench.kind == "image" and bench.num_classes == 3 and bench.class_names == ("apple", "berry", "cress")
    _assert_images(dom.x_train, 9, 16)
    _assert_images(dom.x_test, 2, 16)
    _assert_colour_matches_label(dom.x_train, dom.y_train, bench.class_names)
    # test/ lacks "apple": its labels are re-mapped onto the train class indices
    np.testing.assert_array_equal(dom.y_test, [1, 2])
    assert np.allclose(dom.x_test[0, 0], dom.x_test[0, 1])  # the grayscale image has equal channels


def test_imagefolder_single_folder_is_cut_80_20_with_a_seed(tmp_path):
    for i in range(5):
        for cls, colour in COLOURS.items():
            _png(tmp_path / "pool" / cls / f"{i}.png", colour)
    a = load_imagefolder(str(tmp_path / "pool"), size=8)
    b = load_imagefolder(str(tmp_path / "pool"), size=8)
    assert a.name == "pool" and len(a.domains[0].y_train) == 12 and len(a.domains[0].y_test) == 3
    np.testing.assert_array_equal(a.domains[0].x_test, b.domains[0].x_test)
    _assert_colour_matches_label(a.domains[0].x_test, a.domains[0].y_test, a.class_names)


def test_imagefolder_missing_root_names_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere") as err:
        load_imagefolder(str(missing))
    assert "\n" not in str(err.value)


# -- torchvision ---------------------------------------------------------------------------

def _write_cifar(root, hundred=False, n=3, classes=10):
    """The real python-pickle layout of CIFAR-10/100 with n random images per file, labels
    drawn from the first `classes` classes."""
    rng = np.random.default_rng(0)
    if hundred:
        base, files, key, meta = root / "cifar-100-python", ["train", "test"], "fine_labels", "meta"
        meta_content = {"fine_label_names": [f"c{i}" for i in range(100)]}
    else:
        base, key, meta = root / "cifar-10-batches-py", "labels", "batches.meta"
        files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        meta_content = {"label_names": [f"c{i}" for i in range(10)]}
    base.mkdir(parents=True)
    written = {}
    for name in files:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = rng.integers(0, classes, size=n).tolist()
        with open(base / name, "wb") as f:
            pickle.dump({"data": data, key: labels}, f)
        written[name] = (data, labels)
    with open(base / meta, "wb") as f:
        pickle.dump(meta_content, f)
    return written


@pytest.mark.parametrize("name", ["CIFAR10", "cifar100"])
def test_cifar_from_a_fake_on_disk_copy(tmp_path, no_md5, name):
    hundred = name.lower() == "cifar100"
    written = _write_cifar(tmp_path, hundred=hundred)
    bench = load_torchvision(name, str(tmp_path))
    dom = bench.domains[0]
    n_train_files = 1 if hundred else 5
    _assert_images(dom.x_train, 3 * n_train_files, 32)
    _assert_images(dom.x_test, 3, 32)
    test_data, test_labels = written["test" if hundred else "test_batch"]
    np.testing.assert_allclose(dom.x_test, test_data.reshape(-1, 3, 32, 32) / 255.0, atol=1e-6)
    np.testing.assert_array_equal(dom.y_test, test_labels)
    assert bench.name == name.lower() and bench.num_classes == (100 if hundred else 10)


def test_cifar_resized_goes_through_pil(tmp_path, no_md5):
    _write_cifar(tmp_path)
    bench = load_torchvision("cifar10", str(tmp_path), size=16)
    _assert_images(bench.domains[0].x_train, 15, 16)


def test_eurosat_gets_a_seeded_80_20_split(tmp_path):
    for i in range(5):
        for cls, colour in COLOURS.items():
            _png(tmp_path / "eurosat" / "2750" / cls / f"{cls}_{i}.png", colour, size=(64, 64))
    a = load_torchvision("EuroSAT", str(tmp_path))
    b = load_torchvision("eurosat", str(tmp_path))
    assert len(a.domains[0].y_train) == 12 and len(a.domains[0].y_test) == 3
    np.testing.assert_array_equal(a.domains[0].y_test, b.domains[0].y_test)
    _assert_colour_matches_label(a.domains[0].x_train, a.domains[0].y_train, a.class_names)


def test_oxford_pets_uses_its_split_files(tmp_path):
    base = tmp_path / "oxford-iiit-pet"
    (base / "annotations").mkdir(parents=True)
    rows = {"trainval": ["Abyssinian_1 1 1 1", "beagle_1 2 2 1", "beagle_2 2 2 1"], "test": ["Abyssinian_2 1 1 1"]}
    for split, lines in rows.items():
        (base / "annotations" / f"{split}.txt").write_text("\n".join(lines) + "\n")
        for line in lines:
            _png(base / "images" / f"{line.split()[0]}.jpg", (200, 100, 0), size=(40, 30))
    bench = load_torchvision("OxfordIIITPet", str(tmp_path), size=24)
    dom = bench.domains[0]
    _assert_images(dom.x_train, 3, 24)
    np.testing.assert_array_equal(dom.y_train, [0, 1, 1])
    np.testing.assert_array_equal(dom.y_test, [0])


def test_flowers102_uses_its_split_ids(tmp_path, no_md5):
    from scipy.io import savemat

    base = tmp_path / "flowers-102"
    for i in range(1, 7):
        _png(base / "jpg" / f"image_{i:05d}.jpg", (10 * i, 0, 0), size=(50, 40))
    savemat(base / "imagelabels.mat", {"labels": np.array([1, 2, 3, 1, 2, 3])})
    savemat(base / "setid.mat", {"trnid": np.array([1, 2, 3]), "valid": np.array([4]), "tstid": np.array([5, 6])})
    bench = load_torchvision("flowers102", str(tmp_path))
    dom = bench.domains[0]
    _assert_images(dom.x_train, 3, 32)
    np.testing.assert_array_equal(dom.y_train, [0, 1, 2])
    np.testing.assert_array_equal(dom.y_test, [1, 2])
    assert bench.num_classes == 102


def test_torchvision_errors_are_one_line(tmp_path):
    with pytest.raises(ValueError, match=r"unknown torchvision dataset 'mnist'; allowed: cifar10, cifar100") as err:
        load_torchvision("mnist", str(tmp_path))
    assert "\n" not in str(err.value) and set(TORCHVISION_DATASETS) == {
        "cifar10", "cifar100", "eurosat", "flowers102", "oxfordiiitpet"}
    with pytest.raises(FileNotFoundError, match="absent"):
        load_torchvision("cifar10", str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="CIFAR10 not found"):  # root exists, data does not
        load_torchvision("cifar10", str(tmp_path))


# -- Hugging Face datasets -----------------------------------------------------------------

def _text_rows(n, offset=0):
    return {"text": [f"sample number {i}" for i in range(offset, offset + n)], "label": [i % 2 for i in range(n)]}


def test_hf_dataset_dict_with_class_labels(tmp_path):
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["neg", "pos"])})
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict(_text_rows(6), features=features),
                               "test": datasets.Dataset.from_dict(_text_rows(2, 100), features=features)})
    dd.save_to_disk(str(tmp_path / "toy"))
    bench = load_hf(str(tmp_path / "toy"))
    dom = bench.domains[0]
    assert bench.kind == "text" and bench.name == "toy" and bench.class_names == ("neg", "pos")
    assert list(dom.x_test) == ["sample number 100", "sample number 101"] and dom.x_test.dtype == object
    np.testing.assert_array_equal(dom.y_train, [0, 1, 0, 1, 0, 1])
    assert dom.y_train.dtype == np.int64 and bench.num_classes == 2


def test_hf_single_dataset_with_string_labels_is_cut_80_20(tmp_path):
    rows = {"sentence": [f"s{i}" for i in range(10)], "tag": ["b", "a"] * 5}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "single"))
    bench = load_hf(str(tmp_path / "single"), text_column="sentence", label_column="tag")
    dom = bench.domains[0]
    assert len(dom.x_train) == 8 and len(dom.x_test) == 2 and bench.class_names == ("a", "b")
    for x, y in zip(np.concatenate([dom.x_train, dom.x_test]), np.concatenate([dom.y_train, dom.y_test]), strict=True):
        assert rows["tag"][int(x[1:])] == bench.class_names[y]


def test_hf_errors_are_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="gone"):
        load_hf(str(tmp_path / "gone"))
    datasets.Dataset.from_dict(_text_rows(4)).save_to_disk(str(tmp_path / "d"))
    with pytest.raises(ValueError, match="no column 'body'; columns: text, label"):
        load_hf(str(tmp_path / "d"), text_column="body")


def test_load_benchmark_dispatches_to_real_loaders(tmp_path):
    for i in range(5):
        _png(tmp_path / "imgs" / "apple" / f"{i}.png", COLOURS["apple"])
    bench = load_benchmark(DataConfig(benchmark="imagefolder", root=str(tmp_path / "imgs")), seed=3)
    assert bench.name == "imgs" and len(bench.domains[0].y_train) == 4
    datasets.Dataset.from_dict(_text_rows(5)).save_to_disk(str(tmp_path / "hfd"))
    bench = load_benchmark(DataConfig(benchmark="hf", root=str(tmp_path / "hfd")), seed=3)
    assert bench.kind == "text" and len(bench.domains[0].y_test) == 1
