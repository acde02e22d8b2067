"""Loss kernels: time and peak memory, side by side, each in a fresh process.

    python benchmarks/loss_kernels.py                 # both suites below at the issue's sizes
    python benchmarks/loss_kernels.py --suite logits  # B=4, T=4096, V=32768, K=20, fp32 logits
    python benchmarks/loss_kernels.py --suite hidden  # B=4, T=4096, H=1024, V=32768 (+ V=151,936 memory)
    python benchmarks/loss_kernels.py --small         # a quick run of both (B=2, T=512, H=256, V=8192)

Kernels (forward: logits → scalar loss):
  grpo   the project's GRPO path: chunked sampled-token log-prob + registry loss
  cppo   the project's CPPO path: chunked log-prob and π's Top-K log-probs from one log-normaliser
         per chunk, Top-K TV, CPPO mask, loss
  naive  reference: one full fp32 log_softmax for the log-prob and another for the Top-K TV, then
         the same CPPO loss
Times are medians over rounds that alternate the three kernels in one process (so machine noise
hits all of them alike). Peak memory is measured in a fresh process per kernel: its peak RSS above
the resident inputs (VmHWM reset after the inputs are built). Targets: cppo/grpo time ≤ 1.3,
cppo/naive time ≤ 0.3, cppo extra memory ≤ 0.05× the logits' size.

Hidden-state suite (forward + backward, the CPPO loss with Top-K, 10 % of each row padding):
  unfused  the output layer materialises the [B, T, V] logits, then the chunked kernel above
  fused    methods.policy_logprobs_from_hidden: logits one tile at a time, recomputed in backward
Targets: fused peak memory above the inputs ≤ 0.1× the logits the unfused path materialises, fused
time ≤ 1.2× unfused. Both peaks are printed with and without the gradients of the hidden states and
the weight: every path must return those (at H = 1024, V = 32768 they alone are 0.094× the logits),
so the target is checked without them; plus the fused path's memory alone at V = 151,936 (Qwen3's vocabulary), where the
unfused logits would take 9.3 GiB.
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


def alternating_times(names, b, t, v, k, repeats, backward, hidden=0) -> dict:
    import torch

    x = _hidden_inputs(b, t, hidden, v, k) if hidden else _inputs(b, t, v, k)
    times = {n: [] for n in names}
    for round_ in range(repeats + 1):  # round 0 warms up
        for name in names:
            elapsed = _timed_hidden(name, x, t) if hidden else _timed(name, x, t, backward)
            if round_:
                times[name].append(elapsed)
    logits_mib = b * t * v * 4 / 2**20
    return {"times": times, "logits_mib": logits_mib, "threads": torch.get_num_threads()}


def _hidden_inputs(b, t, h, v, k, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    x = _inputs(b, t, 1, k, seed)  # μ's values, mask, advantages (the [B, T, 1] logits are dropped)
    x.pop("logits")
    x["ids"] = torch.randint(0, v, (b, t), generator=g)
    x["topk_ids"] = torch.randint(0, v, (b, t, k), generator=g)
    x["hidden"] = (torch.randn(b, t, h, generator=g)).requires_grad_(True)
    x["weight"] = (torch.randn(v, h, generator=g) / h ** 0.5).requires_grad_(True)
    return x


def _timed_hidden(name, x, t) -> float:
    """Forward + backward of the CPPO loss from hidden states, fused or through materialised logits."""
    import torch

    from methods import PolicyBatch, get_method, policy_logprobs_from_hidden, policy_logprobs_from_logits

    start = time.perf_counter()
    if name == "fused":
        logp, pi_topk = policy_logprobs_from_hidden(x["hidden"], x["weight"], x["ids"], x["topk_ids"],
                                                    response_mask=x["mask"])
    elif name == "unfused":
        logits = torch.nn.functional.linear(x["hidden"], x["weight"])
        logp, pi_topk = policy_logprobs_from_logits(logits, x["ids"], x["topk_ids"])
    else:
        raise ValueError(name)
    batch = PolicyBatch(logp=logp, rollout_logp=x["rollout_logp"], advantages=x["adv"], response_mask=x["mask"],
                        response_ids=x["ids"], rollout_topk_ids=x["topk_ids"], rollout_topk_logp=x["topk_logp"],
                        policy_topk_logp=pi_topk)
    get_method("cppo", horizon=t)(batch).loss.backward()
    elapsed = time.perf_counter() - start
    x["hidden"].grad = x["weight"].grad = None
    return elapsed


def peak_memory_hidden(name, b, t, h, v, k):
    """Child process: peak RSS above the inputs of one fused/unfused forward + backward; JSON line."""
    x = _hidden_inputs(b, t, h, v, k)
    resident = _rss_kib("VmRSS")
    _reset_peak()
    _timed_hidden(name, x, t)
    peak = _rss_kib("VmHWM")
    grads_mib = (b * t * h + v * h) * 4 / 2**20
    print(json.dumps({"kernel": name, "extra_mib": (peak - resident) / 1024, "grads_mib": grads_mib}))


def _child(args, name, extra=()) -> dict:
    cmd = [sys.executable, __file__, "--child", name, "--B", str(args.B), "--T", str(args.T), "--H", str(args.H),
           "--V", str(args.V), "--K", str(args.K), *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _verdicts(checks, note=None):
    for label, value, target in checks:
        verdict = note or ("ok" if value <= target else "MISSED")
        print(f"{label:<34}{value:>8.3f}   target ≤ {target}  {verdict}")


def logits_suite(args) -> None:
    names = ("grpo", "cppo", "naive")
    results = {name: _child(args, name, ["--backward"] if args.backward else []) for name in names}
    timing = alternating_times(names, args.B, args.T, args.V, args.K, args.repeats, args.backward)
    for name in names:
        results[name]["time_s"] = statistics.median(timing["times"][name])
    logits_mib = timing["logits_mib"]
    phase = "forward+backward" if args.backward else "forward"
    print(f"logits suite: B={args.B} T={args.T} V={args.V} K={args.K} fp32 logits ({logits_mib:.0f} MiB), {phase}, "
          f"{timing['threads']} threads, median of {args.repeats} alternating rounds")
    print(f"{'kernel':<8}{'time (s)':>10}{'extra peak (MiB)':>18}{'extra / logits':>16}")
    for name, r in results.items():
        print(f"{name:<8}{r['time_s']:>10.3f}{r['extra_mib']:>18.1f}{r['extra_mib'] / logits_mib:>16.3f}")
    a, b, c = (results[n] for n in names)
    _verdicts([("time cppo / grpo", b["time_s"] / a["time_s"], 1.3),
               ("time cppo / naive", b["time_s"] / c["time_s"], 0.3),
               ("cppo extra memory / logits", b["extra_mib"] / logits_mib, 0.05)],
              "(targets are for the forward pass)" if args.backward else None)


def hidden_suite(args) -> None:
    names = ("unfused", "fused")
    results = {name: _child(args, name) for name in names}
    timing = alternating_times(names, args.B, args.T, args.V, args.K, args.repeats, True, hidden=args.H)
    for name in names:
        results[name]["time_s"] = statistics.median(timing["times"][name])
    logits_mib = timing["logits_mib"]
    print(f"hidden suite: B={args.B} T={args.T} H={args.H} V={args.V} K={args.K} fp32, forward+backward, "
          f"{timing['threads']} threads, median of {args.repeats} alternating rounds; the unfused logits: "
          f"{logits_mib:.0f} MiB; the gradients of hidden + weight: {results['fused']['grads_mib']:.0f} MiB")
    print(f"{'kernel':<8}{'time (s)':>10}{'extra peak (MiB)':>18}{'extra / logits':>16}{'less grads / logits':>21}")
    for name, r in results.items():
        print(f"{name:<8}{r['time_s']:>10.3f}{r['extra_mib']:>18.1f}{r['extra_mib'] / logits_mib:>16.3f}"
              f"{(r['extra_mib'] - r['grads_mib']) / logits_mib:>21.3f}")
    fused, unfused = results["fused"], results["unfused"]
    print(f"(the gradients of hidden + weight alone are {fused['grads_mib'] / logits_mib:.3f}× the logits: every "
          "path returns them, so the memory target is read without them)")
    _verdicts([("fused extra memory less grads / logits", (fused["extra_mib"] - fused["grads_mib"]) / logits_mib, 0.1),
               ("time fused / unfused", fused["time_s"] / unfused["time_s"], 1.2)])
    if args.V_large:
        large = argparse.Namespace(**{**vars(args), "V": args.V_large})
        row = _child(large, "fused")
        large_logits = args.B * args.T * args.V_large * 4 / 2**20
        print(f"memory only, V={args.V_large}: fused extra peak {row['extra_mib']:.0f} MiB = "
              f"{row['extra_mib'] / large_logits:.3f}× the {large_logits:.0f} MiB of logits the unfused path "
              f"would materialise (and as much again for their gradient); less the gradients: "
              f"{(row['extra_mib'] - row['grads_mib']) / large_logits:.3f}×")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=("all", "logits", "hidden"), default="all")
    parser.add_argument("--B", type=int, default=4)
    parser.add_argument("--T", type=int, default=4096)
    parser.add_argument("--H", type=int, default=1024, help="hidden size (hidden suite)")
    parser.add_argument("--V", type=int, default=32768)
    parser.add_argument("--V-large", dest="V_large", type=int, default=151936,
                        help="vocabulary of the hidden suite's memory-only row (0: skip it)")
    parser.add_argument("--K", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5, help="timing rounds (after one warm-up round)")
    parser.add_argument("--small", action="store_true", help="B=2, T=512, H=256, V=8192 (seconds, for a smoke run)")
    parser.add_argument("--backward", action="store_true", help="logits suite: time forward + backward (informational)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.small:
        args.B, args.T, args.H, args.V, args.V_large = 2, 512, 256, 8192, 32768
    if args.child:
        if args.child in ("fused", "unfused"):
            peak_memory_hidden(args.child, args.B, args.T, args.H, args.V, args.K)
        else:
            peak_memory(args.child, args.B, args.T, args.V, args.K, args.backward)
        return 0
    if args.suite in ("all", "logits"):
        logits_suite(args)
    if args.suite in ("all", "hidden"):
        hidden_suite(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
