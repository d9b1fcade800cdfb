"""Bad input: one clear line naming the value and what is allowed, exit code 2, no traceback."""

import subprocess
import sys

import pytest

from experiments.cli import main


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["run", "--strategy", "fedprox"], "unknown strategy 'fedprox'; allowed: fedavg, local"),
        (["run", "--experiment", "mnist"], "unknown experiment 'mnist'; allowed: digits-domains"),
        (["run", "--clients", "0"], "federation.num_clients must be >= 1 (got 0)"),
        (["run", "--rounds", "-2"], "federation.rounds must be >= 0 (got -2)"),
        (["run", "--set", "federation.fraction_train=0"], "federation.fraction_train must be in (0, 1] (got 0.0)"),
        (["run", "--set", "federation.fraction_evaluate=1.2"], "federation.fraction_evaluate must be in (0, 1]"),
        (["run", "--set", "train.lr=abc"], "train.lr must be a number (got 'abc')"),
        (["run", "--set", "nonsense=1"], "unknown config key 'nonsense'"),
        (["run", "--set", "data.domains=rot90,sideways", "--rounds", "0"], "sideways"),
        (["run", "--set", "data.benchmark=imagefolder", "--set", "data.root=/no/such/dir"], "/no/such/dir"),
        (["run", "--experiment", "metamoe-digits", "--strategy", "metamoe", "--set", "metamoe.late_domains=gamma,sepia",
          "--set", "model.pretrain_steps=50"], "unknown domain 'sepia' in metamoe.late_domains; allowed: rot90, invert"),
        (["run", "--clients", "many"], "argument --clients: invalid int value: 'many'"),
        (["run", "--bogus-flag"], "unrecognized arguments: --bogus-flag"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["show", "nope"], "unknown experiment 'nope'"),
        (["run", "--faults", "crash=2"], "faults.crash must be a probability in [0, 1] (got 2.0)"),
        (["run", "--faults", "boom=0.1"], "--faults expects KIND=P with KIND one of crash, hang, corrupt, slow"),
        (["run", "--faults", "crash=0.6,hang=0.6"], "probabilities that sum to <= 1"),
        (["run", "--resume", "/no/such/run"], "--resume /no/such/run: no fedmoe-sim run there (no config.json)"),
        (["run", "--set", "federation.aggregate=max"], "federation.aggregate must be one of mean, median, trimmed-mean"),
        (["run", "--set", "federation.norm_bound=0.5"], "federation.norm_bound must be > 1"),
        (["run", "--set", "federation.trim_fraction=0.5"], "federation.trim_fraction must be in [0, 0.5)"),
        (["run", "--set", "federation.checkpoint_min_s=-1"], "federation.checkpoint_min_s must be a finite number"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, fragment, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert fragment in err
    assert err.count("\n") == 1 and err.startswith("fedmoe-sim: error: ")
    assert "Traceback" not in err


def test_console_script_exits_2_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "experiments.cli", "run", "--strategy", "nope"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    from experiments.registry import METHODS

    assert proc.stderr.strip() == f"fedmoe-sim: error: unknown strategy 'nope'; allowed: {', '.join(METHODS)}"


def test_show_lists_every_key_with_its_value(capsys):
    assert main(["show", "digits-domains", "--set", "federation.rounds=9"]) == 0
    out = capsys.readouterr().out
    assert "federation.rounds" in out and "= 9" in out and "data.benchmark" in out


def test_experiments_and_strategies_list_one_line_each(capsys):
    assert main(["experiments"]) == 0
    assert main(["strategies"]) == 0
    out = capsys.readouterr().out
    assert "digits-domains" in out and "fedavg" in out and "local" in out
