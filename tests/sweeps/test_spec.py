"""Sweep specs → cells, and every bad input rejected before anything runs (no training here)."""

import os
import stat

import pytest

from sweeps.driver import prepare
from sweeps.executors import check_slurm, resources
from sweeps.search import open_storage, parse_search
from sweeps.spec import SweepError, load_raw, spec_names

GRIDS = {"paper_main": 84, "ablation_mechanism": 40, "ablation_ordering": 30, "ablation_gate": 30, "sensitivity": 40,
         "divergence_kl_tv": 40, "divergence_binary_topk": 30, "position_diagnostics": 2, "smoke": 4, "demo": 7,
         "lm_smoke": 4, "tune_drift": 126, "drift_main": 110, "drift_confirm": 140, "stress_survival": 80,
         "tune_rules": 112, "rules_confirm": 110, "horizon_pilot": 16, "horizon_confirm": 256,
         **{f"tune_h{t}": 24 for t in (14, 27, 59, 115)}}
# a stand-in for tune_drift's choices (the real ones need its 108 runs): arm → the chosen overrides
FAKE_CHOICE = {"cppo": ["++method.delta=0.02", "++method.delta_b=0.001"], "dppo": ["++method.delta=0.01"],
               "cppo_kl": ["++method.divergence=topk_kl", "++method.delta=0.03", "++method.delta_b=0.002"],
               "grpo": ["++method.eps_low=0.05", "++method.eps_high=0.07"], "cispo": ["++method.cap=1.5"],
               "minpro": ["++method.cap=1.25"], "trm_max": ["++method.delta_max=0.1"],
               "trm_avg": ["++method.delta_avg=0.003"], "trm_max_avg": ["++method.delta_max=0.2", "++method.delta_avg=0.004"],
               **{preset: ["++method.delta=0.02", "++method.delta_b=0.001"]
                  for preset in ("cppo_paper", "cppo_unirl", "cppo_verl")},
               "sapo": ["++method.temperature_pos=30.0", "++method.temperature_neg=31.5"],
               "gspo": ["++method.eps_low=0.003", "++method.eps_high=0.004"], "vespo": ["++method.k_pos=4.0"],
               "opsm": ["++method.delta=0.01"], "drpo": ["++method.eps=0.03"]}


@pytest.fixture
def fake_tuning(monkeypatch):
    import sweeps.tuned as tuned_module

    calls = []

    def choice(results_root, sweep, arm, where, to_overrides):
        calls.append((sweep, arm))
        return list(FAKE_CHOICE[arm])

    monkeypatch.setattr(tuned_module, "tuned_overrides", choice)
    return calls


def test_every_paper_artefact_has_a_spec():
    assert set(GRIDS) | {"search_cppo", "search_smoke"} == set(spec_names())


@pytest.mark.parametrize("name", sorted(GRIDS))
def test_grid_specs_expand(name, tmp_path, fake_tuning):
    spec, cells, _, _ = prepare(name, [], tmp_path)
    assert len(cells) == GRIDS[name]
    assert len({c.id for c in cells}) == len(cells)  # one config per cell
    assert all(c.run_dir.parent == tmp_path / "runs" and c.id in c.run_dir.name for c in cells)
    assert all(c.config["engine"]["threads"] == 1 and c.config["seed"] == c.seed for c in cells)
    assert not (tmp_path / "runs").exists()  # expanding runs nothing


def test_tuned_specs_use_each_arms_choice(tmp_path, fake_tuning):
    _, main, _, _ = prepare("drift_main", [], tmp_path)
    _, gate, _, _ = prepare("ablation_gate", [], tmp_path)
    _, kl, _, _ = prepare("divergence_kl_tv", [], tmp_path)
    _, sens, _, _ = prepare("sensitivity", [], tmp_path)
    main_ids = {(c.label, c.seed): c.id for c in main}
    # the ablations' CPPO and DPPO cells are drift_main's (same tuned config, same seeds): trained once
    assert {c.id for c in gate if c.label in ("CPPO", "DPPO")} == {main_ids[(m, s)] for m in ("cppo", "dppo")
                                                                   for s in range(20, 30)}
    soft = next(c for c in gate if c.label == "soft gate")
    assert soft.config["method"]["name"] == "cppo_soft" and soft.config["method"]["delta"] == 0.02
    cppo_kl = next(c for c in kl if c.label == "CPPO (KL)")
    assert cppo_kl.config["method"]["divergence"] == "topk_kl" and cppo_kl.config["method"]["delta"] == 0.03
    fixed = next(c for c in sens if c.label.startswith("CPPO (fixed"))
    assert fixed.config["method"]["budget"] == "fixed" and fixed.config["method"]["delta_b"] == 0.001
    assert ("tune_drift", "cppo_kl") in fake_tuning and ("tune_drift", "trm_max_avg") in fake_tuning
    _, position, _, _ = prepare("position_diagnostics", [], tmp_path)
    assert {c.id for c in position} == {main_ids[("grpo", 20)], main_ids[("cppo", 20)]}  # nothing of its own
    paper = next(c for c in main if c.label.startswith("GRPO (paper"))
    assert paper.config["method"]["eps_low"] == 0.2 and main_ids[("grpo", 20)] != paper.id


def test_each_setting_runs_its_own_tuning_sweeps_choice(tmp_path, monkeypatch):
    import sweeps.spec as spec_module
    import sweeps.tuned as tuned_module

    calls = []

    def choice(results_root, sweep, arm, where, to_overrides):  # a distinct choice per tuning sweep: its horizon in δ
        calls.append((sweep, arm))
        return [f"++method.{'eps_low' if arm == 'grpo' else 'delta'}=0.{sweep.removeprefix('tune_h')}"]

    monkeypatch.setattr(tuned_module, "tuned_overrides", choice)
    spec, cells, _, _ = prepare("horizon_confirm", [], tmp_path)
    assert sorted(calls) == sorted((f"tune_h{h}", arm) for h in (14, 27, 59, 115) for arm in ("cppo", "dppo", "grpo"))
    for c in cells:
        horizon = c.setting.removeprefix("chain_h")
        if c.method == "pg_is":
            assert not any(o.startswith("++method.") for o in c.overrides)
        else:
            key = "eps_low" if c.method == "grpo" else "delta"
            assert c.config["method"][key] == float(f"0.{horizon}"), c.describe()
    assert {c.seed for c in cells} == set(range(1, 17)) and spec.preregistration["trend"]["other"] == "DPPO"
    calls.clear()
    _, narrowed, _, _ = prepare("horizon_confirm", ["setting=chain_h27"], tmp_path)  # one horizon: its own choice
    assert {c.setting for c in narrowed} == {"chain_h27"} and {s for s, _ in calls} == {"tune_h27"}
    assert {c.id for c in narrowed} == {c.id for c in cells if c.setting == "chain_h27"}
    raw, path = load_raw("horizon_confirm")
    raw["variants"]["CPPO"]["tuned"] = {**raw["variants"]["CPPO"]["tuned"], "chain_h15": "tune_h14"}
    with pytest.raises(SweepError, match="names setting\\(s\\) \\['chain_h15'\\] that the spec does not run"):
        spec_module.parse(raw, path)
    raw["variants"]["CPPO"]["tuned"] = {"chain_h14": "tune_h14"}
    with pytest.raises(SweepError, match="names no tuning sweep for setting\\(s\\) \\['chain_h27'"):
        spec_module.parse(raw, path)
    raw["variants"]["CPPO"]["tuned"] = {"chain_h14": "tune h14!"}
    with pytest.raises(SweepError, match="must map settings to tuning sweeps"):
        spec_module.parse(raw, path)


def test_tuning_grid_spans_each_arm_equally(tmp_path):
    spec, cells, _, _ = prepare("tune_drift", [], tmp_path)
    arms = {}
    for v in spec.variants:
        arms.setdefault(v.arm, []).append(v.label)
    assert {a: len(v) for a, v in arms.items()} == {a: 7 for a in ("grpo", "cispo", "minpro", "dppo", "trm_max",
                                                                    "trm_avg", "trm_max_avg", "cppo", "cppo_kl")}
    assert {c.seed for c in cells} == {1000, 1001} and {c.setting for c in cells} == {"drift_s"}


def test_paper_main_grid_and_order(tmp_path):
    spec, cells, _, _ = prepare("paper_main", [], tmp_path)
    assert spec.settings == ["post_s", "base_s", "base_m", "long_s"]
    assert [v.method for v in spec.variants] == ["grpo", "minpro", "cispo", "dppo", "trm_max", "trm_avg", "cppo"]
    assert {(c.setting, c.method, c.seed) for c in cells} == {
        (s, v.method, seed) for s in spec.settings for v in spec.variants for seed in (0, 1, 2)}
    # settings interleaved: parallel workers warm up different settings first
    assert [c.setting for c in cells[:4]] == spec.settings
    assert {c.setting: c.t_stop for c in cells} == {"post_s": 60, "base_s": 60, "base_m": 40, "long_s": 40}


def test_cells_are_config_hashes_shared_across_sweeps(tmp_path):
    _, main, _, _ = prepare("paper_main", [], tmp_path)
    _, demo, _, _ = prepare("demo", [], tmp_path)
    main_ids = {(c.setting, c.method, c.seed): c.id for c in main}
    assert [c.id for c in demo] == [main_ids[("base_s", c.method, 0)] for c in demo]
    # the same method with other parameters is another cell
    _, other, _, _ = prepare("demo", ["method.delta=0.02", "method=cppo"], tmp_path)
    assert other[0].id not in main_ids.values()


def test_adding_a_seed_or_an_override_changes_only_what_it_should(tmp_path):
    _, three, _, _ = prepare("demo", ["seed=0,1,2"], tmp_path)
    _, four, _, _ = prepare("demo", ["seed=0,1,2,3"], tmp_path)
    assert {c.id for c in three} < {c.id for c in four} and len(four) - len(three) == 7
    _, lr, _, _ = prepare("demo", ["rl.lr=2e-4"], tmp_path)
    assert {c.id for c in lr}.isdisjoint({c.id for c in three})
    assert all(c.config["rl"]["lr"] == 2e-4 for c in lr)


def test_command_line_axes(tmp_path):
    _, cells, _, _ = prepare("paper_main", ["setting=base_*", "method=cppo,dppo", "seed=5"], tmp_path)
    assert sorted((c.setting, c.method, c.seed) for c in cells) == [
        ("base_m", "cppo", 5), ("base_m", "dppo", 5), ("base_s", "cppo", 5), ("base_s", "dppo", 5)]


def test_resources_merge_and_reject_unknown_keys():
    res = resources({"slurm": {"mem_gb": 8}}, ["slurm.partition=gpu", "local.cpus_per_task=2"])
    assert res["slurm"]["mem_gb"] == 8 and res["slurm"]["partition"] == "gpu" and res["local"]["cpus_per_task"] == 2
    with pytest.raises(SweepError, match="resources.slurm: unknown key.*'gpus'"):
        resources({}, ["slurm.gpus=2"])
    with pytest.raises(SweepError, match="cpus_per_task must be a positive integer"):
        resources({}, ["local.cpus_per_task=0"])
    assert resources({}, ["local.share_tail=false"])["local"]["share_tail"] is False
    with pytest.raises(SweepError, match="share_tail must be true or false, got 'sometimes'"):
        resources({}, ["local.share_tail=sometimes"])


def _spec_file(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("text, overrides, match", [
    ("settings: [base_s]\nmethods: [nope]\nseeds: [0]\n", [], r"unknown method 'nope'.*allowed: .*cppo"),
    ("settings: [nowhere]\nmethods: [grpo]\nseeds: [0]\n", [], r"unknown setting 'nowhere'; allowed: .*base_s"),
    ("settings: [base_s]\nmethods: [grpo]\nseeds: []\n", [], r"the grid is empty.*seeds=\[\]"),
    ("settings: [base_s]\nmethods: []\nseeds: [0]\n", [], r"the grid is empty"),
    ("settings: [base_s]\nmethods: [grpo]\nseeds: [0]\n", ["method=bogus"],
     r"method=bogus: neither a method nor a variant.*the spec has grpo; methods: .*cppo"),
    ("settings: [base_s]\nmethods: [grpo]\nseeds: [x]\n", [], r"seeds must be integers"),
    ("settings: [base_s]\nmethod: [grpo]\nseeds: [0]\ncolour: red\n", [], r"unknown key\(s\) \['colour'\]"),
    ("settings: [base_s]\nmethods: [grpo]\nseeds: [0]\n", ["rl.nonexistent_knob=1"], r"rl.nonexistent_knob is not a config key"),
    ("settings: [base_s]\nmethods: [grpo]\nseeds: [0]\n", ["+rl.lrr=1"], r"rl.lrr is not a config key \(did you mean rl.lr\?\)"),
    ("settings: [base_s]\nmethods: [grpo]\nseeds: [0]\n", ["engine.threads=2"], r"engine.threads is set by the sweep from local.cpus_per_task"),
    ("settings: [base_s]\nmethods: [grpo]\nseeds: [0]\n", ["setting.delta=0.1"], r"set method.delta=... instead"),
    ("settings: [base_s]\nmethods: [grpo]\nseeds: [0]\n", ["rl.lr=1e-4,"], r"override 'rl.lr=1e-4,'"),
    ("settings: [base_s]\nmethods: [grpo]\nseeds: [0]\n", ["rl.lr=-1"], r"rl.lr must be > 0"),
    ("settings: [base_s]\nvariants: {A: {method: cppo}, B: {method: cppo}}\nseeds: [0]\n", [], r"same config"),
    ("settings: [base_s]\nvariants: {A: {method: cppo, paramz: {}}}\nseeds: [0]\n", [], r"unknown key\(s\) \['paramz'\]"),
])
def test_bad_grid_specs_fail_before_running(tmp_path, text, overrides, match):
    with pytest.raises(SweepError, match=match):
        prepare(_spec_file(tmp_path, text), overrides, tmp_path / "results")
    assert not (tmp_path / "results").exists()


def test_unknown_sweep_lists_the_known_ones(tmp_path):
    with pytest.raises(SweepError, match=r"unknown sweep 'paper_mian'; known sweeps: .*paper_main"):
        prepare("paper_mian", [], tmp_path)


def test_search_spec_is_not_a_grid(tmp_path):
    with pytest.raises(SweepError, match="trh search search_cppo"):
        prepare("search_cppo", [], tmp_path)


@pytest.mark.parametrize("space, match", [
    ({"method.delta_b": {"low": 0.05, "high": 0.005}}, r"low \(0.05\) must be < high \(0.005\)"),
    ({"method.delta_b": {"low": 0.0, "high": 0.05, "log": True}}, r"log scale needs low > 0"),
    ({"method.delta_b": {"low": "a", "high": 0.05}}, r"must be numbers"),
    ({"method.delta_b": {"high": 0.05}}, r"needs low and high"),
    ({"method.w_min": {"choices": []}}, r"non-empty list"),
])
def test_bad_search_spaces(space, match):
    raw = {"name": "s", "kind": "search", "setting": "smoke", "method": "cppo", "seeds": [0], "space": space}
    with pytest.raises(SweepError, match=match):
        parse_search(raw, {})


def test_search_defaults_to_the_paper_space():
    raw, _ = load_raw("search_cppo")
    raw = {k: v for k, v in raw.items() if k != "space"}
    spec = parse_search(raw, {})
    assert spec.space == {"method.delta_b": {"low": 0.005, "high": 0.05, "log": True},
                          "method.w_min": {"low": 0.5, "high": 1.0}}


def test_bad_storage_url_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SweepError, match=r"--storage 'sqlite:////.*cannot be opened"):
        open_storage(f"sqlite:///{blocker}/sub/x.db", tmp_path / "j.log")
    with pytest.raises(SweepError, match=r"--storage .*cannot be opened"):
        open_storage("nosuchdialect://host/db", tmp_path / "j.log")
    with pytest.raises(SweepError, match=r"cannot be opened"):
        open_storage(str(blocker / "journal.log"), tmp_path / "j.log")


def test_search_cli_errors_before_any_trial(tmp_path, capsys):
    from sweeps.cli import main

    code = main(["search", "search_smoke", "--trials", "2", "--results", str(tmp_path),
                 "--storage", f"sqlite:///{tmp_path}/no/such/dir/x.db"])
    assert code == 2 and "cannot be opened" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    assert main(["search", "search_smoke", "--trials", "2", "--results", str(tmp_path), "setting=nowhere"]) == 2
    assert "unknown setting 'nowhere'" in capsys.readouterr().err


def _fake_slurm(tmp_path, ping_output, code):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool, body in {"sbatch": "exit 0", "srun": "exit 0", "scontrol": f"echo '{ping_output}'; exit {code}"}.items():
        path = bin_dir / tool
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def test_unreachable_slurm_controller(tmp_path, monkeypatch, capsys):
    bin_dir = _fake_slurm(tmp_path, "Slurmctld(primary) at nohost is DOWN", 1)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(SweepError, match=r"SLURM controller is unreachable.*DOWN"):
        check_slurm()
    from sweeps.cli import main

    assert main(["sweep", "smoke", "--executor", "slurm", "--results", str(tmp_path / "r")]) == 2
    assert "unreachable" in capsys.readouterr().err
    assert not (tmp_path / "r" / "runs").exists()


def test_missing_slurm_tools(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SweepError, match=r"sbatch/scontrol/srun not on PATH"):
        check_slurm()


def test_bad_sampler_or_pruner(tmp_path):
    from sweeps.search import _pruner, _sampler

    with pytest.raises(SweepError, match=r"sampler.name must be one of \['cmaes', 'gp', 'random', 'tpe'\], got 'x'"):
        _sampler({"name": "x"})
    with pytest.raises(SweepError, match=r"pruner median: .*unexpected keyword argument 'bogus'"):
        _pruner({"name": "median", "bogus": 1})


def test_status_of_a_sweep_nobody_ran(tmp_path):
    from sweeps.driver import cell_states

    rows = cell_states("smoke", [], tmp_path)
    assert [r["verdict"] for r in rows] == ["missing"] * 4 and not (tmp_path / "runs").exists()


def test_bad_method_parameter_fails_before_any_cell(tmp_path, capsys):
    """Method parameters are checked when the cells' configs are resolved: one line naming the field,
    nothing written, no warm-up or cell started."""
    from sweeps.cli import main

    code = main(["sweep", "smoke", "method=cppo", "method.delta=-1", "--results", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "delta must be > 0" in err, err
    assert not (tmp_path / "r").exists()
    code = main(["train", "setting=smoke", "method.w_min=1.5", f"results_root={tmp_path / 't'}"])
    assert code == 2 and "w_min must be in (0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()
