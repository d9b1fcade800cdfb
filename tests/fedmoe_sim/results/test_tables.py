"""The compare table: hand-computed means, intervals, paired differences, p-values and units."""

import csv
import math

import pytest

from fedmoe_sim.results.tables import (Cell, build_table, format_cell, format_p, human_bytes, write_report,
                                       write_table)

MiB = 1024 ** 2
T2, T1 = 4.3027, 12.7062          # t_{0.975} for 2 and 1 degrees of freedom
# Paired t-test p-values of the fixture, by hand: two-sided p = 1 - t / sqrt(t^2 + 2) on 2 df,
# 1 - 2 atan(t) / pi on 1 df.
# A - B: differences 10, 11, 9 points: t = 10 / (1 / sqrt 3) = 17.32 -> p = 0.003317
# C - B: seeds 0, 1: differences -10, -9: t = -9.5 / (0.7071 / sqrt 2) = -19 -> p = 0.03348
P_A = 1 - 300 ** 0.5 / 302 ** 0.5
P_C = 1 - 2 * math.atan(19) / math.pi


def _s(strategy, seed, acc, *, domains=None, clients=(0.5, 0.6), up=3 * MiB, wall=10.0, experiment="digits",
       **extra):
    return {**extra, "strategy": strategy, "experiment": experiment, "seed": seed, "config_hash": f"{strategy}{seed}",
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


def test_p_values_are_paired_t_tests_holm_adjusted_over_the_defined_ones(summaries):
    rows = {r.strategy: r for r in build_table(summaries, "B")[0]}
    assert rows["A"].p == pytest.approx(P_A, rel=1e-9) and rows["C"].p == pytest.approx(P_C, rel=1e-9)
    assert math.isnan(rows["D"].p) and math.isnan(rows["D"].p_holm)    # one pair: no test, not counted
    # k = 2 (D has no test): A smallest -> 2 * P_A = 0.00663; C -> max(2 P_A, 1 * P_C) = P_C
    assert rows["A"].p_holm == pytest.approx(2 * P_A, rel=1e-9) and rows["C"].p_holm == pytest.approx(P_C, rel=1e-9)
    assert rows["B"].p is None and rows["B"].p_holm is None


def test_rows_are_variants_and_pairs_need_the_same_partitions():
    # a grid over a data key: one strategy, three variants; seed 1 of "alpha=0.1" saw other partitions
    summaries = [_s("fedavg", seed, acc, data_fingerprint=f"d{seed}")
                 for seed, acc in ((0, 0.70), (1, 0.72), (2, 0.71))]
    summaries += [_s("fedmoe-da", seed, acc, variant="fedmoe-da[alpha=1]", data_fingerprint=f"d{seed}")
                  for seed, acc in ((0, 0.75), (1, 0.78), (2, 0.74))]
    summaries += [_s("fedmoe-da", seed, acc, variant="fedmoe-da[alpha=0.1]", data_fingerprint=fp)
                  for seed, acc, fp in ((0, 0.60, "d0"), (1, 0.90, "other"), (2, 0.62, "d2"))]
    summaries += [_s("fedmoe-da", 0, 0.5, variant="fedmoe-da[alpha=0]", data_fingerprint="x")]   # no pair at all
    rows = {r.strategy: r for r in build_table(summaries, "fedavg")[0]}
    assert set(rows) == {"fedavg", "fedmoe-da[alpha=1]", "fedmoe-da[alpha=0.1]", "fedmoe-da[alpha=0]"}
    wide = rows["fedmoe-da[alpha=1]"].diff
    assert wide.n == 3 and wide.mean == pytest.approx(0.0467, abs=1e-4)                 # +5, +6, +3 points
    assert rows["fedmoe-da[alpha=0.1]"].diff.n == 2                      # seed 1 is not a pair
    assert rows["fedmoe-da[alpha=0.1]"].diff.mean == pytest.approx(-0.095)
    assert rows["fedmoe-da[alpha=0]"].diff is None and rows["fedmoe-da[alpha=0]"].p is None
    # the baseline may itself be a variant
    rows = {r.strategy: r for r in build_table(summaries, "fedmoe-da[alpha=1]")[0]}
    assert rows["fedavg"].diff.mean == pytest.approx(-0.0467, abs=1e-4) and rows["fedmoe-da[alpha=1]"].is_baseline


def test_constant_differences_have_no_p_value(tmp_path):
    summaries = [_s("B", seed, acc) for seed, acc in ((0, 0.7), (1, 0.8), (2, 0.6))]
    summaries += [_s("A", seed, acc) for seed, acc in ((0, 0.8), (1, 0.9), (2, 0.7))]   # +10 points on every seed
    rows = {r.strategy: r for r in build_table(summaries, "B")[0]}
    assert math.isnan(rows["A"].p)
    md = write_table(summaries, "B", tmp_path)
    assert next(line for line in md.splitlines() if line.startswith("| A ")).split(" | ")[4] == "—"
    assert "p: `—` throughout: a paired test needs 2 or more paired seeds" in md


def test_markdown_table(summaries, tmp_path):
    md = write_table(summaries, "B", tmp_path)
    assert (tmp_path / "table.md").read_text() == md
    lines = md.splitlines()
    assert lines[0].startswith("| strategy | seeds | mean acc (%) | Δ acc vs baseline (pp) | p vs baseline (Holm) "
                               "| mean client, own split (%) | worst client (%)")
    assert "| mnist (%) | svhn (%) |" in lines[0]
    row = {line.split(" | ")[0].lstrip("| "): line for line in lines[2:6]}
    assert "| 82.0 ± 5.0 | +10.0 ± 2.5 | 0.00663 | 55.0 | 50.0 |" in row["A"]   # clients: no spread, no ±
    assert "| 3.0 MiB | 6.0 MiB | 0 B | 20.0 ± 24.8 s |" in row["A"]
    assert row["B (baseline)"].split(" | ")[3:5] == ["—", "—"]
    assert "| -9.5 ± 6.4 | 0.0335 |" in row["C"]
    assert "| 50.0 (n=1) | -20.0 (n=1) | — | 60.0 (n=1) | 30.0 (n=1) |" in row["D"]
    legend = lines[-1]
    assert "paired two-sided t-test" in legend and "Holm-corrected across the k = 2 comparisons shown" in legend
    assert "With 3 paired seeds the test has little power" in legend


def test_csv_table_holds_raw_numbers(summaries, tmp_path):
    write_table(summaries, "B", tmp_path)
    rows = {r["strategy"]: r for r in csv.DictReader((tmp_path / "table.csv").open())}
    assert float(rows["A"]["acc_mean"]) == pytest.approx(0.82)
    assert float(rows["A"]["acc_hw"]) == pytest.approx(T2 * 0.02 / math.sqrt(3), abs=1e-5)
    assert float(rows["A"]["bytes_up_mean"]) == 3 * MiB
    assert float(rows["A"]["diff_acc_mean"]) == pytest.approx(0.10) and rows["A"]["diff_acc_n"] == "3"
    assert float(rows["A"]["diff_acc_p"]) == pytest.approx(P_A)
    assert float(rows["A"]["diff_acc_p_holm"]) == pytest.approx(2 * P_A)
    assert float(rows["C"]["diff_acc_p"]) == float(rows["C"]["diff_acc_p_holm"]) == pytest.approx(P_C)
    assert math.isnan(float(rows["D"]["diff_acc_p"])) and math.isnan(float(rows["D"]["diff_acc_p_holm"]))
    assert rows["B"]["is_baseline"] == "True" and rows["B"]["diff_acc_mean"] == "" and rows["B"]["diff_acc_p"] == ""
    assert rows["C"]["seeds"] == "0;1;7"
    assert math.isnan(float(rows["D"]["acc_hw"]))


def test_without_a_baseline_there_is_no_difference_column(summaries, tmp_path):
    md = write_table(summaries, None, tmp_path)
    assert "Δ" not in md and "(baseline)" not in md and "Holm" not in md


def test_a_missing_domain_shows_a_dash(tmp_path):
    md = write_table([_s("A", 0, 0.8, domains={"mnist": 0.8}), _s("B", 0, 0.7, domains={"usps": 0.6})],
                     "A", tmp_path)
    a_row = next(line for line in md.splitlines() if line.startswith("| A"))
    assert a_row.split(" | ")[7:9] == ["80.0 (n=1)", "—"]            # mnist, usps


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
    assert [format_p(p) for p in (0.0351, 0.06, 1.0, 0.001, 0.000999, math.nan, None)] == [
        "0.0351", "0.0600", "1.00", "0.00100", "<0.001", "—", "—"]


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
