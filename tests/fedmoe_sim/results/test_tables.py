"""The compare table: hand-computed means, intervals, paired differences and units."""

import csv
import math

import pytest

from fedmoe_sim.results.tables import (Cell, build_table, format_cell, human_bytes, write_report, write_table)

MiB = 1024 ** 2
T2, T1 = 4.3027, 12.7062          # t_{0.975} for 2 and 1 degrees of freedom


def _s(strategy, seed, acc, *, domains=None, clients=(0.5, 0.6), up=3 * MiB, wall=10.0, experiment="digits"):
    return {"strategy": strategy, "experiment": experiment, "seed": seed, "config_hash": f"{strategy}{seed}",
            "rounds": 5, "final": {"acc-mean": acc},
            "per_domain": domains if domains is not None else {"mnist": {"acc": acc}, "svhn": acc - 0.1},
            "per_client": [{"client": i, "acc-own": a} for i, a in enumerate(clients)],
            "bytes_up": up, "bytes_down": 2 * up, "bytes_p2p": 0, "wall_s": wall, "schema_version": 1,
            "status": "complete"}


@pytest.fixture
def summaries():
    return [
        # baseline B: seeds 0, 1, 2
        _s("B", 0, 0.70), _s("B", 1, 0.71), _s("B", 2, 0.75),
        # A: same seeds, +10, +11, +9 points; wall 10/20/30 s
        _s("A", 0, 0.80, wall=10.0), _s("A", 1, 0.82, wall=20.0), _s("A", 2, 0.84, wall=30.0),
        # C: shares only seeds 0 and 1 with B (differences -10 and -9 points)
        _s("C", 0, 0.60), _s("C", 1, 0.62), _s("C", 7, 0.90),
        # D: one seed
        _s("D", 0, 0.50, clients=(0.3, 0.9)),
    ]


def test_rows_are_sorted_by_mean_accuracy_with_hand_computed_cells(summaries):
    rows, domains = build_table(summaries, "B")
    assert [r.strategy for r in rows] == ["A", "B", "C", "D"]       # 82.0, 72.0, 70.7, 50.0
    assert domains == ["mnist", "svhn"]
    a = rows[0].cells["acc"]
    assert a.mean == pytest.approx(0.82) and a.n == 3
    assert a.hw == pytest.approx(T2 * 0.02 / math.sqrt(3), abs=1e-5)   # sd = 2 points
    assert rows[0].cells["acc/svhn"].mean == pytest.approx(0.72)
    assert rows[0].cells["worst_client_acc"] == Cell(0.5, 0.0, 3)
    assert rows[0].cells["wall_s"].hw == pytest.approx(T2 * 10 / math.sqrt(3), abs=1e-3)
    assert rows[1].is_baseline and rows[1].diff is None


def test_differences_are_paired_on_the_seeds_both_ran(summaries):
    rows = {r.strategy: r for r in build_table(summaries, "B")[0]}
    assert rows["A"].diff.mean == pytest.approx(0.10) and rows["A"].diff.n == 3
    assert rows["A"].diff.hw == pytest.approx(T2 * 0.01 / math.sqrt(3), abs=1e-5)
    # C: seeds 0 and 1 only -> differences -0.10, -0.09
    assert rows["C"].diff.mean == pytest.approx(-0.095) and rows["C"].diff.n == 2
    assert rows["C"].diff.hw == pytest.approx(T1 * (0.01 / math.sqrt(2)) / math.sqrt(2), abs=1e-5)
    assert rows["D"].diff.mean == pytest.approx(-0.20) and rows["D"].diff.n == 1


def test_markdown_table(summaries, tmp_path):
    md = write_table(summaries, "B", tmp_path)
    assert (tmp_path / "table.md").read_text() == md
    lines = md.splitlines()
    assert lines[0].startswith("| strategy | seeds | mean acc (%) | Δ acc vs baseline (pp) | mean client, own split (%) | worst client (%)")
    assert "| mnist (%) | svhn (%) |" in lines[0]
    row = {line.split(" | ")[0].lstrip("| "): line for line in lines[2:6]}
    assert "| 82.0 ± 5.0 | +10.0 ± 2.5 | 55.0 | 50.0 |" in row["A"]     # mean and worst client: no spread, no ±
    assert "| 3.0 MiB | 6.0 MiB | 0 B | 20.0 ± 24.8 s |" in row["A"]
    assert row["B (baseline)"].split(" | ")[3] == "—"
    assert "| -9.5 ± 6.4 |" in row["C"]
    assert "| 50.0 (n=1) | -20.0 (n=1) | 60.0 (n=1) | 30.0 (n=1) |" in row["D"]


def test_csv_table_holds_raw_numbers(summaries, tmp_path):
    write_table(summaries, "B", tmp_path)
    rows = {r["strategy"]: r for r in csv.DictReader((tmp_path / "table.csv").open())}
    assert float(rows["A"]["acc_mean"]) == pytest.approx(0.82)
    assert float(rows["A"]["acc_hw"]) == pytest.approx(T2 * 0.02 / math.sqrt(3), abs=1e-5)
    assert float(rows["A"]["bytes_up_mean"]) == 3 * MiB
    assert float(rows["A"]["diff_acc_mean"]) == pytest.approx(0.10) and rows["A"]["diff_acc_n"] == "3"
    assert rows["B"]["is_baseline"] == "True" and rows["B"]["diff_acc_mean"] == ""
    assert rows["C"]["seeds"] == "0;1;7"
    assert math.isnan(float(rows["D"]["acc_hw"]))


def test_without_a_baseline_there_is_no_difference_column(summaries, tmp_path):
    md = write_table(summaries, None, tmp_path)
    assert "Δ" not in md and "(baseline)" not in md


def test_a_missing_domain_shows_a_dash(tmp_path):
    md = write_table([_s("A", 0, 0.8, domains={"mnist": 0.8}), _s("B", 0, 0.7, domains={"usps": 0.6})],
                     "A", tmp_path)
    a_row = next(line for line in md.splitlines() if line.startswith("| A"))
    assert a_row.split(" | ")[6:8] == ["80.0 (n=1)", "—"]            # mnist, usps


def test_routing_column_appears_only_when_some_method_routes(summaries, tmp_path):
    assert "routed to own domain" not in write_table(summaries, "B", tmp_path)
    for s, share in zip(summaries[:3], (0.5, 0.6, 0.7), strict=True):     # B routes, the others do not
        s["final"]["server-eval/routing-own"] = share
    md = write_table(summaries, "B", tmp_path)
    head = md.splitlines()[0].split(" | ")
    col = head.index("routed to own domain (%)")
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in md.splitlines()[2:6]}
    assert rows["B (baseline)"][col] == "60.0 ± 24.8" and rows["A"][col] == "—"
    rows = {r["strategy"]: r for r in csv.DictReader((tmp_path / "table.csv").open())}
    assert float(rows["B"]["routing_own_mean"]) == pytest.approx(0.6) and rows["A"]["routing_own_mean"] == ""


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="baseline 'Z'"):
        build_table([_s("A", 0, 0.8)], "Z")
    with pytest.raises(ValueError, match="seed 0"):
        build_table([_s("A", 0, 0.8), _s("A", 0, 0.9)])
    with pytest.raises(ValueError, match="experiments"):
        build_table([_s("A", 0, 0.8), _s("B", 0, 0.8, experiment="text")])
    broken = _s("A", 0, 0.8)
    broken["final"] = {}
    with pytest.raises(KeyError, match="acc-mean"):
        build_table([broken])


def test_human_units():
    assert human_bytes(512) == (1.0, "B")
    assert human_bytes(2048) == (1024.0, "KiB")
    assert human_bytes(3 * MiB) == (MiB, "MiB")
    assert human_bytes(5 * 1024 ** 3) == (1024.0 ** 3, "GiB")
    assert format_cell(Cell(0.852, 0.013, 3), 0.01) == "85.2 ± 1.3"
    assert format_cell(Cell(0.852, math.nan, 1), 0.01) == "85.2 (n=1)"
    assert format_cell(None) == "—"


def test_report_links_plots_relatively_and_records_how(tmp_path, summaries):
    md = write_table(summaries, "B", tmp_path)
    (tmp_path / "plots").mkdir()
    path = write_report(tmp_path, md, [tmp_path / "plots" / "acc_vs_round.png"],
                        {"experiment": "digits", "command": "fedmoe-sim compare --seeds 0,1,2",
                         "seeds": [0, 1, 2], "baseline": "B", "machine": {"cpu_count": 2}})
    text = path.read_text()
    assert path == tmp_path / "report.md"
    assert "](plots/acc_vs_round.png)" in text
    assert "fedmoe-sim compare --seeds 0,1,2" in text
    assert "**seeds**: 0, 1, 2" in text and "**baseline**: B" in text and "cpu_count 2" in text
    assert md.strip() in text
