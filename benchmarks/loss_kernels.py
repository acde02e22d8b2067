"""Loss kernels from logits: time and peak memory, side by side, each in a fresh process.

    python benchmarks/loss_kernels.py                 # B=4, T=4096, V=32768, K=20, fp32 logits
    python benchmarks/loss_kernels.py --small         # a quick run (B=2, T=512, V=8192)

Kernels (forward: logits → scalar loss):
  grpo   the project's GRPO path: chunked sampled-token log-prob + registry loss
  cppo   the project's CPPO path: chunked log-prob and π's Top-K log-probs from one log-normaliser
         per chunk, Top-K TV, CPPO mask, loss
  naive  reference: one full fp32 log_softmax for the log-prob and another for the Top-K TV, then
         the same CPPO loss
Times are medians over rounds that alternate the three kernels in one process (so machine noise
hits all of them alike). Peak memory is measured in a fresh process per kernel: its peak RSS above
the resident inputs (VmHWM reset after the inputs are built). Targets (issue #5): cppo/grpo time ≤ 1.3, cppo/naive time ≤ 0.3, cppo extra memory ≤ 0.05×
the logits' size.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def _inputs(b, t, v, k, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, t, v, generator=g).requires_grad_(True)
    ids = torch.randint(0, v, (b, t), generator=g)
    # μ: a nearby distribution's top-K over a random id set (values sorted, as an engine returns them)
    topk_ids = torch.randint(0, v, (b, t, k), generator=g)
    topk_logp = (-torch.rand(b, t, k, generator=g) * 8 - 3).sort(-1, descending=True).values
    rollout_logp = -torch.rand(b, t, generator=g) * 8 - 3
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[:, int(t * 0.9):] = False
    adv = torch.randn(b, generator=g)
    return dict(logits=logits, ids=ids, topk_ids=topk_ids, topk_logp=topk_logp,
                rollout_logp=rollout_logp, mask=mask, adv=adv)


def _kernel(name, x, t):
    import torch

    from methods import PolicyBatch, get_method, policy_logprobs_from_logits

    base = dict(rollout_logp=x["rollout_logp"], advantages=x["adv"], response_mask=x["mask"])
    if name == "grpo":
        logp, _ = policy_logprobs_from_logits(x["logits"], x["ids"])
        return get_method("grpo", horizon=t)(PolicyBatch(logp=logp, **base)).loss
    if name == "cppo":
        logp, pi_topk = policy_logprobs_from_logits(x["logits"], x["ids"], x["topk_ids"])
    elif name == "naive":
        logp = torch.log_softmax(x["logits"], dim=-1).gather(-1, x["ids"][..., None]).squeeze(-1)
        with torch.no_grad():
            pi_topk = torch.log_softmax(x["logits"], dim=-1).gather(-1, x["topk_ids"])
    else:
        raise ValueError(name)
    batch = PolicyBatch(logp=logp, response_ids=x["ids"], rollout_topk_ids=x["topk_ids"],
                        rollout_topk_logp=x["topk_logp"], policy_topk_logp=pi_topk, **base)
    return get_method("cppo", horizon=t)(batch).loss


def _timed(name, x, t, backward) -> float:
    start = time.perf_counter()
    loss = _kernel(name, x, t)
    if backward:
        loss.backward()
        x["logits"].grad = None
    return time.perf_counter() - start


def peak_memory(name, b, t, v, k, backward):
    """Child process: build inputs, reset the peak, run the kernel once; print one JSON line."""
    x = _inputs(b, t, v, k)
    resident = _rss_kib("VmRSS")
    _reset_peak()
    _timed(name, x, t, backward)
    peak = _rss_kib("VmHWM")
    print(json.dumps({"kernel": name, "extra_mib": (peak - resident) / 1024}))


def alternating_times(names, b, t, v, k, repeats, backward) -> dict:
    import torch

    x = _inputs(b, t, v, k)
    times = {n: [] for n in names}
    for round_ in range(repeats + 1):  # round 0 warms up
        for name in names:
            elapsed = _timed(name, x, t, backward)
            if round_:
                times[name].append(elapsed)
    logits_mib = x["logits"].numel() * x["logits"].element_size() / 2**20
    return {"times": times, "logits_mib": logits_mib, "threads": torch.get_num_threads()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--B", type=int, default=4)
    parser.add_argument("--T", type=int, default=4096)
    parser.add_argument("--V", type=int, default=32768)
    parser.add_argument("--K", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5, help="timing rounds (after one warm-up round)")
    parser.add_argument("--small", action="store_true", help="B=2, T=512, V=8192 (seconds, for a smoke run)")
    parser.add_argument("--backward", action="store_true", help="time forward + backward (informational)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.small:
        args.B, args.T, args.V = 2, 512, 8192
    if args.child:
        peak_memory(args.child, args.B, args.T, args.V, args.K, args.backward)
        return 0

    names = ("grpo", "cppo", "naive")
    results = {}
    for name in names:
        cmd = [sys.executable, __file__, "--child", name, "--B", str(args.B), "--T", str(args.T),
               "--V", str(args.V), "--K", str(args.K)] + (["--backward"] if args.backward else [])
        out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            return out.returncode
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
    timing = alternating_times(names, args.B, args.T, args.V, args.K, args.repeats, args.backward)
    for name in names:
        results[name]["time_s"] = statistics.median(timing["times"][name])

    logits_mib = timing["logits_mib"]
    phase = "forward+backward" if args.backward else "forward"
    print(f"B={args.B} T={args.T} V={args.V} K={args.K} fp32 logits ({logits_mib:.0f} MiB), {phase}, "
          f"{timing['threads']} threads, median of {args.repeats} alternating rounds")
    print(f"{'kernel':<8}{'time (s)':>10}{'extra peak (MiB)':>18}{'extra / logits':>16}")
    for name, r in results.items():
        print(f"{name:<8}{r['time_s']:>10.3f}{r['extra_mib']:>18.1f}{r['extra_mib'] / logits_mib:>16.3f}")
    a, b, c = (results[n] for n in ("grpo", "cppo", "naive"))
    checks = [
        ("time cppo / grpo", b["time_s"] / a["time_s"], 1.3),
        ("time cppo / naive", b["time_s"] / c["time_s"], 0.3),
        ("cppo extra memory / logits", b["extra_mib"] / logits_mib, 0.05),
    ]
    for label, value, target in checks:
        verdict = "(targets are for the forward pass)" if args.backward else "ok" if value <= target else "MISSED"
        print(f"{label:<28}{value:>8.3f}   target ≤ {target}  {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
