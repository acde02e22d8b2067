"""Measure the evaluation noise of an embedded setting, and what an evaluation design costs.

    python scripts/eval_noise.py setting=base_s --streams 30 --out results/embedded/eval_noise.json
    python scripts/eval_noise.py setting=long_s --designs 24x4:old --rl-steps 30

Two fixed models are trained from the setting's warm start (GRPO and CPPO, ``--rl-steps`` steps, seed
0), then each design — the setting's validation size, its test size, and any ``--designs`` — evaluates
both with ``--streams`` different evaluation seeds:
- ``sd_single``: SD of one model's headline across evaluation seeds (the noise of a single score);
- ``sd_diff``: SD of the difference of the two models' headlines evaluated as the study compares
  them (same seed and step → the same problems and, with common random numbers, the same noise);
- ``eval_s``: seconds per evaluation of three splits at that size (one thread);
- ``plan``: the setting's evaluation — validation at step 0 and every ``eval.every`` steps
  (``eval.problems_per_split``), the test splits once (``eval.test_problems_per_split``) — its share of
  a whole run's time (``setting.steps`` training steps, median step time of the two runs), and the SD
  of a paired difference of held-out scores (the test design's ``sd_diff``).
A design ``PxK`` is P problems per split and K samples per problem with common random numbers (the
harness's evaluation); ``PxK:old`` is the evaluation used before (independent multinomial streams per
split, no common noise). Results are merged into ``--out`` (one entry per setting), which
``trh report`` reads into ``eval_noise.md``.
"""

from __future__ import annotations

import argparse
import json
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.stats import noise_sd  # noqa: E402
from harness.config import compose, resolve  # noqa: E402
from harness.evaluation import split_scores  # noqa: E402
from harness.model import CharTokenizer, build_model  # noqa: E402
from harness.rollout import sample  # noqa: E402
from harness.store import RunStore, atomic_write_text  # noqa: E402
from harness.tasks import make_task  # noqa: E402
from harness.train import run  # noqa: E402
from harness.warmup import encode_problems, rollout_rewards, warm_start  # noqa: E402
from methods.seeds import derive_seed  # noqa: E402


def old_headline(model, tokenizer, task, ev, stream: int) -> float:
    """The evaluation before common random numbers: multinomial sampling, the splits one after another."""
    scores, gen = [], torch.Generator().manual_seed(stream)
    for split in task.validation_splits:
        problems = task.problems(split, ev.problems_per_split)
        prompts = encode_problems(tokenizer, task, problems).repeat_interleave(ev.samples, 0)
        roll = sample(model, prompts, task.max_response_tokens, tokenizer.eos_id, tokenizer.pad_id,
                      gen, temperature=ev.temperature, top_p=ev.top_p)
        rows = [p for p in problems for _ in range(ev.samples)]
        scores.append(float(rollout_rewards(tokenizer, task, rows, roll).mean()))
    return statistics.fmean(scores)


def headline(model, tokenizer, task, ev, stream, old: bool) -> float:
    if old:
        return old_headline(model, tokenizer, task, ev, stream)
    row = split_scores(model, tokenizer, task, ev, stream, task.validation_splits)
    return statistics.fmean(row.values())


def train_models(overrides, steps: int, folder: Path) -> tuple[dict, float]:
    """GRPO and CPPO after ``steps`` RL steps from the warm start; and training seconds per step."""
    models, per_step = {}, []
    for method in ("grpo", "cppo"):
        path = folder / f"{method}.pt"
        cfg = compose([*overrides, f"method={method}", f"setting.steps={steps}", f"setting.t_stop={steps}",
                       f"eval.every={steps}", "logging=quiet", "engine.threads=1", f"run_dir={folder / method}"])
        run(cfg, keep_model=path)
        rows = [r for r in RunStore(folder / method).read_metrics() if r["step"] > 0]
        per_step += [r["time_rollout"] + r["time_update"] for r in rows]
        models[method] = torch.load(path, weights_only=True)
    return models, statistics.median(per_step)


def measure(overrides, designs, streams: int, rl_steps: int) -> dict:
    torch.set_num_threads(1)
    spec = resolve(compose(overrides))
    ev = spec.eval
    plan = (f"{ev.problems_per_split}x{ev.samples}", f"{ev.test_problems_per_split}x{ev.samples}")
    designs = list(dict.fromkeys([*designs, *plan]))
    task = make_task(spec.task)
    tokenizer = CharTokenizer(task.alphabet)
    state, _ = warm_start(spec.model, spec.warmup, task)
    with tempfile.TemporaryDirectory() as tmp:
        states, train_step_s = train_models(overrides, rl_steps, Path(tmp))
    models = {}
    for name, weights in states.items():
        model = build_model(spec.model, tokenizer.vocab_size, task.max_positions, seed=0)
        model.load_state_dict(weights)
        models[name] = model.eval()
    evals_per_run = spec.steps // spec.eval.every + 1
    out = {"setting": spec.setting_name, "rl_steps": rl_steps, "streams": streams, "steps": spec.steps,
           "eval_every": spec.eval.every, "train_step_s": train_step_s, "designs": []}
    for design in designs:
        size, _, old = design.partition(":")
        problems, samples = (int(v) for v in size.split("x"))
        ev = dataclasses.replace(spec.eval, problems_per_split=problems, samples=samples)
        scores = {name: [] for name in models}
        started = time.perf_counter()
        for i in range(streams):
            stream = derive_seed("eval_noise_probe", i)
            for name, model in models.items():
                scores[name].append(headline(model, tokenizer, task, ev, stream, old == "old"))
        eval_s = (time.perf_counter() - started) / (streams * len(models))
        diffs = [a - b for a, b in zip(scores["grpo"], scores["cppo"])]
        single, diff = noise_sd(scores["grpo"]), noise_sd(diffs)
        out["designs"].append({
            "design": design, "problems_per_split": problems, "samples": samples, "common_noise": old != "old",
            "sd_single": single.estimate, "sd_single_ci": [single.low, single.high],
            "sd_diff": diff.estimate, "sd_diff_ci": [diff.low, diff.high], "mean_diff": statistics.fmean(diffs),
            "mean_grpo": statistics.fmean(scores["grpo"]), "mean_cppo": statistics.fmean(scores["cppo"]),
            "eval_s": eval_s, "eval_share": evals_per_run * eval_s / (spec.steps * train_step_s + evals_per_run * eval_s)})
        d = out["designs"][-1]
        print(f"{spec.setting_name} {design:>10}: sd(one model) {100 * d['sd_single']:.2f} pts, sd(diff) "
              f"{100 * d['sd_diff']:.2f} pts [{100 * diff.low:.2f}, {100 * diff.high:.2f}], eval {eval_s:.2f} s",
              flush=True)
    by = {d["design"]: d for d in out["designs"]}
    val, test = by[plan[0]], by[plan[1]]
    eval_total = evals_per_run * val["eval_s"] + test["eval_s"]
    out["plan"] = {"val": plan[0], "test": plan[1], "eval_s": eval_total,
                   "eval_share": eval_total / (spec.steps * train_step_s + eval_total),
                   "sd_diff_heldout": test["sd_diff"], "sd_diff_heldout_ci": test["sd_diff_ci"]}
    print(f"{spec.setting_name} plan val {plan[0]} every {spec.eval.every} + test {plan[1]} once: "
          f"{100 * out['plan']['eval_share']:.0f} % of a run; held-out difference SD {100 * test['sd_diff']:.2f} pts "
          f"[{100 * test['sd_diff_ci'][0]:.2f}, {100 * test['sd_diff_ci'][1]:.2f}]", flush=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. setting=base_s")
    parser.add_argument("--designs", default="24x4:old", help="further designs PxK (':old' = the old evaluation)")
    parser.add_argument("--streams", type=int, default=20, help="evaluation seeds per design")
    parser.add_argument("--rl-steps", type=int, default=20, help="RL steps of the two fixed models")
    parser.add_argument("--out", default=None, help="JSON file to merge the result into")
    args = parser.parse_args(argv)
    result = measure(args.overrides, [d for d in args.designs.split(",") if d], args.streams, args.rl_steps)
    if args.out:
        path = Path(args.out)
        merged = json.loads(path.read_text()) if path.exists() else {}
        merged[result["setting"]] = result
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(merged, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
