"""The equal-budget tuning protocol: the tuning table, the choice, `tuned:` variants and the report."""

import json

import pytest

from analysis.load import load_results
from analysis.report import build_report, choose_table1
from analysis.tuning import budgets, choose, tuning_table, with_arms
from sweeps.spec import SweepError, expand, parse

T_STOP = 20
SEEDS = (100, 101)
# label → (method, params, best validation headline per tuning seed, state)
CONFIGS = {
    "grpo eps 0.05": ("grpo", {"eps_low": 0.05, "eps_high": 0.07}, (0.70, 0.80), "done"),
    "grpo eps 0.2": ("grpo", {"eps_low": 0.2, "eps_high": 0.28}, (0.90, 0.60), "done"),     # mean 0.75 = the first
    "dppo delta 0.01": ("dppo", {"delta": 0.01}, (0.95, 0.90), "collapsed"),              # collapsed: counts 0
    "dppo delta 0.02": ("dppo", {"delta": 0.02}, (0.50, 0.60), "done"),
}


def _cell(root, label, method, seed, best, state, mask):
    cell_id = f"{label}{seed}".replace(" ", "").replace(".", "")[-12:].rjust(12, "x")
    run_dir = root / "runs" / f"tune-{method}-s{seed}-{cell_id}"
    run_dir.mkdir(parents=True)
    rows = [{"step": 0, "headline": 0.4}, {"step": 1, "train_reward": 0.5, "mask_fraction": mask,
                                           "seq_acceptance_rate": float("nan"), "cap_hit_fraction": float("nan")},
            {"step": 10, "headline": best}, {"step": 11, "train_reward": 0.5, "mask_fraction": 3 * mask},
            {"step": 30, "headline": 0.99}]  # past T_stop: never chosen
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    status = {"state": state, "config_hash": cell_id, "step": 30, **({"collapse_step": 30} if state == "collapsed" else {})}
    (run_dir / "status.json").write_text(json.dumps(status))
    return {"id": cell_id, "setting": "smoke", "label": label, "method": method, "seed": seed, "t_stop": T_STOP,
            "run_dir": str(run_dir.relative_to(root)), "overrides": []}


def _tuning_sweep(root, configs=CONFIGS, name="tune_x", unfinished=(), arms=None):
    cells = []
    for label, (method, _, bests, state) in configs.items():
        for seed, best in zip(SEEDS, bests):
            cells.append(_cell(root, label, method, seed, best, "running" if (label, seed) in unfinished else state,
                               mask=0.01 if "0.05" in label or "0.01" in label else 0.001))
    spec = {"name": name, "kind": "tuning", "feeds": "tuning", "settings": ["smoke"], "seeds": list(SEEDS),
            "variants": {label: {"method": m, "params": p, **({"arm": arms[label]} if label in (arms or {}) else {})}
                         for label, (m, p, _, _) in configs.items()}}
    folder = root / "sweeps" / name
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"sweep": name, "feeds": "tuning", "spec": spec,
                                                      "settings": ["smoke"], "labels": list(configs), "cells": cells}))
    return root


def test_tuning_table_scores_binding_and_choice(tmp_path):
    cells = load_results(_tuning_sweep(tmp_path / "r")).cells
    table = tuning_table(cells).set_index("label")
    assert table.loc["grpo eps 0.05", "score"] == pytest.approx(0.75)
    assert table.loc["grpo eps 0.2", "score"] == pytest.approx(0.75)
    assert table.loc["dppo delta 0.01", "score"] == 0.0 and table.loc["dppo delta 0.01", "collapsed"] == 2
    assert table.loc["grpo eps 0.05", "mask_fraction"] == pytest.approx(0.02)  # mean over steps 1 and 11
    assert table.loc["grpo eps 0.05", "seq_acceptance"] is None                # NaN-only metric: no value
    # t interval of (0.7, 0.8): 0.75 ± 12.706 · 0.05
    assert table.loc["grpo eps 0.05", "low"] == pytest.approx(0.75 - 12.7062 * 0.05, abs=1e-3)
    assert choose(cells) == {"grpo": "grpo eps 0.05", "dppo": "dppo delta 0.02"}  # tie → the earlier configuration
    assert budgets(cells) == {"grpo": 2, "dppo": 2}


def test_arms_tune_variants_of_one_method_separately(tmp_path):
    configs = {**CONFIGS,
               "dppo kl 0.1": ("dppo", {"delta": 0.1, "divergence": "topk_kl"}, (0.6, 0.6), "done"),
               "dppo kl 0.3": ("dppo", {"delta": 0.3, "divergence": "topk_kl"}, (0.7, 0.7), "done")}
    root = _tuning_sweep(tmp_path / "r", configs, arms={"dppo kl 0.1": "dppo_kl", "dppo kl 0.3": "dppo_kl"})
    results = load_results(root)
    cells = with_arms(results.cells, results.sweeps["tune_x"])
    assert budgets(cells) == {"grpo": 2, "dppo": 2, "dppo_kl": 2}
    assert choose(cells) == {"grpo": "grpo eps 0.05", "dppo": "dppo delta 0.02", "dppo_kl": "dppo kl 0.3"}
    spec = _spec({"DPPO-KL": {"method": "dppo", "tuned": "tune_x:dppo_kl"}, "DPPO": {"method": "dppo", "tuned": "tune_x"}})
    cells = {c.label: c for c in expand(spec, root)}
    assert cells["DPPO-KL"].config["method"]["delta"] == 0.3 and cells["DPPO-KL"].config["method"]["divergence"] == "topk_kl"
    assert cells["DPPO"].config["method"]["delta"] == 0.02


def test_a_method_with_an_unfinished_cell_has_no_choice(tmp_path):
    cells = load_results(_tuning_sweep(tmp_path / "r", unfinished={("dppo delta 0.02", 101)})).cells
    assert choose(cells) == {"grpo": "grpo eps 0.05"}


def _spec(variants, kind="grid"):
    raw = {"name": "main_x", "kind": kind, "settings": ["smoke"], "seeds": [0], "variants": variants}
    return parse(raw, None)


def test_tuned_variants_run_the_chosen_configuration(tmp_path):
    root = _tuning_sweep(tmp_path / "r")
    spec = _spec({"GRPO": {"method": "grpo", "tuned": "tune_x"},
                  "DPPO": {"method": "dppo", "tuned": "tune_x", "overrides": ["rl.lr=2e-4"]},
                  "GRPO (paper)": {"method": "grpo", "params": {"eps_low": 0.2, "eps_high": 0.28}}})
    cells = {c.label: c for c in expand(spec, root)}
    assert cells["GRPO"].config["method"]["eps_low"] == 0.05 and cells["GRPO"].config["method"]["eps_high"] == 0.07
    assert cells["DPPO"].config["method"]["delta"] == 0.02 and cells["DPPO"].config["rl"]["lr"] == 2e-4
    assert cells["GRPO (paper)"].config["method"]["eps_low"] == 0.2
    assert spec.aliases == {}


def test_a_paper_arm_the_tuning_chose_runs_once(tmp_path):
    configs = {k: v for k, v in CONFIGS.items() if v[0] == "grpo"}
    configs["grpo eps 0.2"] = ("grpo", {"eps_low": 0.2, "eps_high": 0.28}, (0.95, 0.95), "done")
    root = _tuning_sweep(tmp_path / "r", configs)
    spec = _spec({"GRPO (paper)": {"method": "grpo", "params": {"eps_low": 0.2, "eps_high": 0.28}},
                  "GRPO": {"method": "grpo", "tuned": "tune_x"}})
    cells = expand(spec, root)
    assert [c.label for c in cells] == ["GRPO"] and spec.aliases == {"GRPO (paper)": "GRPO"}


def test_tuned_variant_errors_name_what_to_run(tmp_path):
    spec = _spec({"GRPO": {"method": "grpo", "tuned": "tune_x"}})
    with pytest.raises(SweepError, match="has not run in .*trh sweep tune_x --results"):
        expand(spec, tmp_path / "empty")
    root = _tuning_sweep(tmp_path / "r", unfinished={("grpo eps 0.2", 100)})
    with pytest.raises(SweepError, match=r"'grpo' is still being tuned in 'tune_x' \(3 of 4 cells finished"):
        expand(_spec({"GRPO": {"method": "grpo", "tuned": "tune_x"}}), root)
    with pytest.raises(SweepError, match="no configuration of 'cppo'"):
        expand(_spec({"CPPO": {"method": "cppo", "tuned": "tune_x"}}), root)


@pytest.mark.parametrize("variants, match", [
    ({"a": {"method": "grpo"}, "b": {"method": "grpo"}, "c": {"method": "dppo"}}, "same number of configurations"),
    ({"a": {"method": "dppo"}, "b": {"method": "dppo", "arm": "dppo_kl"}, "c": {"method": "dppo"}},
     r"per arm \(an equal budget\), got \{'dppo': 2, 'dppo_kl': 1\}"),
    ({"a": {"method": "grpo", "tuned": "t"}}, "cannot be 'tuned' themselves"),
])
def test_tuning_specs_need_an_equal_budget(variants, match):
    with pytest.raises(SweepError, match=match):
        _spec(variants, kind="tuning")


def test_unknown_kind_and_bad_tuned_value():
    with pytest.raises(SweepError, match=r"kind must be one of \['grid', 'tuning', 'search'\]"):
        _spec({"a": {"method": "grpo"}}, kind="grdi")
    with pytest.raises(SweepError, match="'tuned' must name a tuning sweep"):
        _spec({"a": {"method": "grpo", "tuned": 3}})


def test_report_writes_the_tuning_table_and_never_uses_it_as_table1(tmp_path):
    root = _tuning_sweep(tmp_path / "r")
    results = load_results(root)
    assert choose_table1(results) is None
    out = build_report(root, tmp_path / "out")
    text = (tmp_path / "out" / "tuning_tune_x.md").read_text()
    assert "grpo 2, dppo 2 (equal: yes)" in text and text.count("**chosen**") == 2
    assert (tmp_path / "out" / "tuning_tune_x.png").exists()
    assert "tuning_tune_x" in out["tables"]["written"]


def test_a_weight_rule_is_plotted_in_grid_order(tmp_path, monkeypatch):
    """A rule that masks and caps nothing (VESPO, DRPO) has no binding rate to plot against: its panel
    shows the configurations in the spec's order, labelled, instead of a degenerate axis at 0 %."""
    import matplotlib.pyplot as plt
    import pandas as pd

    from analysis import figures

    table = pd.DataFrame({"arm": ["drpo"] * 3 + ["gspo"] * 2, "label": ["drpo ε 0.1", "drpo ε 1", "drpo ε 12.5",
                                                                       "gspo ε 0.01", "gspo ε 0.1"],
                          "score": [0.6, 0.7, 0.65, 0.8, 0.7], "low": [0.5] * 5, "high": [0.9] * 5,
                          "mask_fraction": [0.0, 0.0, 0.0, 0.3, 0.1], "chosen": [False, True, False, True, False]})
    axes = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, out, stem, formats: axes.extend(fig.axes) or [])
    figures.fig_tuning(table, tmp_path, "t", "title")
    drpo, gspo = axes[0], axes[1]
    assert [t.get_text() for t in drpo.get_xticklabels()] == ["ε 0.1", "ε 1", "ε 12.5"]
    assert drpo.get_xscale() == "linear" and gspo.get_xscale() == "symlog"
    plt.close("all")
