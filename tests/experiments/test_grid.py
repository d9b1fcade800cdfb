"""compare --grid: the planned runs (no simulation): crossing, scoping, collapsing, naming, refusals."""

import pytest

from experiments.cli import main
from experiments.compare import GridAxis, check_identical_partitions, plan_sweep
from fedmoe_sim.config import ConfigError


def _plan(strategies, grid, seeds=(0,), baseline="", overrides=None, tmp="/tmp/never-written"):
    return plan_sweep("digits-domains", strategies, list(seeds), [GridAxis.parse(g) for g in grid], baseline, tmp,
                      overrides or {})


def test_axes_are_crossed_with_each_other_strategies_and_seeds():
    sweep = _plan(["fedavg", "local"], ["train.lr=0.05,0.1", "train.local_epochs=1,2"], seeds=(0, 1))
    assert len(sweep.runs) == 2 * 2 * 2 * 2
    assert sweep.variants == [f"{s}[lr={lr},local_epochs={e}]" for s in ("fedavg", "local")
                              for lr in ("0.05", "0.1") for e in (1, 2)]
    one = next(r for r in sweep.runs if r.variant == "local[lr=0.1,local_epochs=2]" and r.seed == 1)
    assert (one.cfg.train.lr, one.cfg.train.local_epochs, one.cfg.seed) == (0.1, 2, 1)
    assert one.cfg.out.endswith("runs/local_lr=0.1_local_epochs=2-seed1")
    assert len({r.cfg.out for r in sweep.runs}) == len(sweep.runs)


def test_a_key_a_strategy_does_not_read_gives_it_one_run_not_several_identical_ones():
    sweep = _plan(["fedmoe-da", "fedavg"], ["fedmoe_da.top_p=1,3", "fedmoe_da.tau=0.1,1"])
    assert sweep.variants == ["fedmoe-da[top_p=1,tau=0.1]", "fedmoe-da[top_p=1,tau=1]", "fedmoe-da[top_p=3,tau=0.1]",
                              "fedmoe-da[top_p=3,tau=1]", "fedavg"]
    assert any("fedavg does not depend on --grid fedmoe_da.top_p" in n for n in sweep.notes)


def test_a_key_the_method_forces_gives_one_run():
    # model.backbone defines fedmoe-da (mixer-moe): a grid over it cannot change the run
    sweep = _plan(["fedmoe-da"], ["model.backbone=mixer,mixer-moe"])
    assert sweep.variants == ["fedmoe-da"]


def test_a_scoped_axis_varies_one_strategy_only():
    sweep = _plan(["fedavg", "local"], ["local:train.lr=0.05,0.1"], baseline="fedavg")
    assert sweep.variants == ["fedavg", "local[lr=0.05]", "local[lr=0.1]"]
    assert {r.cfg.train.lr for r in sweep.runs if r.strategy == "fedavg"} == {_plan(["fedavg"], []).runs[0].cfg.train.lr}
    assert sweep.baseline == "fedavg"
    sweep = _plan(["fedavg", "local", "fedavg-moe"], ["fedavg,local:train.lr=0.05,0.1"])
    assert sweep.variants == ["fedavg[lr=0.05]", "fedavg[lr=0.1]", "local[lr=0.05]", "local[lr=0.1]", "fedavg-moe"]
    assert "--grid fedavg,local:train.lr=0.05,0.1" in sweep.command


def test_a_single_value_is_applied_and_named_where_it_changes_the_run():
    sweep = _plan(["fedavg", "local"], ["local:train.lr=0.07", "train.local_epochs=10,2"])   # 10 is the default
    assert sweep.variants == ["fedavg[local_epochs=10]", "fedavg[local_epochs=2]", "local[lr=0.07,local_epochs=10]",
                              "local[lr=0.07,local_epochs=2]"]
    assert {r.cfg.train.lr for r in sweep.runs if r.strategy == "local"} == {0.07}


def test_keys_that_end_alike_keep_their_full_names():
    sweep = _plan(["fedavg"], ["train.lr=0.05,0.1", "fedgh.lr=0.01,0.02"])   # fedavg does not read fedgh.*
    assert sweep.variants == ["fedavg[lr=0.05]", "fedavg[lr=0.1]"]
    sweep = _plan(["fedgh"], ["train.lr=0.05,0.1", "fedgh.lr=0.01,0.02"])
    assert sweep.variants[0] == "fedgh[train.lr=0.05,fedgh.lr=0.01]"


def test_baseline_names_a_variant_or_a_strategy_with_one_variant():
    sweep = _plan(["fedavg", "local"], ["local:train.lr=0.05,0.1"], baseline="local[lr=0.1]")
    assert sweep.baseline == "local[lr=0.1]"
    with pytest.raises(ConfigError, match="has 2 grid variants; name one of them"):
        _plan(["fedavg", "local"], ["local:train.lr=0.05,0.1"], baseline="local")
    with pytest.raises(ConfigError, match="is not one of the compared variants"):
        _plan(["fedavg"], [], baseline="metamoe")


@pytest.mark.parametrize("grid, message", [
    (["nosuch.key=1,2"], "unknown config key 'nosuch.key'"),
    (["train.lr=fast,slow"], "train.lr must be a number"),
    (["seed=1,2"], "chosen by compare itself"),
    (["train.lr=0.1,0.1"], "lists a value twice"),
    (["pfedmoe:train.lr=0.1,0.2"], "'pfedmoe' is not among the compared strategies"),
    (["train.lr=0.1,0.2", "train.lr=0.3"], "varies train.lr twice"),
    (["train.lr"], "expects [STRATEGY:]KEY=V1,V2"),
    (["train.lr=0.1,"], "expects [STRATEGY:]KEY=V1,V2"),
])
def test_bad_grids_are_refused_before_anything_runs(grid, message):
    with pytest.raises(ConfigError) as err:
        _plan(["fedavg", "local"], grid)
    assert message in str(err.value)


def test_a_grid_key_also_set_is_refused_on_the_command_line(capsys, tmp_path):
    code = main(["compare", "--strategies", "fedavg", "--grid", "train.lr=0.1,0.2", "--set", "train.lr=0.3",
                 "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 2 and "both set it" in err and err.count("\n") == 1
    assert not (tmp_path / "s").exists()


def test_partitions_may_differ_across_a_data_grid_but_not_within_a_data_point():
    sweep = _plan(["fedavg", "local"], ["data.alpha=0.1,0.5"], overrides={"data.partitioner": "dirichlet"})
    cfgs = [r.cfg for r in sweep.runs]
    fp = {0.1: "aaaa", 0.5: "bbbb"}
    ok = [{"seed": c.seed, "data_fingerprint": fp[c.data.alpha]} for c in cfgs]
    check_identical_partitions(ok, cfgs)
    bad = [dict(s) for s in ok]
    bad[0]["data_fingerprint"] = "cccc"
    with pytest.raises(RuntimeError, match="different partitions"):
        check_identical_partitions(bad, cfgs)


def test_a_sweep_directory_bound_by_an_older_recipe_is_reused_when_its_config_is_the_same(tmp_path):
    import json

    from experiments.compare import bind_sweep_dir

    sweep = _plan(["fedavg"], [], tmp=tmp_path / "s")
    flat = json.loads(sweep.base.to_json())
    del flat["log"], flat["faults"]                  # keys added since, as an older directory lacks them
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "sweep.json").write_text(json.dumps({"base_config_hash": "older-recipe", "base_config": flat}))
    bind_sweep_dir(sweep.out, sweep.base)            # same config: accepted, and rebound under today's hash
    assert json.loads((tmp_path / "s" / "sweep.json").read_text())["base_config_hash"] != "older-recipe"
    other = _plan(["fedavg"], [], overrides={"train.lr": 0.07}, tmp=tmp_path / "s")
    with pytest.raises(ConfigError, match="holds a sweep of another config"):
        bind_sweep_dir(other.out, other.base)
