"""The device check: the GPU path of the harness checked and measured in one unattended run, each step in
its own process under its own time limit, so a hang or a crash in one step costs only that step.

    python scripts/device_check.py --out OUT          # on a GPU machine (scripts/device_check.sh installs
    python scripts/device_check.py --cpu --out OUT    #   the carried wheels first); --cpu: tiny sizes, CPU

Writes OUT/summary.json and OUT/summary.md (and OUT/steps/NAME.json per step, OUT/logs/NAME.log); exits 1 if
any check failed or any step crashed or ran out of time. The steps are in ``scripts/device_steps.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Step:
    name: str
    limit_s: int        # on a GPU machine: the limits add up to under nine minutes with the start-up
    cpu_limit_s: int    # in --cpu mode (CI): the limits add up to under five minutes
    what: str


STEPS = (
    Step("environment", 45, 60, "versions; the GPU; the packages the other steps import"),
    Step("tests", 150, 150, "registry, fused-loss, KV-cache and bf16-ratio tests on the device"),
    Step("fused_loss", 140, 60, "fused vs logits path (and Liger's GRPO loss): forward + backward time and memory"),
    Step("local_engine", 90, 60, "the local engine's rollout and update at Qwen3-1.7B's shape, bf16"),
    Step("trl_engine", 90, 90, "two RL steps of the TRL engine on a tiny model"),
)


def run_one(step: Step, gpu: bool, out: Path, limit_s: float) -> dict:
    """Run one step in a child process; its result, or a failed check saying how it ended."""
    result_file, log_file = out / "steps" / f"{step.name}.json", out / "logs" / f"{step.name}.log"
    result_file.unlink(missing_ok=True)
    cmd = child_command(step, gpu, out)
    started = time.perf_counter()
    ended = ""
    with open(log_file, "w") as log:
        process = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   start_new_session=True)
        deadline = started + limit_s
        try:
            for line in _lines_until(process, deadline):
                log.write(line)
                print(f"[{step.name} {time.perf_counter() - started:5.0f}s] {line}", end="", flush=True)
        except TimeoutError:
            os.killpg(process.pid, 9)
            ended = f"killed at its time limit of {limit_s:.0f} s"
        code = process.wait()
    seconds = round(time.perf_counter() - started, 1)
    if not ended and result_file.exists():
        return {**json.loads(result_file.read_text()), "seconds": seconds}
    ended = ended or f"exited with {code} before writing its result (last lines in logs/{step.name}.log)"
    return {"checks": [{"name": f"step {step.name}", "ok": False, "detail": ended}], "measured": {},
            "seconds": seconds}


def child_command(step: Step, gpu: bool, out: Path) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--step", step.name, "--out", str(out),
            *([] if gpu else ["--cpu"])]


def _lines_until(process, deadline: float):
    """The child's output lines, raising TimeoutError once ``deadline`` passes (checked at every line and
    every second of silence)."""
    import selectors

    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    while True:
        left = deadline - time.perf_counter()
        if left <= 0:
            raise TimeoutError
        if selector.select(timeout=min(1.0, left)):
            line = process.stdout.readline()
            if not line:
                return
            yield line
        elif process.poll() is not None:
            rest = process.stdout.read()
            if rest:
                yield rest
            return


def run_all(steps, gpu: bool, out: Path) -> dict:
    (out / "steps").mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    started, results = time.perf_counter(), {}
    for step in steps:
        limit = step.limit_s if gpu else step.cpu_limit_s
        print(f"== {step.name} (at most {limit} s): {step.what}", flush=True)
        results[step.name] = run_one(step, gpu, out, limit)
        failed = [c for c in results[step.name]["checks"] if not c["ok"]]
        print(f"== {step.name}: {'ok' if not failed else 'FAILED: ' + '; '.join(c['name'] for c in failed)} "
              f"({results[step.name]['seconds']} s)", flush=True)
    summary = {"mode": "gpu" if gpu else "cpu", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "seconds": round(time.perf_counter() - started, 1),
               "ok": all(c["ok"] for r in results.values() for c in r["checks"]), "steps": results}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    (out / "summary.md").write_text(markdown(summary))
    return summary


def markdown(summary: dict) -> str:
    steps = summary["steps"]
    env = steps.get("environment", {}).get("measured", {})
    lines = [f"# Device check ({summary['mode']} mode), {summary['date']}", "",
             f"Machine: {env.get('device', 'CPU')} ({env.get('memory_gib', '?')} GiB), CUDA {env.get('cuda')}, "
             f"Python {env.get('python')}; total {summary['seconds']} s; "
             f"**{'all checks passed' if summary['ok'] else 'FAILED'}**.", "",
             "| step | check | result | detail |", "| --- | --- | --- | --- |"]
    for name, result in steps.items():
        for c in result["checks"]:
            lines.append(f"| {name} | {c['name']} | {'ok' if c['ok'] else '**FAILED**'} | {c['detail']} |")
    versions = env.get("versions", {})
    if versions:
        lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items())]
    for name in ("fused_loss", "local_engine"):
        rows = steps.get(name, {}).get("measured", {}).get("rows")
        if rows:
            lines += ["", f"## {name}", "", _table(rows)]
            measured = steps[name]["measured"]
            if name == "fused_loss":
                lines.append(f"\nForward + backward, median of {measured.get('rounds')} rounds after a warm-up; GiB: "
                             f"peak allocated above the inputs (GPU only); Liger: {measured.get('liger')}.")
            if measured.get("peak_gib") is not None:
                lines.append(f"\nPeak memory allocated: {measured['peak_gib']:.2f} GiB "
                             f"({measured.get('parameters', 0) / 1e9:.2f} B parameters).")
    trl = steps.get("trl_engine", {}).get("measured")
    if trl:
        lines += ["", "## trl_engine", "", ", ".join(f"{k}: {v}" for k, v in trl.items())]
    tests = steps.get("tests", {}).get("measured", {})
    if tests.get("failed"):
        lines += ["", "## failed tests", ""] + [f"- {t}" for t in tests["failed"]]
    return "\n".join(lines) + "\n"


def _table(rows: list[dict]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    out = ["| " + " | ".join(keys) + " |", "| " + " | ".join("---" for _ in keys) + " |"]
    out += ["| " + " | ".join("" if r.get(k) is None else str(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="folder for the summaries, results and logs")
    parser.add_argument("--cpu", action="store_true", help="tiny sizes on the CPU (CI): the same code paths")
    parser.add_argument("--only", nargs="+", choices=[s.name for s in STEPS], help="run only these steps")
    parser.add_argument("--step", choices=[s.name for s in STEPS], help=argparse.SUPPRESS)  # a child process
    args = parser.parse_args(argv)
    out = args.out.resolve()
    if args.step:
        sys.path.insert(0, str(ROOT))
        sys.path.insert(0, str(ROOT / "scripts"))
        from device_steps import run_step

        result = run_step(args.step, not args.cpu, out)
        (out / "steps" / f"{args.step}.json").write_text(json.dumps(result, indent=1, default=str))
        return 0
    steps = [s for s in STEPS if not args.only or s.name in args.only]
    summary = run_all(steps, not args.cpu, out)
    print(f"\n{out / 'summary.md'}\n{(out / 'summary.md').read_text()}")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
