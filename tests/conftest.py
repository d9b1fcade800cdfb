"""Test-wide settings: offline, a private model cache, small CPU thread counts."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Pretrained backbones go to a per-session cache, never to the user's home (Ray workers inherit it)."""
    if "FEDMOE_SIM_CACHE" not in os.environ:
        os.environ["FEDMOE_SIM_CACHE"] = str(tmp_path_factory.mktemp("fedmoe-cache"))
    yield


@pytest.fixture
def task_identity(monkeypatch):
    """Flower stamps new Messages with the running task's identity; give tests one."""
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)


@pytest.fixture
def no_md5(monkeypatch):
    """torchvision verifies md5 sums of CIFAR files (and Flowers102 .mat files) even with download=False;
    our fake files cannot match, so integrity means "the file exists" in these tests."""
    import torchvision.datasets.cifar as cifar
    import torchvision.datasets.flowers102 as flowers

    def exists(fpath, md5=None):
        return os.path.isfile(fpath)

    monkeypatch.setattr(cifar, "check_integrity", exists)
    monkeypatch.setattr(flowers, "check_integrity", exists)
