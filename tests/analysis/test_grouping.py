"""Cells are grouped by what they are: a label whose cells differ in anything but the seed is split into
one label per configuration, never averaged (analysis/grouping.py)."""

import json

import pandas as pd
import pytest
from omegaconf import OmegaConf

from analysis.grouping import signature
from analysis.load import load_results
from analysis.report import build_report
from harness.config import compose, resolve


def _run(root, name, config: dict, headlines):
    """A finished plain run folder (as trh train leaves it) with eval rows every 10 steps."""
    folder = root / "runs" / name
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(config)))
    rows = [{"step": 10 * i, "headline": h, "val_a": h, "val_b": h, "val_c": h} for i, h in enumerate(headlines)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "status.json").write_text(json.dumps({"state": "done", "config_hash": name.rsplit("-", 1)[-1],
                                                    "step": rows[-1]["step"]}))


def _config(seed, delta, **extra):
    return {"setting": {"name": "base_s", "t_stop": 40, "delta": 0.15}, "seed": seed,
            "method": {"name": "cppo", "delta": delta}, "logging": {"progress": seed == 0}, **extra}


def test_two_configurations_of_one_method_are_two_labels_never_one_mean(tmp_path):
    root = tmp_path / "results"
    for seed, (low, high) in enumerate([(0.2, 0.6), (0.3, 0.7)]):
        _run(root, f"base_s-cppo-s{seed}-a{seed}", _config(seed, 0.1), [0.1, low])
        _run(root, f"base_s-cppo-s{seed}-b{seed}", _config(seed, 0.2), [0.1, high])
    cells = load_results(root).cells
    assert set(cells["label"]) == {"cppo [delta=0.1]", "cppo [delta=0.2]"}
    assert set(cells["pooled_from"]) == {"cppo"}
    means = cells.groupby("label")["best_headline"].mean()
    assert means["cppo [delta=0.1]"] == pytest.approx(0.25) and means["cppo [delta=0.2]"] == pytest.approx(0.65)
    build_report(root, tmp_path / "report", table_formats=("md", "csv"))
    table = pd.read_csv(tmp_path / "report" / "table1.csv")
    assert len(table) == 2 and not table.to_string().count("45.0")  # 45 = the pooled mean, never shown


def test_the_seed_and_logging_never_split_a_label(tmp_path):
    root = tmp_path / "results"
    for seed in range(3):
        _run(root, f"base_s-cppo-s{seed}-c{seed}", _config(seed, 0.1), [0.1, 0.5])
    cells = load_results(root).cells
    assert set(cells["label"]) == {"cppo"} and cells["pooled_from"].isna().all()


def test_typed_configs_compare_what_the_run_id_hashes():
    """Where files go (engine.checkpoint_dir, keep_weights) is not the configuration; a threshold is."""
    base = resolve(compose(["setting=lm_tiny", "method=cppo", "seed=1"])).resolved
    moved = resolve(compose(["setting=lm_tiny", "method=cppo", "seed=2", "engine.checkpoint_dir=/scratch",
                             "engine.keep_weights=false"])).resolved
    other = resolve(compose(["setting=lm_tiny", "method=cppo", "seed=1", "method.delta_b=0.05"])).resolved
    assert signature(base) == signature(moved) != signature(other)
    assert signature(None) is None


def test_warm_start_entries_and_identical_scores_are_flagged(tmp_path):
    """A method whose best step is 0 in every seed never left the warm start: its table entry and every
    comparison with it say so; two arms with the same score in every seed compare as exactly equal."""
    root = tmp_path / "results"
    curves = {"cppo": [[0.3, 0.5], [0.3, 0.6], [0.3, 0.4]], "trm_max": [[0.3, 0.2], [0.3, 0.1], [0.3, 0.3]],
              "dppo": [[0.3, 0.5], [0.3, 0.6], [0.3, 0.4]]}
    for method, runs in curves.items():
        for seed, headlines in enumerate(runs):
            config = {**_config(seed, 0.1), "method": {"name": method}}
            _run(root, f"base_s-{method}-s{seed}-{method}{seed}", config, headlines)
    build_report(root, tmp_path / "report", table_formats=("md", "csv"))
    table = (tmp_path / "report" / "table1.md").read_text()
    trm_row = next(line for line in table.splitlines() if line.startswith("| TRM-Max"))
    assert "never left the warm start" in trm_row and "the best validation step within [0, T_stop] was step 0" in table
    assert "never left" not in next(line for line in table.splitlines() if line.startswith("| CPPO"))
    cmp = pd.read_csv(tmp_path / "report" / "comparisons.csv").set_index("other")
    assert "trm_max never left the warm start" in cmp.loc["trm_max", "note"]
    assert "identical scores in every seed" in cmp.loc["dppo", "note"] and cmp.loc["dppo", "diff"] == 0


def test_thirteen_variants_differ_in_colour_and_in_marker(tmp_path):
    """On the figures' own artists: every variant has a colour and a marker no other variant has."""
    import matplotlib.pyplot as plt

    from analysis.figures import plot_curves, colour_map

    root = tmp_path / "results"
    for i in range(13):
        for seed in range(2):
            _run(root, f"base_s-cppo-s{seed}-v{i}s{seed}", _config(seed, 0.01 * (i + 1)), [0.1, 0.2 + 0.01 * i])
    _run(root, "base_s-dppo-s0-d0", {**_config(0, 0.1), "method": {"name": "dppo"}}, [0.1, 0.3])
    results = load_results(root)
    fig, ax = plt.subplots()
    plot_curves(ax, results, results.cells, "headline", colour_map(results.cells))
    lines = [line for line in ax.get_lines() if line.get_label() and not line.get_label().startswith("_")]
    assert len(lines) == 14
    assert len({line.get_color() for line in lines}) == 14 and len({line.get_marker() for line in lines}) == 14
    assert next(line for line in lines if line.get_label() == "DPPO").get_color() == "#d62728"  # the paper's
    plt.close(fig)


def test_report_of_one_run_folder(tmp_path, capsys):
    """trh report RUN_FOLDER (a trh train output): its scores and its curves."""
    from sweeps.cli import main

    root = tmp_path / "results"
    _run(root, "base_s-cppo-s0-one", _config(0, 0.1), [0.1, 0.4, 0.3])
    folder = root / "runs" / "base_s-cppo-s0-one"
    assert main(["report", str(folder), "--out", str(tmp_path / "report")]) == 0
    assert "40.0" in (tmp_path / "report" / "table1.md").read_text()
    assert (tmp_path / "report" / "fig4_validation_curves.png").exists()


def test_a_two_by_two_grid_gets_a_pivot_a_heatmap_and_main_effects(tmp_path):
    """δ × δ_b at two levels each, two seeds: delta adds 10 points, delta_b 20, the seed 4; the model
    with the seed as a block recovers both effects exactly (no noise beyond the seed)."""
    root = tmp_path / "results"
    for seed in range(2):
        for delta in (0.1, 0.2):
            for delta_b in (0.01, 0.02):
                score = 0.3 + (delta == 0.2) * 0.1 + (delta_b == 0.02) * 0.2 + 0.04 * seed
                config = {**_config(seed, delta), "method": {"name": "cppo", "delta": delta, "delta_b": delta_b}}
                _run(root, f"base_s-cppo-s{seed}-g{delta}{delta_b}{seed}".replace(".", ""), config, [0.2, score])
    report = build_report(root, tmp_path / "report", table_formats=("md",), figure_formats=())
    out = tmp_path / "report"
    md = (out / "factorial_runs_base_s_cppo.md").read_text()
    assert "method.delta × method.delta_b" in md and "## Factorial views" in report["index"]
    assert "| 0.2 | 42.0 [16.6, 67.4] | 62.0 [36.6, 87.4] |" in md  # row delta=0.2: delta_b 0.01, 0.02
    effects = pd.read_csv(out / "factorial_runs_base_s_cppo_effects.csv").set_index("parameter")
    assert effects.loc["method.delta", "effect"] == pytest.approx(10.0)
    assert effects.loc["method.delta_b", "effect"] == pytest.approx(20.0)
    assert (out / "factorial_runs_base_s_cppo_heatmap.png").stat().st_size > 5_000


def test_a_split_configuration_reads_the_same_in_every_setting(tmp_path):
    """cppo runs at two thresholds on base_s, at one of them on long_s: the long_s runs are named by the
    same parameter, so each configuration is one row of Table 1 across the columns."""
    root = tmp_path / "results"
    for seed in range(2):
        for setting, deltas in (("base_s", (0.1, 0.2)), ("long_s", (0.1,))):
            for delta in deltas:
                config = {**_config(seed, delta), "setting": {"name": setting, "t_stop": 40}}
                _run(root, f"{setting}-cppo-s{seed}-{setting}{delta}{seed}".replace(".", ""), config, [0.1, 0.4])
    cells = load_results(root).cells
    assert set(cells["label"]) == {"cppo [delta=0.1]", "cppo [delta=0.2]"}
    assert set(cells.loc[cells["setting"] == "long_s", "label"]) == {"cppo [delta=0.1]"}


def test_a_cell_not_started_yet_groups_with_its_finished_seeds(tmp_path):
    """Mid-sweep, a queued cell holds the sweep's snapshot (with ${...} interpolations and every default
    written out) while a finished one holds its resolved config: the same configuration, one label."""
    from harness.config import resolve
    from sweeps.driver import prepare

    _, cells, _, _ = prepare("smoke", [], tmp_path)
    snapshot = cells[0].config
    assert "${" in json.dumps(snapshot)
    from omegaconf import OmegaConf
    resolved = resolve(OmegaConf.create(snapshot)).resolved
    assert signature(snapshot) == signature(resolved)
