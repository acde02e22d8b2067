"""trh report on synthetic results folders with known answers."""

import json
import struct
from pathlib import Path

import pandas as pd
import pytest

from analysis.figures import seed_curves
from analysis.load import load_results
from analysis.report import build_report
from analysis.tables import aggregate, paper_vs_ours, pivot, table1

T_STOP = 40


def _write_cell(root, setting, method, seed, headlines, state="done", collapse_step=None, steps=None):
    """A run folder with eval rows every 10 steps; headline h gives val_a/b/c = h+0.1, h, h−0.1."""
    cell_id = f"{setting}{method}{seed}".ljust(12, "x")[:12]
    run_dir = root / "runs" / f"{setting}-{method}-s{seed}-{cell_id}"
    run_dir.mkdir(parents=True)
    rows = []
    for i, h in enumerate(headlines):
        rows.append({"step": 10 * i, "headline": h, "val_a": h + 0.1, "val_b": h, "val_c": h - 0.1,
                     "train_reward": h, "response_length": 30.0, "mismatch_abs_logp": 0.01,
                     "delta_b_mean": 0.002, "budget_mask_share": 0.5})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    status = {"state": state, "config_hash": cell_id, "step": rows[-1]["step"] if rows else 0}
    if collapse_step:
        status["collapse_step"] = collapse_step
    if state == "failed":
        status["reason"] = "RuntimeError: boom"
    (run_dir / "status.json").write_text(json.dumps(status))
    (run_dir / "config.yaml").write_text(f"setting: {{name: {setting}, t_stop: {T_STOP}, delta: 0.01, w_min: 0.8}}\n"
                                         f"method: {{name: {method}}}\nseed: {seed}\ntask: {{digits: 3}}\n")
    return {"id": cell_id, "setting": setting, "label": method, "method": method, "seed": seed, "t_stop": T_STOP,
            "run_dir": str(run_dir.relative_to(root)), "overrides": []}


@pytest.fixture
def results_root(tmp_path):
    root = tmp_path / "results"
    cells = [
        # base_s: cppo best (0.8 ± 0.1 → 80.0 ± 14.1), dppo second (0.7, 0.7), grpo third; steps past T_stop ignored
        _write_cell(root, "base_s", "cppo", 0, [0.5, 0.7, 0.9, 0.6, 0.6, 0.99]),
        _write_cell(root, "base_s", "cppo", 1, [0.5, 0.7, 0.6, 0.7, 0.6]),
        _write_cell(root, "base_s", "dppo", 0, [0.5, 0.7, 0.7, 0.6]),
        _write_cell(root, "base_s", "dppo", 1, [0.5, 0.6, 0.7]),
        _write_cell(root, "base_s", "grpo", 0, [0.5, 0.6]),
        _write_cell(root, "base_s", "grpo", 1, [0.5, 0.55]),
        # long_s: cispo collapses in both seeds (steps 20 and 30), grpo in one seed, cppo has a running seed
        _write_cell(root, "long_s", "cispo", 0, [0.4, 0.95, 0.0], "collapsed", 20),
        _write_cell(root, "long_s", "cispo", 1, [0.4, 0.5, 0.6, 0.0], "collapsed", 30),
        _write_cell(root, "long_s", "grpo", 0, [0.4, 0.9, 0.01], "collapsed", 20),
        _write_cell(root, "long_s", "grpo", 1, [0.4, 0.5]),
        _write_cell(root, "long_s", "cppo", 0, [0.4, 0.6]),
        _write_cell(root, "long_s", "cppo", 1, [0.4], "running"),
        _write_cell(root, "long_s", "dppo", 0, [0.4], "failed"),
    ]
    missing = {"id": "missingcell0", "setting": "long_s", "label": "dppo", "method": "dppo", "seed": 1,
               "t_stop": T_STOP, "run_dir": "runs/long_s-dppo-s1-missingcell0", "overrides": []}
    queued = _write_cell(root, "long_s", "trm_max", 0, [])
    for name in ("status.json", "metrics.jsonl"):  # submitted (config snapshotted), never started
        (root / queued["run_dir"] / name).unlink()
    manifest = {"sweep": "paper_main", "feeds": "Table 1", "cells": cells + [missing, queued]}
    (root / "sweeps" / "paper_main").mkdir(parents=True)
    (root / "sweeps" / "paper_main" / "manifest.json").write_text(json.dumps(manifest))
    # an ablation sweep sharing two cells of paper_main, labelled its own way, and a position sweep
    gate = [dict(cells[0], label="CPPO"), dict(cells[2], label="DPPO"),
            _write_cell(root, "base_s", "cppo_soft", 0, [0.5, 0.6, 0.65])]
    (root / "sweeps" / "ablation_gate").mkdir(parents=True)
    (root / "sweeps" / "ablation_gate" / "manifest.json").write_text(json.dumps({"sweep": "ablation_gate",
                                                                                 "cells": gate}))
    diag = {"step": 10, "bin_start": [0, 11, 22], "bin_end": [11, 22, 33], "mean_dev": [0.001, 0.002, 0.004],
            "top10_dev": [0.01, 0.02, None], "mask_rate": [0.0, 0.01, 0.02]}
    (root / cells[4]["run_dir"] / "diagnostics.jsonl").write_text(json.dumps(diag) + "\n")
    (root / "sweeps" / "position_diagnostics").mkdir(parents=True)
    (root / "sweeps" / "position_diagnostics" / "manifest.json").write_text(json.dumps(
        {"sweep": "position_diagnostics", "cells": [cells[4]]}))
    return root


def test_load_reads_manifest_and_scores_cells(results_root):
    res = load_results(results_root)
    cells = res.sweep_cells("paper_main").set_index(["setting", "label", "seed"])
    assert len(res.sweep_cells("paper_main")) == 15 and len(res.cells) == 19
    assert set(res.sweep_cells("ablation_gate")["label"]) == {"CPPO", "DPPO", "cppo_soft"}
    assert cells.loc[("long_s", "trm_max", 0), "verdict"] == "not started"
    assert cells.loc[("base_s", "cppo", 0), "best_headline"] == 0.9  # 0.99 at step 50 > T_stop
    assert cells.loc[("base_s", "cppo", 0), "best_step"] == 20
    assert cells.loc[("base_s", "dppo", 0), "best_step"] == 10  # ties → earlier step
    assert cells.loc[("long_s", "cispo", 0), "verdict"] == "collapse (step 20)"
    assert cells.loc[("long_s", "dppo", 1), "verdict"] == "missing"
    assert cells.loc[("long_s", "dppo", 0), "verdict"] == "failed"
    assert cells.loc[("long_s", "cppo", 1), "verdict"] == "interrupted"  # running, but nobody holds it
    # one sweep folder reads the same cells
    assert len(load_results(results_root / "sweeps" / "paper_main").cells) == 15


def test_table1_intervals_collapse_and_missing_seeds(results_root):
    cells = load_results(results_root).sweep_cells("paper_main")
    long = table1(cells, ["base_s", "long_s"], ["grpo", "cispo", "dppo", "cppo"])
    agg = long.set_index(["label", "setting"])
    assert agg.loc[("cppo", "base_s"), "mean"] == pytest.approx(0.8)
    assert agg.loc[("cppo", "base_s"), "std"] == pytest.approx(0.1414213, rel=1e-5)
    # two seeds (0.9, 0.7): t interval 0.8 ± 12.706·0.1, clipped to the accuracy range [0, 1]
    assert agg.loc[("cppo", "base_s"), "text"] == "80.0 [0.0, 100.0]"
    grpo = agg.loc[("grpo", "base_s")]  # (0.6, 0.55): 0.575 ± 12.706·0.025
    assert (grpo["ci_low"], grpo["ci_high"]) == pytest.approx((0.575 - 0.317655, 0.575 + 0.317655), abs=1e-5)
    assert agg.loc[("dppo", "base_s"), "text"] == "70.0 [70.0, 70.0]"  # both seeds 0.7: no spread
    assert agg.loc[("cispo", "long_s"), "text"] == "collapse (steps 20, 30)"
    assert agg.loc[("grpo", "long_s"), "text"] == "70.0 [0.0, 100.0], collapse (step 20) in 1/2"
    assert agg.loc[("cppo", "long_s"), "text"] == "60.0 (1/2 seeds)"
    assert agg.loc[("dppo", "long_s"), "text"] == "failed (1/2)"
    long2 = table1(cells, ["long_s"], ["trm_max"])
    assert long2["text"].tolist() == ["unfinished (1/1)"]
    md = pivot(long, ["base_s", "long_s"], ["grpo", "cispo", "dppo", "cppo"], markup="md")
    assert not any(v.startswith("**") for v in md.to_numpy().ravel())  # bold only when given support
    bold = table1(cells, ["base_s"], ["dppo", "cppo"], bold={("cppo", "base_s")})
    tex = pivot(bold, ["base_s"], ["cppo", "dppo"], markup="tex")
    assert tex.loc["cppo", "base_s"] == "\\textbf{80.0 [0.0, 100.0]}" and tex.loc["dppo", "base_s"] == "70.0 [70.0, 70.0]"


def _seeded_root(root, effects: dict, seeds: int = 8, setting="base_s"):
    """``seeds`` seeds per method; seed s shares a seed effect across methods (the common warm start and
    streams), plus the method's effect and a little independent noise."""
    import numpy as np
    rng = np.random.default_rng(0)
    seed_effect = rng.normal(0, 0.05, seeds)
    cells = []
    for method, effect in effects.items():
        for s in range(seeds):
            h = float(np.clip(0.7 + seed_effect[s] + effect + rng.normal(0, 0.004), 0, 1))
            cells.append(_write_cell(root, setting, method, s, [0.5, h]))
    (root / "sweeps" / "paper_main").mkdir(parents=True)
    (root / "sweeps" / "paper_main" / "manifest.json").write_text(json.dumps({"sweep": "paper_main", "cells": cells}))
    return root


def test_bold_only_where_the_corrected_paired_test_supports_it(tmp_path):
    from analysis import compare as C

    root = _seeded_root(tmp_path / "r1", {"grpo": 0.0, "dppo": 0.0, "cppo": 0.03})
    cells = load_results(root).sweep_cells("paper_main")
    rows, settings = ["grpo", "dppo", "cppo"], ["base_s"]
    cmp = C.comparisons(cells, settings, rows, "cppo").set_index("other")
    assert (cmp["verdict"] == "better").all() and (cmp["p_holm"] < 0.05).all()
    assert cmp.loc["grpo", "diff"] == pytest.approx(0.03, abs=0.006) and cmp.loc["grpo", "seeds"] == 8
    plain = table1(cells, settings, rows)
    assert C.supported_best(cells, plain, settings, "best_headline", cmp.reset_index()) == {("cppo", "base_s")}
    # a lead inside the noise: nothing is bold and the comparisons say so
    root = _seeded_root(tmp_path / "r2", {"grpo": 0.0, "dppo": 0.0, "cppo": 0.001})
    cells = load_results(root).sweep_cells("paper_main")
    cmp = C.comparisons(cells, settings, rows, "cppo")
    assert set(cmp["verdict"]) == {"no detectable difference"}
    assert C.supported_best(cells, table1(cells, settings, rows), settings, "best_headline", cmp) == set()


def test_report_bolds_nothing_its_comparisons_call_undetectable(tmp_path):
    root = _seeded_root(tmp_path / "r", {"grpo": 0.0, "dppo": 0.002, "cppo": 0.03, "cispo": -0.02})
    out = tmp_path / "report"
    build_report(root, out, ("md", "csv"), ())
    cmp = pd.read_csv(out / "comparisons.csv")
    table = pd.read_csv(out / "table1.csv")
    for r in table[table["bold"]].itertuples():
        if r.label != "cppo":
            assert cmp[(cmp["other"] == r.label)]["verdict"].item() == "worse"
        else:
            assert (cmp["verdict"] == "better").all()
    assert table[table["bold"]]["label"].tolist() == ["cppo"]
    assert "**" in (out / "table1.md").read_text()


def test_report_files(results_root, tmp_path):
    out = tmp_path / "report"
    result = build_report(results_root, out, ("md", "tex", "csv"), ("png",))
    table1_md = (out / "table1.md").read_text()
    assert "| CPPO | 80.0 [0.0, 100.0] | 60.0 (1/2 seeds) |" in table1_md
    assert "| CISPO | missing | collapse (steps 20, 30) |" in table1_md and "Nothing is bold" in table1_md
    tex = (out / "table1.tex").read_text()
    assert "\\toprule" in tex and "\\bottomrule" in tex and "CPPO & 80.0 [0.0, 100.0]" in tex
    csv = pd.read_csv(out / "table1.csv")
    assert set(csv.columns) >= {"label", "setting", "mean", "std", "ci_low", "ci_high", "rank", "bold", "collapsed"}
    cmp = pd.read_csv(out / "comparisons.csv").set_index(["setting", "other"])
    # cppo (0.9, 0.7) − grpo (0.6, 0.55): paired diffs (0.30, 0.15); exact sign-flip p with 2 pairs = 2/4
    assert cmp.loc[("base_s", "grpo"), "diff"] == pytest.approx(0.225)
    assert cmp.loc[("base_s", "grpo"), "p"] == pytest.approx(0.5)
    assert cmp.loc[("base_s", "grpo"), "verdict"] == "no detectable difference"
    assert "cannot reach p < 0.05" in cmp.loc[("base_s", "grpo"), "note"]
    for name in ("comparisons.md", "aggregate.md", "aggregate.csv", "eval_noise.md", "eval_noise.csv",
                 "forest_comparisons.png"):
        assert (out / name).exists(), name
    assert "cannot detect any difference" in (out / "report.md").read_text()
    t4 = pd.read_csv(out / "table4.csv").set_index(["setting", "label"])
    # per split at each seed's best step (seed 0 at step 20: 1.0/0.9/0.8; seed 1 at 10: 0.8/0.7/0.6)
    assert t4.loc[("base_s", "CPPO"), ["val_a", "val_b", "val_c"]].tolist() == pytest.approx([90.0, 80.0, 70.0])
    prov = pd.read_csv(out / "provenance.csv")
    assert len(prov) == 19 and set(prov["verdict"]) >= {"done", "missing", "failed", "interrupted", "not started",
                                                          "collapse (step 20)"}
    index = (out / "report.md").read_text()
    assert "missing" in index and "failed" in index and "interrupted" in index
    assert "long_s | dppo | 1 | missingcell0 | missing" in index
    assert "fig6: sweeps sensitivity/divergence_* not in this results folder" in index
    versus = pd.read_csv(out / "paper_vs_ours.csv")
    row = versus[(versus["setting"] == "base_s") & (versus["method"] == "CPPO")].iloc[0]
    assert row["paper"] == "12.78" and row["paper_rank"] == 1 and row["ours_rank"] == 1
    for name in ("fig4_validation_curves", "fig7_warmup_diagnostics", "fig9_base_s", "fig11_long_s",
                 "fig5_ablations", "fig2_position_diagnostic"):
        data = (out / f"{name}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", data[16:24])
        assert width > 400 and height > 300
    assert set(result["figures"]["written"]) >= {"fig4", "fig7", "fig9_base_s", "fig11_long_s", "fig5", "fig2"}


def test_seed_band_is_the_t_interval_of_the_mean(results_root):
    res = load_results(results_root)
    group = res.cells[(res.cells["setting"] == "base_s") & (res.cells["label"] == "dppo")]
    steps, mean, low, high = seed_curves(res, group, "headline")
    assert list(steps) == [0, 10, 20, 30]
    assert mean[:3] == pytest.approx([0.5, 0.65, 0.7])
    assert (low[1], high[1]) == pytest.approx((0.65 - 12.7062 * 0.05, 0.65 + 12.7062 * 0.05), abs=1e-4)
    assert mean[3] == pytest.approx(0.6) and pd.isna(low[3])  # only seed 0 reached step 30: no band


def test_fig7_plots_steps_in_order(results_root, tmp_path, monkeypatch):
    """A seed whose budget-mask share is missing at some steps must not send the line backwards."""
    from analysis import figures as F

    res = load_results(results_root)
    for run_dir, gaps in zip(res.sweep_cells("paper_main").query("label == 'cppo' and setting == 'base_s'")["run_dir"],
                             ({10}, set())):
        rows = [{"step": t, "budget_mask_share": None if t in gaps else 0.1 * t / 10, "delta_b_mean": 0.002}
                for t in range(0, 41, 10)]
        (Path(run_dir) / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    plotted = []
    real_save = F.save_figure
    monkeypatch.setattr(F, "save_figure", lambda fig, *a: plotted.extend(
        line.get_xdata() for ax in fig.axes for line in ax.lines if len(line.get_xdata()) > 2) or real_save(fig, *a))
    assert F.fig_warmup(load_results(results_root), "paper_main", ["base_s"], tmp_path)
    assert plotted and all(list(x) == sorted(x) for x in plotted)


def test_colours_follow_the_paper(results_root):
    from analysis.figures import colour_map

    res = load_results(results_root)
    main = colour_map(res.sweep_cells("paper_main"))
    assert main["cppo"] == "#1f77b4" and main["dppo"] == "#d62728" and main["grpo"] == "#2ca02c"
    gate = colour_map(res.sweep_cells("ablation_gate"))
    assert gate["CPPO"] == "#1f77b4" and gate["DPPO"] == "#d62728" and gate["cppo_soft"] == "#ff7f0e"


def test_one_colour_per_variant_across_sweeps():
    from analysis.figures import colour_map

    cells = pd.DataFrame({"label": ["cppo", "CPPO (KL)", "CPPO", "CPPO (KL, other name)", "CPPO (w 0.6)"],
                          "method": ["cppo"] * 5,
                          "variant": ["cppo", "cppo method.divergence=topk_kl", "cppo",
                                      "cppo method.divergence=topk_kl", "cppo setting.w_min=0.6"]})
    colours = colour_map(cells)
    assert colours["cppo"] == colours["CPPO"] == "#1f77b4"
    assert colours["CPPO (KL)"] == colours["CPPO (KL, other name)"] != colours["CPPO (w 0.6)"]
    assert len({colours["cppo"], colours["CPPO (KL)"], colours["CPPO (w 0.6)"]}) == 3


def test_paper_vs_ours_kendall(results_root):
    cells = load_results(results_root).sweep_cells("paper_main")
    long = table1(cells, ["base_s"], ["grpo", "dppo", "cppo"], row_key="method")
    versus = paper_vs_ours(long).query("setting == 'base_s'").set_index("method")
    # paper order on 1.7B-Base: CPPO 12.78 > DPPO 10.90 > GRPO 8.89; ours 80 > 70 > 57.5 → τ = 1
    assert versus.loc["CPPO", "ours_rank"] == 1 and versus.loc["GRPO", "ours_rank"] == 3
    assert versus["kendall_tau"].iloc[0] == pytest.approx(1.0)
    assert aggregate(cells).query("label == 'grpo' and setting == 'long_s'")["collapsed"].item() == 1


def test_report_errors(tmp_path, capsys):
    from sweeps.cli import main

    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "holds no sweep" in capsys.readouterr().err


def test_trh_report_on_the_committed_study(tmp_path):
    """The README's report command end to end on the committed results (Kendall τ needs scipy):
    every table of what is there, Table 1 bolds nothing its comparisons call undetectable, and the
    committed report replays identically from the committed cells."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    root = repo / "results" / "embedded"
    out = tmp_path / "report"
    done = subprocess.run([sys.executable, "-m", "sweeps.cli", "report", str(root), "--out", str(out),
                           "--figures", "png"], capture_output=True, text=True, cwd=repo)
    assert done.returncode == 0, done.stderr[-3000:]
    sweeps = {p.name for p in (root / "sweeps").iterdir()} if (root / "sweeps").exists() else set()
    assert (out / "report.md").exists()
    if "tune_drift" in sweeps:
        assert (out / "tuning_tune_drift.md").exists() and (out / "tuning_tune_drift.png").exists()
    if (out / "table1.csv").exists():
        table, cmp = pd.read_csv(out / "table1.csv"), pd.read_csv(out / "comparisons.csv")
        for r in table[table["bold"]].itertuples():
            rows = cmp[(cmp["score"] == r.protocol) & (cmp["setting"] == r.setting)]
            assert not (rows[rows["other"] == r.label]["verdict"] == "no detectable difference").any()
            if r.label == "cppo":
                assert (rows["verdict"] == "better").all()
    committed = root / "report"
    for path in sorted(committed.glob("*.csv")):  # the committed study replays identically
        if path.name != "provenance.csv":  # (which names each run folder by its absolute path)
            assert (out / path.name).read_text() == path.read_text(), path.name


def test_committed_cells_keep_their_ids():
    """The id rule applied to a committed cell's config snapshot gives the id its folder and status
    carry, so a rerun of the same configs recognises every finished cell (refactors must not orphan
    results: the study script must train nothing on the committed results)."""
    from harness.config import resolve, run_id, semantic_config
    from harness.store import RunStore, run_folders
    from omegaconf import OmegaConf

    repo = Path(__file__).resolve().parents[2]
    folders = [f for f in run_folders(repo / "results" / "embedded") if RunStore(f).read_status()]
    assert len(folders) >= 100  # the tuning sweep alone has 126 cells
    for folder in folders[::7]:
        store = RunStore(folder)
        digest = run_id(semantic_config(store.read_config()))
        assert digest == store.read_status()["config_hash"] == folder.name.rsplit("-", 1)[-1], folder
        assert resolve(OmegaConf.create(store.read_config())).config_hash == digest  # still a valid run config


def test_survival_binding_and_per_sweep_tables(tmp_path):
    root = tmp_path / "results"
    cells = [_write_cell(root, "stress", "grpo", s, [0.5, 0.6], *(("collapsed", 20) if s == 3 else ("done",)))
             for s in range(4)]
    cells += [_write_cell(root, "stress", "cppo", s, [0.5, 0.7]) for s in range(4)]
    for c in cells:  # grpo masks 1 % of tokens at every training step, cppo 3 %; only steps in [1, T_stop] count
        rows = [json.loads(line) for line in (root / c["run_dir"] / "metrics.jsonl").read_text().splitlines()]
        mask = 0.01 if c["method"] == "grpo" else 0.03
        rows += [{"step": 5, "mask_fraction": mask}, {"step": 15, "mask_fraction": mask}, {"step": 99, "mask_fraction": 1.0}]
        (root / c["run_dir"] / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sorted(rows, key=lambda r: r["step"])))
    main = [_write_cell(root, "base_s", m, s, [0.5, 0.6 + 0.1 * s]) for m in ("grpo", "cppo") for s in range(2)]
    for name, feeds, members in (("stress_survival", "survival (stress)", cells), ("paper_main", "Table 1", main)):
        (root / "sweeps" / name).mkdir(parents=True)
        (root / "sweeps" / name / "manifest.json").write_text(json.dumps({"sweep": name, "feeds": feeds, "cells": members}))
    result = build_report(root, tmp_path / "out")
    survival = pd.read_csv(tmp_path / "out" / "survival_stress_survival.csv").set_index("label")
    assert survival.loc["GRPO", "survived"] == 3 and survival.loc["GRPO", "rate %"] == 75.0
    assert survival.loc["GRPO", "95% CI"] == "[19.4, 99.4]"        # Clopper-Pearson for 3 of 4
    assert survival.loc["GRPO", "collapse steps"] == "20"
    assert survival.loc["CPPO", "95% CI"] == "[39.8, 100.0]"       # 4 of 4
    # Fisher exact, 3 of 4 vs 4 of 4: the hypergeometric tables (3, 1) and (4, 0) each have probability 1/2
    assert survival.loc["GRPO", "p vs CPPO"] == pytest.approx(1.0) and pd.isna(survival.loc["CPPO", "p vs CPPO"])
    binding = pd.read_csv(tmp_path / "out" / "binding_stress_survival.csv").set_index("label")
    assert binding.loc["grpo", "masked %"] == 1.0 and binding.loc["cppo", "masked %"] == 3.0
    assert (tmp_path / "out" / "table_stress_survival.md").exists()
    assert (tmp_path / "out" / "comparisons_stress_survival.md").exists()
    # one Figs. 8-11 grid per setting: base_s from the Table 1 sweep, stress from the survival sweep
    assert {"fig9_base_s", "fig_grid_stress"} <= set(result["figures"]["written"])
    assert (tmp_path / "out" / "forest_stress_survival.png").exists()  # each other sweep's comparisons drawn too


def test_survival_against_a_reference_is_fisher_exact_with_holm():
    from analysis.tables import survival

    def arm(label, survived, n=10):
        return [{"setting": "stress", "label": label, "state": "done" if i < survived else "collapsed",
                 "collapse_step": None if i < survived else 10} for i in range(n)]

    cells = pd.DataFrame(arm("cppo", 3) + arm("trm_max", 0) + arm("dppo", 2))
    frame = survival(cells, ["stress"], ["cppo", "trm_max", "dppo"], reference="cppo").set_index("label")
    # 0 of 10 vs 3 of 10: hypergeometric P(0) = C(10,3)/C(20,3) = 120/1140; the other tail P(3) is the same
    assert frame.loc["trm_max", "p vs cppo"] == pytest.approx(240 / 1140)
    assert frame.loc["dppo", "p vs cppo"] == pytest.approx(1.0)
    assert frame.loc["trm_max", "p (Holm)"] == pytest.approx(min(1.0, 2 * 240 / 1140))
    assert pd.isna(frame.loc["cppo", "p vs cppo"]) and frame.loc["cppo", "survived"] == 3
    assert "p vs cppo" not in survival(cells, ["stress"], ["cppo"]).columns  # no reference: no test


def test_fig2_threshold_is_the_cppo_runs_own(results_root):
    from analysis.figures import position_threshold

    res = load_results(results_root)
    cells = res.sweep_cells("paper_main")
    base = cells[cells["setting"] == "base_s"]
    assert position_threshold(res, base[base["method"] == "grpo"])[1:] == (0.01, 0.8)  # no CPPO cell: the setting's
    run_dir = base[base["method"] == "cppo"]["run_dir"].iloc[0]
    config = results_root / run_dir / "config.yaml"  # a tuned CPPO run: δ and w_min in its method block
    config.write_text(config.read_text().replace("method: {name: cppo}", "method: {name: cppo, delta: 0.05, w_min: 0.6}"))
    res = load_results(results_root)
    assert position_threshold(res, res.sweep_cells("paper_main").query("setting == 'base_s'"))[1:] == (0.05, 0.6)
