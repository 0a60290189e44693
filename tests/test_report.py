"""lsq.report on fabricated runs with known numbers: collection, tables, claims, analysis,
figures."""

from __future__ import annotations

import json
import warnings

import pandas as pd
import pytest
from report_fixtures import FINAL_TOP1, write_fake_runs, write_full_runs, write_run
from scipy import stats as scipy_stats

from lsq.report import analysis, claims, collect, figures, run_tables, tables
from lsq.report.collect import RunWarning, load_runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = write_fake_runs(tmp_path_factory.mktemp("runs"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RunWarning)
        return load_runs(root)


def page(runs, dataset, profile):
    return runs.select(dataset, profile)


def numbers(runs, dataset, profile):
    selected = page(runs, dataset, profile)
    return tables.results_table(selected.summaries, selected.in_progress, dataset).set_index("ID")


# --- collect -------------------------------------------------------------------------------------


def test_summaries_hold_finished_runs_only(runs):
    expected = sum(len(seeds) for pages in FINAL_TOP1.values() for seeds in pages.values())
    assert len(runs.summaries) == expected
    fashion = runs.summaries[(runs.summaries["dataset"] == "fashion-mnist")]
    assert sorted(fashion[(fashion["row"] == 4) & (fashion["ablation"] == "")]["seed"]) == [0, 1]
    assert set(runs.summaries["ablation"]) >= {"", "init-x4", "sched-step"}
    assert runs.pages() == [("fashion-mnist", "quick"), ("cifar10", "paper"),
                            ("imagenet", "quick"), ("synthetic", "smoke")]


def test_profiles_are_ordered_by_the_one_profiles_list(tmp_path, monkeypatch):
    root = write_full_runs(write_fake_runs(tmp_path, ("fashion-mnist",)))
    with pytest.warns(RunWarning):  # the fabricated corrupt line
        loaded = load_runs(root)
    assert loaded.pages() == [("fashion-mnist", "full"), ("fashion-mnist", "quick")]
    assert set(collect.longest_profile(loaded.summaries, "fashion-mnist")["profile"]) == {"full"}
    # The one list decides: reversed, the quick profile comes first and counts as the longest.
    monkeypatch.setattr(collect, "PROFILES", ("smoke", "quick", "full", "paper"))
    assert loaded.pages() == [("fashion-mnist", "quick"), ("fashion-mnist", "full")]
    assert set(collect.longest_profile(loaded.summaries, "fashion-mnist")["profile"]) == {"quick"}
    assert collect.longest_profile(loaded.summaries, "cifar10") is None


def test_in_progress_rows_say_so_in_tables_and_claims(tmp_path):
    selected = load_runs(write_full_runs(tmp_path)).select("fashion-mnist", "full")
    shown = tables.flatten(tables.format_results_table(
        tables.results_table(selected.summaries, selected.in_progress, "fashion-mnist"),
        "fashion-mnist")).set_index("ID")
    assert shown.loc["2", ["seeds", "test_acc", "drop_acc"]].tolist() == [
        "0 (+1 running)", "in progress", "in progress"]
    assert shown.loc["4", ["seeds", "test_acc"]].tolist() == ["—", "not run"]
    assert shown.loc["3", "seeds"] == "2 (+1 running)"
    v = {v.claim.key: v for v in claims.evaluate_claims(selected.summaries, "fashion-mnist",
                                                         selected.in_progress)}
    assert [p.note for p in v["first-last-not-obvious"].parts] == ["row 2 in progress",
                                                                   "row 4 not run"]
    assert v["full-quantization-gap"].verdict == claims.NOT_MEASURED
    started = load_runs(write_full_runs(tmp_path / "started", started_only=True))
    first = started.select("fashion-mnist", "full")
    assert first.summaries.empty and len(first.in_progress) == 2
    table = tables.flatten(tables.format_results_table(
        tables.results_table(first.summaries, first.in_progress, "fashion-mnist"), "fashion-mnist"))
    assert table.loc[0, ["seeds", "test_acc"]].tolist() == ["0 (+2 running)", "in progress"]
    curves = figures.accuracy_curves(selected, (1, 2)), figures.accuracy_curves(selected, (3, 4))
    assert "row 2: in progress" in labels(curves[0]) and "row 4: not run" in labels(curves[1])


def test_in_progress_run_is_listed_not_a_result(runs):
    waiting = runs.in_progress
    assert waiting[["dataset", "row", "seed", "epochs_done", "epochs_planned"]].values.tolist() == [
        ["fashion-mnist", 4, 2, 1, 2.0]]
    assert not ((runs.epochs["row"] == 4) & (runs.epochs["seed"] == 2)
                & (runs.epochs["dataset"] == "fashion-mnist")).any()
    shown = run_tables.in_progress_table(waiting)
    assert shown.values.tolist() == [["fashion-mnist/quick/row4/seed2", "1 of 2"]]


def test_corrupt_metrics_line_is_skipped_with_a_warning(tmp_path):
    root = write_fake_runs(tmp_path, ("fashion-mnist",))
    with pytest.warns(RunWarning, match="line 4 is not valid JSON"):
        loaded = load_runs(root)
    assert loaded.problems == ["fashion-mnist/quick/row1/seed0/metrics.jsonl: "
                               "line 4 is not valid JSON; skipped"]
    run = loaded.epochs[(loaded.epochs["row"] == 1) & (loaded.epochs["seed"] == 0)
                        & (loaded.epochs["ablation"] == "")]
    assert run["epoch"].tolist() == [0, 1, 2]


def test_unreadable_summary_means_not_finished(tmp_path):
    run_dir = write_run(tmp_path, "synthetic", "smoke", "row0", 0, 10.0, data_kind="synthetic")
    (run_dir / "summary.json").write_text('{"dataset": "synth')
    with pytest.warns(RunWarning, match="unreadable"):
        loaded = load_runs(tmp_path)
    assert loaded.summaries.empty
    assert loaded.in_progress["path"].tolist() == ["synthetic/smoke/row0/seed0"]


def test_missing_runs_dir_gives_empty_frames(tmp_path):
    loaded = load_runs(tmp_path / "nothing")
    assert loaded.summaries.empty and loaded.epochs.empty and loaded.pages() == []
    table = tables.flatten(tables.format_results_table(
        tables.results_table(loaded.summaries, loaded.in_progress, "cifar10"), "cifar10"))
    assert set(table["test_acc"]) == {"not run"}
    assert table["test_acc (paper)"].tolist() == ["89.56", "89.69", "89.55", "87.68", "87.24"]


def test_epochs_and_exploded_step_sizes(runs):
    epochs = runs.epochs
    quantized = epochs[(epochs["dataset"] == "fashion-mnist") & (epochs["row"] == 3)
                       & (epochs["seed"] == 0) & (epochs["ablation"] == "")]
    assert quantized["epoch"].tolist() == [0, 1, 2]  # epoch 0: after step-size init
    assert quantized["test_top1"].tolist() == [88.0, 89.0, 90.0]
    steps = runs.step_sizes
    row3 = steps[(steps["dataset"] == "fashion-mnist") & (steps["row"] == 3) & (steps["seed"] == 0)
                 & (steps["ablation"] == "") & (steps["epoch"] == 0)]
    assert len(row3) == 36  # 18 convs x (weight, input), first/last float
    assert "layer1.0.conv1.input_quantizer" in set(row3["layer"])
    float_steps = steps[steps["row"] == 0]
    assert float_steps.empty
    imagenet_float = epochs[(epochs["dataset"] == "imagenet") & (epochs["row"] == 0)]
    assert imagenet_float["epoch"].unique().tolist() == [0]  # pretrained: evaluation only


# --- tables ----------------------------------------------------------------------------------


def test_fashion_table_means_and_paired_drops(runs):
    n = numbers(runs, "fashion-mnist", "quick")
    assert n.loc[0, "top1_mean"] == pytest.approx(92.2)
    assert n.loc[0, "top1_std"] == pytest.approx(0.2)
    assert n.loc[0, "top1_n"] == 3
    assert n.loc[1, "drop_top1_mean"] == pytest.approx(0.1)  # paired: 0.1, 0.3, -0.1
    assert n.loc[1, "drop_top1_std"] == pytest.approx(0.2)
    assert n.loc[3, "drop_top1_mean"] == pytest.approx(2.0)
    # row 4 has seeds 0 and 1 only (seed 2 in progress): paired over those two seeds
    assert n.loc[4, "top1_n"] == 2
    assert n.loc[4, "drop_top1_mean"] == pytest.approx(2.9)
    assert n.loc[4, "in_progress"] == 1
    assert n["epochs_max"].tolist() == [4, 2, 2, 2, 2]


def test_fashion_table_display(runs):
    n = numbers(runs, "fashion-mnist", "quick").reset_index()
    shown = tables.flatten(tables.format_results_table(n, "fashion-mnist"))
    # Fashion-MNIST stands in for CIFAR-10: the published CIFAR-10 rows sit beside it.
    assert shown.columns.tolist() == [
        "ID", "quan_lr", "constr_w", "constr_a", "lr_base", "epoch (paper 90)", "seeds",
        "test_acc", "test_acc (CIFAR-10 paper)", "Δ test_acc",
        "drop_acc", "drop_acc (CIFAR-10 paper)", "Δ drop_acc"]
    assert shown.loc[0].tolist() == ["0", "no", "none", "none", "0.1", "4", "3",
                                     "92.20 ± 0.20", "89.56", "+2.64", "reference", "—", "—"]
    assert shown.loc[1, ["drop_acc", "drop_acc (CIFAR-10 paper)", "Δ drop_acc"]].tolist() == [
        "+0.10 ± 0.20", "-0.13", "+0.23"]
    assert shown.loc[4, ["seeds", "test_acc", "drop_acc"]].tolist() == [
        "2 (+1 running)", "89.30 ± 0.42", "+2.90 ± 0.14"]
    # A dataset that stands in for none has no published columns.
    synthetic = tables.flatten(tables.format_results_table(
        numbers(runs, "synthetic", "smoke").reset_index(), "synthetic"))
    assert not any(c.endswith("paper)") or c.startswith("Δ") for c in synthetic.columns)


def test_stand_in_note_says_why_and_what_it_does_not_show():
    note = tables.stand_in_note("fashion-mnist")
    for words in ("stands in for CIFAR-10", "ResNet-20", "28×28 grey images", "1-channel stem",
                  "cannot be downloaded", "What it does not show"):
        assert words in note
    assert tables.stand_in_note("cifar10") == tables.stand_in_note("synthetic") == ""


def test_cifar_table_published_and_deltas(runs):
    n = numbers(runs, "cifar10", "paper")
    assert n.loc[1, "paper_top1"] == 89.69
    assert n.loc[1, "delta_top1"] == pytest.approx(91.3 - 89.69)
    assert n.loc[1, "drop_top1_mean"] == pytest.approx(-0.1)
    assert n.loc[1, "delta_drop_top1"] == pytest.approx(-0.1 - (-0.13))
    assert n.loc[0, "paper_top1"] == 89.56 and n.loc[0, "delta_top1"] == pytest.approx(1.64)
    grouped = tables.format_results_table(n.reset_index(), "cifar10")
    assert list(grouped.columns[7:10]) == [("test_acc", "measured"), ("test_acc", "paper"),
                                           ("test_acc", "Δ")]
    shown = tables.flatten(grouped).set_index("ID")
    assert shown.loc["4", "test_acc"] == "not run"
    assert shown.loc["4", "drop_acc"] == "not run"
    assert shown.loc["4", "seeds"] == "—"
    assert shown.loc["1", "test_acc"] == "91.30 ± 0.14"
    assert shown.loc["4", "test_acc (paper)"] == "87.24"
    assert shown.loc["4", "Δ test_acc"] == "—"
    assert shown.loc["4", "epoch (paper 90)"] == "—"
    assert shown.loc["1", "Δ test_acc"] == "+1.61"
    assert shown.loc["1", "Δ drop_acc"] == "+0.03"


def test_imagenet_table_has_top1_and_top5(runs):
    n = numbers(runs, "imagenet", "quick")
    assert n.loc[1, "drop_top1_mean"] == pytest.approx(9.26)
    assert n.loc[1, "drop_top5_mean"] == pytest.approx(6.08)
    assert n.loc[2, "delta_top5"] == pytest.approx(81.0 - 87.70)
    shown = tables.flatten(tables.format_results_table(n.reset_index(), "imagenet"))
    for column in ("acc_top1", "acc_top5", "drop_top1", "drop_top5", "acc_top5 (paper)",
                   "Δ drop_top5"):
        assert column in shown.columns
    assert shown.loc[0, "epoch (paper 90)"] == "0"
    assert shown.loc[3, "acc_top5"] == "not run"


def test_single_seed_has_no_std(runs):
    n = numbers(runs, "synthetic", "smoke").reset_index()
    shown = tables.flatten(tables.format_results_table(n, "synthetic"))
    assert shown.loc[1, ["seeds", "test_acc", "drop_acc"]].tolist() == ["1", "11.00", "+1.00"]


def test_unpaired_difference_when_seed_sets_overlap_partly():
    first = pd.Series({0: 90.0, 1: 91.0})
    second = pd.Series({1: 89.0, 2: 88.0})
    estimate = tables.paired_difference(first, second)
    assert not estimate.paired and estimate.mean == pytest.approx(2.0)
    assert estimate.format() == "2.00 (unpaired)"
    nested = tables.paired_difference(pd.Series({0: 90.0, 1: 91.0, 2: 92.0}),
                                      pd.Series({0: 89.0, 1: 89.0}))
    assert nested.paired and nested.n == 2 and nested.mean == pytest.approx(1.5)


def test_implied_float_baselines():
    implied = tables.implied_float_baselines("cifar10")
    assert implied["implied float top1"].tolist() == [89.56, 89.54, 89.56, 89.56]
    note = tables.implied_baseline_note("cifar10")
    assert "uses top1 89.56 (rows 1, 3, 4; row 2 implies 89.54)" in note
    assert tables.implied_float_baselines("fashion-mnist").empty


def test_compute_totals_in_device_hours(runs):
    totals = run_tables.compute_totals(page(runs, "fashion-mnist", "quick").summaries)
    assert totals.iloc[-1].tolist() == ["total", 27, "2.700"]  # 27 runs x 360 s


# --- claims ----------------------------------------------------------------------------------


def verdicts(runs, dataset, profile):
    selected = page(runs, dataset, profile)
    return {v.claim.key: v for v in claims.evaluate_claims(selected.summaries, dataset)}


def test_claims_on_fashion(runs):
    v = verdicts(runs, "fashion-mnist", "quick")
    # drop row 1: 0.1, 0.3, -0.1 per seed -> 95 % CI [-0.40, +0.60], wholly below 1: holds.
    no_drop = v["weight-only-no-drop"]
    assert no_drop.verdict == claims.HOLDS and no_drop.n_seeds == 3
    assert no_drop.evidence == "drop row 1 = +0.10, 95 % CI [-0.40, +0.60] (n=3)"
    # ... but not wholly below 0: "generalises" is inconclusive, and 18 seeds would settle it.
    generalises = v["weight-only-generalises"]
    assert generalises.verdict == claims.INCONCLUSIVE and generalises.seeds_needed == 18
    assert v["activations-cost"].verdict == claims.HOLDS  # [+1.40, +2.40] and [+1.13, +3.67]
    # row 1 − row 2 lies within ±1, row 3 − row 4 (+1.0, +0.8) reaches past +1: 11 seeds.
    not_obvious = v["first-last-not-obvious"]
    assert [p.verdict for p in not_obvious.parts] == [claims.HOLDS, claims.INCONCLUSIVE]
    assert not_obvious.verdict == claims.INCONCLUSIVE and not_obvious.seeds_needed == 11
    assert v["full-quantization-gap"].verdict == claims.INCONCLUSIVE  # [+1.63, +4.17] vs > 2
    # The stand-in's "paper" is CIFAR-10's table: row 4 drops 2.32 there.
    assert v["full-quantization-gap"].paper_verdict == "holds (CIFAR-10 table)"


def test_claims_table_shows_mean_interval_seeds_threshold_and_verdict(runs):
    shown = claims.claims_table(list(verdicts(runs, "fashion-mnist", "quick").values()))
    assert shown.columns.tolist() == claims.CLAIM_COLUMNS
    line = shown.set_index("comparison").loc["row 1 − row 2; row 3 − row 4"]
    assert (line["mean"], line["95 % CI"], line["seeds"]) == (
        "+0.40; +0.90", "[-0.10, +0.90]; [-0.37, +2.17]", "3; 2")
    assert (line["threshold"], line["verdict"], line["seeds to settle"]) == (
        "within ±1.00", "inconclusive", "11")
    settled = shown.set_index("comparison").loc["row 1 − row 3; row 2 − row 4"]
    assert (settled["verdict"], settled["seeds to settle"]) == ("holds", "—")


def test_claims_not_measured_does_not_hold_and_paper_verdicts(runs):
    v = verdicts(runs, "cifar10", "paper")
    assert v["full-quantization-gap"].verdict == claims.NOT_MEASURED  # row 4 not run
    assert v["full-quantization-gap"].n_seeds == 0
    assert v["full-quantization-gap"].paper_verdict == claims.HOLDS  # 2.32 > 2
    assert v["first-last-not-obvious"].paper_verdict == claims.HOLDS  # 0.14, 0.44
    # Half of it measured: no verdict, and no seed count settles a comparison not run.
    part = v["first-last-not-obvious"]
    assert part.verdict == claims.INCONCLUSIVE and part.seeds_needed is None
    assert "only part of the comparison" in part.caveat
    assert part.parts[1].note == "row 4 not run"
    imagenet = verdicts(runs, "imagenet", "quick")
    assert "first-last-matters" in imagenet
    # drop row 1: 9.76, 8.76 -> [+2.91, +15.61], wholly above 1: does not hold.
    no_drop = imagenet["weight-only-no-drop"]
    assert no_drop.verdict == claims.FAILS and no_drop.seeds_needed is None
    assert no_drop.paper_verdict == claims.HOLDS  # 0.26
    # row 1 − row 2 is 3.0 for both seeds: sd 0, the interval is the point, above 1.
    matters = imagenet["first-last-matters"].parts[0]
    assert (matters.interval.sd, matters.interval.lo, matters.verdict) == (0.0, 3.0, claims.HOLDS)


def test_single_seed_and_synthetic_verdicts_say_so(runs):
    for verdict in verdicts(runs, "synthetic", "smoke").values():
        assert verdict.n_seeds == 1 and verdict.verdict == claims.INCONCLUSIVE
        assert verdict.seeds_needed is None
        assert "synthetic data" in verdict.caveat and "single seed" in verdict.caveat
    shown = claims.claims_table(list(verdicts(runs, "synthetic", "smoke").values()))
    assert set(shown["seeds to settle"]) == {"—"}
    assert shown.loc[0, "95 % CI"] == "none (1 seed)"


def test_cross_dataset_first_last_claim(runs):
    verdict = claims.first_last_across_datasets(runs.summaries)
    # Per seed: imagenet 3.0, 3.0 (rows 1 − 2) minus cifar10 0.4, 0.2 -> 2.6, 2.8; CI above 1.
    assert verdict.verdict == claims.HOLDS
    assert verdict.evidence == "imagenet − cifar10 = +2.70, 95 % CI [+1.43, +3.97] (n=2)"
    assert verdict.paper_verdict == claims.HOLDS
    no_imagenet = runs.summaries[runs.summaries["dataset"] != "imagenet"]
    assert claims.first_last_across_datasets(no_imagenet).verdict == claims.NOT_MEASURED


def test_claim_thresholds_are_data_beside_the_claims():
    from lsq.experiments import CLAIMS

    assert CLAIMS["weight-only-no-drop"].threshold == 1.0
    assert "less than 1 point" in CLAIMS["weight-only-no-drop"].test
    assert {c.side for c in CLAIMS.values()} == {"below", "above", "within"}


# --- analysis --------------------------------------------------------------------------------


def ablation(runs, factor):
    selected = page(runs, "fashion-mnist", "quick")
    return analysis.ablation_table(selected.summaries, selected.in_progress, factor)


def test_step_init_ablation_numbers(runs):
    table = ablation(runs, "step_init").set_index(["ablation", "row"])
    x4 = table.loc[("init-x4", 1)]
    assert x4["top1_mean"] == pytest.approx(89.0)
    assert x4["delta_mean"] == pytest.approx(-3.0) and x4["delta_n"] == 2
    # -3.0 for both seeds: sd 0, the interval is the point, wholly below 0.
    assert (x4["delta_lo"], x4["delta_hi"], x4["verdict"]) == (
        pytest.approx(-3.0), pytest.approx(-3.0), analysis.COSTS)
    x4_row3 = table.loc[("init-x4", 3)]  # -3.0 and -2.8
    assert x4_row3["delta_hi"] == pytest.approx(-2.9 + 12.706204736 * 0.1414213562 / 2 ** 0.5)
    assert x4_row3["verdict"] == analysis.COSTS
    assert x4["nonzero_mean"] == pytest.approx(0.2)
    assert table.loc[("", 1), "top1_n"] == 3  # baseline: the plain table runs
    assert table.loc[("init-maxabs", 3), "top1_n"] == 0
    shown = analysis.format_ablation_table(ablation(runs, "step_init"))
    maxabs = shown[shown["setting"] == "max|v|/Q_P init"]
    assert maxabs["final top-1"].tolist() == ["not run", "not run"]
    assert shown.loc[0].tolist() == ["LSQ init x1 (baseline)", "1", "92.10 ± 0.20 (n=3)",
                                     "reference", "—", "—", "—", "—", "—", "60.0%"]
    assert shown.loc[2].tolist() == ["LSQ init x4", "1", "89.00 ± 0.14 (n=2)", "-3.00",
                                     "[-3.00, -3.00]", "2", "±0.00", "costs", "—", "20.0%"]


def test_ablation_verdicts(runs):
    sentences = analysis.verdicts(ablation(runs, "step_init"))
    assert ("LSQ init x4 costs 3.00 points on row 1 (95 % CI [-3.00, -3.00], 2 seeds), ending "
            "with 20% nonzero weights.") in sentences
    assert "max|v|/Q_P init on row 1: not run." in sentences
    scheduler = analysis.verdicts(ablation(runs, "scheduler"))
    # step lr on row 1: -0.2 and +0.2 vs baseline -> mean 0: the interval includes 0, and no
    # number of seeds settles a mean that sits on the threshold.
    assert ("step lr on row 1: +0.00 points (95 % CI [-2.54, +2.54], 2 seeds), the interval "
            "includes 0: inconclusive; no number of seeds would settle it at this mean, ending "
            "with 60% nonzero weights.") in scheduler
    step_lr = analysis.verdicts(ablation(runs, "step_lr"))
    assert "step-size lr x10 costs 1.90 points on row 1 (1 seed, no interval: " \
           "indicative only), ending with 60% nonzero weights." in step_lr


def test_ablation_inconclusive_gives_the_seeds_to_settle(tmp_path):
    """Two seeds whose Δ differ in sign but not in mean: the seed count comes from the spread."""
    for seed, (base, ablated) in enumerate([(90.0, 89.0), (90.0, 89.6), (90.0, 89.2)]):
        write_run(tmp_path, "fashion-mnist", "quick", "row0", seed, 92.0)
        write_run(tmp_path, "fashion-mnist", "quick", "row1", seed, base)
        write_run(tmp_path, "fashion-mnist", "quick", "row1-sched-step", seed, ablated)
    loaded = load_runs(tmp_path).select("fashion-mnist", "quick")
    table = analysis.ablation_table(loaded.summaries, loaded.in_progress, "scheduler")
    line = table.set_index(["ablation", "row"]).loc[("sched-step", 1)]
    # Δ -1.0, -0.4, -0.8: mean -0.733, sd 0.306, 95 % CI [-1.49, +0.03]: includes 0.
    assert line["verdict"] == "inconclusive"
    n = 2  # by hand: the first n whose t half-width at this sd is below |mean|
    while scipy_stats.t.ppf(0.975, n - 1) * line["delta_std"] / n ** 0.5 >= abs(line["delta_mean"]):
        n += 1
    assert line["seeds_needed"] == n == 4
    sentence = next(s for s in analysis.verdicts(table) if s.startswith("step lr on row 1"))
    assert "inconclusive; 4 seeds would settle it at this mean and spread" in sentence


def test_the_full_profile_ablates_the_rows_it_plans(tmp_path):
    root = write_full_runs(tmp_path)
    for seed in (0, 1):
        write_run(root, "fashion-mnist", "full", "row3-init-x4", seed, 88.0)
    selected = load_runs(root).select("fashion-mnist", "full")
    assert analysis.ablated_rows(selected.summaries) == [3]  # lsq.experiments.ablation_rows
    table = analysis.ablation_table(selected.summaries, selected.in_progress, "step_init")
    assert set(table["row"]) == {3}
    with pytest.warns(RunWarning):  # the fabricated corrupt line
        loaded = load_runs(write_fake_runs(tmp_path / "quick", ("fashion-mnist",)))
    quick = page(loaded, "fashion-mnist", "quick")
    assert analysis.ablated_rows(quick.summaries) == [1, 3]


def test_has_ablations(runs):
    for dataset, profile, expected in [("fashion-mnist", "quick", True),
                                       ("cifar10", "paper", False)]:
        selected = page(runs, dataset, profile)
        assert analysis.has_ablations(selected.summaries, selected.in_progress) is expected


# --- figures ---------------------------------------------------------------------------------


def labels(fig):
    return [line.get_label() for ax in fig.axes for line in ax.get_lines()]


def test_accuracy_curves_lines(runs):
    fig = figures.accuracy_curves(page(runs, "fashion-mnist", "quick"), (1, 2))
    assert labels(fig) == [
        "row 0: float training (n=3)", "float baseline, final mean (n=3)",
        "row 1: w[-1,0,1], first/last float (n=3)", "row 2: w[-1,0,1], first/last quantized (n=3)",
    ]
    row1 = fig.axes[0].get_lines()[2]
    assert list(row1.get_xdata()) == [0, 1, 2]
    assert list(row1.get_ydata()) == pytest.approx([90.1, 91.1, 92.1])
    assert len(fig.axes[0].collections) == 3  # ±std bands: float, row 1, row 2
    cifar = figures.accuracy_curves(page(runs, "cifar10", "paper"), (3, 4))
    assert "row 4: not run" in labels(cifar)


def test_step_size_sparsity_and_ablation_figures(runs):
    selected = page(runs, "fashion-mnist", "quick")
    steps = figures.step_size_trajectories(selected)
    assert len(steps.axes) == 8  # rows 1-4 x (weights, activations)
    assert len(steps.axes[0].get_lines()) == 5  # representative layers
    assert [t.get_text() for t in steps.axes[1].texts] == ["no activations quantizers"]
    sparsity = figures.weight_sparsity(selected)
    row1 = sparsity.axes[0].get_lines()[0]
    assert list(row1.get_ydata()) == pytest.approx([44.0, 42.0, 40.0])  # percent zeros
    bars = figures.ablation_final_accuracy(selected, "step_init")
    assert len(bars.axes) == 2 and len(bars.axes[0].patches) == 3  # maxabs not run
    nonzero = figures.ablation_nonzero_fraction(selected)
    legend = [t.get_text() for t in nonzero.legends[0].get_texts()]
    assert legend == ["LSQ init x1 (n=3)", "LSQ init x0.25 (n=2)", "LSQ init x4 (n=2)",
                      "max|v|/Q_P init (not run)"]
    assert len(nonzero.axes[0].get_lines()) == 3


def test_synthetic_figures_are_labelled(runs):
    fig = figures.weight_sparsity(page(runs, "synthetic", "smoke"))
    assert fig.get_suptitle().endswith("— SYNTHETIC DATA")
    real = figures.weight_sparsity(page(runs, "cifar10", "paper"))
    assert "SYNTHETIC" not in real.get_suptitle()


def test_summary_identity_comes_from_the_path(tmp_path):
    run_dir = write_run(tmp_path, "cifar10", "paper", "row1", 3, 90.0)
    summary = json.loads((run_dir / "summary.json").read_text())
    (run_dir / "summary.json").write_text(json.dumps({**summary, "seed": 7}))
    with pytest.warns(RunWarning, match="disagrees with the path"):
        loaded = load_runs(tmp_path)
    assert loaded.summaries["seed"].tolist() == [3]


def test_deployed_runs_show_onnx_runtime_beside_pytorch(tmp_path):
    from lsq.report import deployed as deployed_report

    deployed = write_run(tmp_path, "fashion-mnist", "quick", "row1", 0, 80.0)
    write_run(tmp_path, "fashion-mnist", "quick", "row2", 0, 79.0)  # not deployed: no row
    broken = write_run(tmp_path, "fashion-mnist", "quick", "row3", 0, 76.0)
    (deployed / "deployed.json").write_text(json.dumps({
        "form": "qdq", "test_images": 10000, "pytorch_top1": 80.0, "top1": 79.99,
        "agreement": 0.9995, "integer_kernel_fraction": 0.0, "onnx_bytes": 298569}))
    (deployed / "export.pt").write_bytes(b"x" * 121000)
    (broken / "deployed.json").write_text("{")
    runs = load_runs(tmp_path)
    with pytest.warns(UserWarning, match="row3/seed0/deployed.json is unreadable"):
        records = deployed_report.deployed_records(tmp_path, runs.summaries)
    assert deployed_report.runs_table(records).to_dict("records") == [{
        "run": "fashion-mnist/quick/row1/seed0", "form": "qdq", "test images": "10,000",
        "PyTorch top-1": "80.00", "ONNX Runtime top-1": "79.99", "same class": "99.95%",
        "integer kernels": "0%", "ONNX kB": "299", "integer export kB": "121",
        "weights": "the run's own"}]


def test_each_quantized_row_gets_its_deployed_columns(tmp_path):
    """Per row: the mean deployed top-1 with its Δ to PyTorch over the deployed seeds, the
    lowest agreement, the export's size against float32; a row without deployment says so."""
    from lsq.report import deployed as deployed_report

    for seed, (ort, agreement) in enumerate([(92.88, 0.9999), (92.50, 0.9990)]):
        for row in (0, 2, 3):
            write_run(tmp_path, "fashion-mnist", "full", f"row{row}", seed, 93.0)
        run = tmp_path / "fashion-mnist" / "full" / "row3" / f"seed{seed}"
        (run / "deployed.json").write_text(json.dumps({
            "form": "integer", "test_images": 10000, "pytorch_top1": 92.89 - seed * 0.4,
            "summary_top1": 92.90 - seed * 0.4,
            "top1": ort, "agreement": agreement, "integer_kernel_fraction": 0.9,
            "onnx_bytes": 308995, "export_bytes": 60000, "float32_bytes": 1080000}))
    write_run(tmp_path, "fashion-mnist", "full", "row3-init-x4", 0, 90.0)  # an ablation: own page
    (tmp_path / "fashion-mnist/full/row3-init-x4/seed0/deployed.json").write_text(json.dumps({
        "form": "qdq", "test_images": 10000, "pytorch_top1": 10.0, "top1": 10.0, "agreement": 1.0,
        "integer_kernel_fraction": 0.0, "onnx_bytes": 1}))
    runs = load_runs(tmp_path).select("fashion-mnist", "full")
    records = deployed_report.deployed_records(tmp_path, runs.summaries)
    results = tables.format_results_table(
        tables.results_table(runs.summaries, runs.in_progress, "fashion-mnist"), "fashion-mnist")
    out = deployed_report.add_row_columns(results, records, {0: 2, 1: 0, 2: 2, 3: 2, 4: 0})
    by_row = {row: {key[1]: out[key].iloc[i] for key in out.columns
                    if key[0] == deployed_report.GROUP}
              for i, row in enumerate(out[("ID", "")])}
    assert by_row["3"] == {"ONNX Runtime top-1": "92.69 (Δ test_acc -0.01)", "same class": "99.90% (lowest)",
                           "export vs float32": "60 kB, 18.0x smaller"}
    assert by_row["2"]["ONNX Runtime top-1"] == deployed_report.NOT_DEPLOYED
    assert by_row["0"]["ONNX Runtime top-1"] == "—"
    # One seed of two deployed: the cell says so.
    cells = deployed_report.row_columns(records[records["seed"] == 1], [3], {3: 2})
    assert cells[3][(deployed_report.GROUP, deployed_report.TOP1)] == "92.50 (Δ test_acc +0.00, 1 of 2 seeds)"
    # A page with no deployed run keeps the seed's columns only.
    assert deployed_report.add_row_columns(results, records.iloc[0:0], {}).equals(results)


def test_protocol_audit_is_derived_from_the_runs_configs(tmp_path):
    from lsq.config import make_config
    from lsq.report import audit

    for row in (0, 1):
        write_run(tmp_path, "fashion-mnist", "quick", f"row{row}", 0, 80.0)
    changed = write_run(tmp_path, "fashion-mnist", "quick", "row3", 0, 76.0)
    (changed / "config.yaml").write_text(
        make_config("fashion-mnist", 3, "quick").with_overrides("optim.lr=0.05").to_yaml())
    runs = load_runs(tmp_path).select("fashion-mnist", "quick")
    lines = {line["element"]: line for line in
             audit.audit_table(tmp_path, "fashion-mnist", runs.summaries).to_dict("records")}
    assert lines["network"]["verdict"] == audit.MATCHES
    assert lines["dataset"]["verdict"].startswith("departs: Fashion-MNIST")  # the stand-in
    assert lines["quantized epochs"]["verdict"] == "departs: 2 instead of 90"
    assert lines["row 3: base lr"]["verdict"] == "departs: 0.05 instead of 0.01"
    assert lines["row 1: base lr"]["verdict"] == audit.MATCHES
    assert lines["row 2: weight levels"]["these runs"] == "no run"
    assert lines["batch size"] == {"element": "batch size", "published": "—", "these runs": "128",
                                   "verdict": audit.NOT_STATED}
    # A table that stands in for nothing published has no protocol to audit.
    assert audit.audit_table(tmp_path, "synthetic", runs.summaries).empty


def test_a_row_has_levelled_off_when_its_last_epoch_moves_less_than_the_criterion():
    from lsq.experiments import LEVELLED_POINTS
    from lsq.report import convergence

    def curve(row, seed, values, ablation=""):
        return [{"row": row, "seed": seed, "ablation": ablation, "epoch": e, "test_top1": v}
                for e, v in enumerate(values)]

    epochs = pd.DataFrame(
        curve(1, 0, [80.0, 92.0, 92.1]) + curve(1, 1, [80.0, 92.4, 92.2])  # |Δ| 0.1, 0.2
        + curve(2, 0, [80.0, 91.0, 91.0 + LEVELLED_POINTS + 0.1])
        + curve(3, 0, [80.0]) + curve(1, 0, [10.0, 50.0], ablation="init-x4"))
    table = convergence.last_epoch_changes(epochs)
    assert table.to_dict("records") == [
        {"row": 1, "seeds": 2, "last epoch": 2, "Δ top-1, last epoch (per seed)": "+0.10, -0.20",
         "mean Δ": "-0.05", "mean |Δ|": "0.15", "verdict": convergence.LEVELLED},
        {"row": 2, "seeds": 1, "last epoch": 2, "Δ top-1, last epoch (per seed)": "+0.40",
         "mean Δ": "+0.40", "mean |Δ|": "0.40", "verdict": convergence.NOT_LEVELLED}]
    assert convergence.last_epoch_changes(epochs.iloc[0:0]).empty
