"""The steps of the device check (``scripts/device_check.sh``), each run in its own process by
``scripts/device_check.py`` under its own time limit. A step returns ``{"checks": [...], "measured": {...}}``:
a check is ``{"name", "ok", "detail"}``; what it measured goes in the summary's tables. ``gpu`` is False in
the ``--cpu`` mode: the same code paths at tiny sizes, on the CPU."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
# Qwen3-1.7B's decoder: hidden, layers, MLP width, attention heads, KV heads (its config.json)
QWEN3_1P7B = dict(hidden=2048, layers=28, mlp=6144, heads=16, kv_heads=8)
QWEN3_VOCAB = 151_936
TOP_K = 20  # μ's top-K recorded per token (the engines' default)
PACKAGES = ("torch", "transformers", "accelerate", "trl", "datasets", "hydra", "omegaconf", "math_verify",
            "liger_kernel", "pytest", "numpy", "yaml")
NEEDED = ("transformers", "accelerate", "trl", "datasets", "hydra", "omegaconf", "pytest", "yaml")


def check(name: str, ok: bool, detail: str = "") -> dict:
    return {"name": name, "ok": bool(ok), "detail": detail}


def _device(gpu: bool) -> torch.device:
    return torch.device("cuda" if gpu else "cpu")


def _peak_reset(device):
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(device) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**30


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


# --- 1. environment -------------------------------------------------------------------------------
def environment(gpu: bool, out: Path) -> dict:
    versions, checks = {}, []
    for name in PACKAGES:
        try:
            versions[name] = getattr(importlib.import_module(name), "__version__", "?")
        except Exception as err:  # noqa: BLE001 - any import failure is the finding
            versions[name] = f"missing ({type(err).__name__}: {err})"[:160]
    for name in NEEDED:
        checks.append(check(f"import {name}", not versions[name].startswith("missing"), versions[name]))
    measured = {"versions": versions, "python": sys.version.split()[0], "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        measured.update(device=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                        cuda=torch.version.cuda, bf16=torch.cuda.is_bf16_supported())
    checks.append(check("CUDA available" if gpu else "CPU mode", torch.cuda.is_available() or not gpu,
                        measured.get("device", "cpu")))
    for key, value in versions.items():
        print(f"  {key:14s} {value}", flush=True)
    return {"checks": checks, "measured": measured}


# --- 2. the device-aware tests ------------------------------------------------------------------------
TEST_FILES = ("tests/methods/test_device.py", "tests/methods/test_fused.py", "tests/harness/test_bf16_numerics.py",
              "tests/harness/test_kv_cache_api.py")


def tests(gpu: bool, out: Path) -> dict:
    """The registry on the device against a float64 CPU reference, the fused loss against the logits
    path (fp32 and bf16), the sampler's KV-cache keyword (greedy = ``generate``) and chunking, and the
    on-policy ratio under bf16 autocast — the test files run with ``--trh-device``."""
    report = out / "tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
           f"--trh-device={'cuda' if gpu else 'cpu'}", f"--junitxml={report}", *TEST_FILES]
    started = time.perf_counter()
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    tail = (result.stdout + result.stderr).strip().splitlines()[-15:]
    print("\n".join("  " + line for line in tail), flush=True)
    counts, failed = {}, []
    if report.exists():
        for case in ET.parse(report).getroot().iter("testcase"):
            outcome = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "passed")
            counts[outcome] = counts.get(outcome, 0) + 1
            if outcome in ("failure", "error"):
                failed.append(f"{case.get('classname')}::{case.get('name')}")
    measured = {"counts": counts, "seconds": round(time.perf_counter() - started, 1), "failed": failed[:40]}
    detail = ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "no report"
    return {"checks": [check("device-aware tests", result.returncode == 0 and counts.get("passed", 0) > 0, detail)],
            "measured": measured}


# --- 3. the fused hidden-state loss at Qwen3 sizes -------------------------------------------------------
def _loss_inputs(t: int, h: int, v: int, device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(1, t, h, generator=g)).to(device, torch.bfloat16).requires_grad_(True)
    weight = (torch.randn(v, h, generator=g) / h ** 0.5).to(device, torch.bfloat16).requires_grad_(True)
    ids = torch.randint(0, v, (1, t), generator=g).to(device)
    # μ: log-probs near π's at initialisation (≈ −log V), its top-K ids with the sampled token first
    rollout_logp = (-torch.log(torch.tensor(float(v))) + 0.3 * torch.randn(1, t, generator=g)).to(device)
    top_ids = torch.cat([ids.cpu()[..., None], torch.randint(0, v, (1, t, TOP_K - 1), generator=g)], -1).to(device)
    top_logp = (rollout_logp[..., None] - torch.rand(1, t, TOP_K, generator=g).to(device)).sort(-1, descending=True).values
    mask = torch.ones(1, t, dtype=torch.bool, device=device)
    advantages = torch.tensor([1.0], device=device)
    return hidden, weight, ids, rollout_logp, mask, advantages, top_ids, top_logp


def _registry_loss(path: str, method, hidden, weight, ids, rollout_logp, mask, advantages, top_ids, top_logp):
    """The registry's loss with π from the hidden states: tile by tile (fused) or through the logits;
    π at μ's top-K ids too when the method reads a Top-K divergence."""
    from methods import LossTotals, PolicyBatch, policy_logprobs_from_hidden, policy_logprobs_from_logits

    top_ids = top_ids if method.needs_topk else None
    if path == "fused":
        logp, pi_topk = policy_logprobs_from_hidden(hidden, weight, ids, top_ids, response_mask=mask,
                                                    matmul_dtype=torch.bfloat16)
    else:
        logp, pi_topk = policy_logprobs_from_logits(torch.nn.functional.linear(hidden, weight), ids, top_ids)
    topk = dict(response_ids=ids, rollout_topk_ids=top_ids, rollout_topk_logp=top_logp, policy_topk_logp=pi_topk)
    batch = PolicyBatch(logp=logp, rollout_logp=rollout_logp, advantages=advantages, response_mask=mask,
                        **(topk if method.needs_topk else {}))
    return method(batch, LossTotals(num_sequences=1, horizon=ids.shape[1])).loss


def _liger_loss(hidden, weight, ids, rollout_logp, mask, advantages, top_ids, top_logp, compiled: bool):
    from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss

    # loss_type "dapo" is GRPO's clipped objective over the batch's tokens: the registry's token-mean
    loss = LigerFusedLinearGRPOLoss(beta=0.0, use_ref_model=False, compiled=compiled, loss_type="dapo",
                                    epsilon_low=0.2, epsilon_high=0.2)
    return loss(hidden, weight, ids, mask.float(), advantages, old_per_token_logps=rollout_logp)[0]


def _time_fwd_bwd(fn, inputs, device, rounds: int) -> tuple[float, float | None]:
    """Median seconds of forward + backward (after one warm-up call) and the peak memory above the inputs."""
    hidden, weight = inputs[0], inputs[1]
    fn(*inputs).backward()  # warm-up: kernels, autotuning, compilation
    hidden.grad = weight.grad = None
    _sync(device)
    base = torch.cuda.memory_allocated() if device.type == "cuda" else 0
    _peak_reset(device)
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn(*inputs).backward()
        _sync(device)
        times.append(time.perf_counter() - started)
        hidden.grad = weight.grad = None
    peak = _peak_gib(device)
    return sorted(times)[len(times) // 2], None if peak is None else peak - base / 2**30


def fused_loss(gpu: bool, out: Path) -> dict:
    """Forward + backward of the CPPO and GRPO losses from hidden states: the fused path against the
    logits path, and Liger-Kernel's fused GRPO loss on the GRPO case (gradients compared first)."""
    from methods import get_method

    device = _device(gpu)
    sizes = ([(2048, 8192), (2048, 16384), (4096, 8192), (4096, 16384)] if gpu else [(64, 256), (128, 512)])
    vocab, rounds = (QWEN3_VOCAB, 3) if gpu else (4096, 2)
    checks, rows = [], []
    cppo = get_method("cppo", horizon=max(t for _, t in sizes), top_k=TOP_K)
    grpo = get_method("grpo", horizon=max(t for _, t in sizes), aggregation="token-mean", eps_low=0.2, eps_high=0.2)
    try:
        import liger_kernel  # noqa: F401
        liger_ok = True
    except ImportError as err:
        liger_ok = False
        if gpu:  # on the CPU (a machine without the wheel) the comparison is skipped, and the summary says so
            checks.append(check("Liger-Kernel importable", False, f"{err} (carry its wheel)"))
    for h, t in sizes:
        inputs = _loss_inputs(t, h, vocab, device)
        row = {"H": h, "T": t, "V": vocab}
        for label, fn in (("cppo fused", lambda *a: _registry_loss("fused", cppo, *a)),
                          ("cppo logits", lambda *a: _registry_loss("logits", cppo, *a)),
                          ("grpo fused", lambda *a: _registry_loss("fused", grpo, *a)),
                          ("liger grpo", lambda *a: _liger_loss(*a, compiled=False)) if liger_ok else (None, None)):
            if label is None:
                continue
            try:
                seconds, peak = _time_fwd_bwd(fn, inputs, device, rounds)
                row[f"{label} s"], row[f"{label} GiB"] = round(seconds, 4), None if peak is None else round(peak, 2)
            except torch.cuda.OutOfMemoryError:
                row[f"{label} s"] = row[f"{label} GiB"] = "OOM"
                torch.cuda.empty_cache()
            print(f"  H={h} T={t} {label}: {row[f'{label} s']} s, {row[f'{label} GiB']} GiB", flush=True)
        rows.append(row)
        del inputs
    # the same GRPO gradient from the registry's fused path and from Liger's (a small case, fp32)
    if liger_ok:
        g_inputs = _loss_inputs(512 if gpu else 64, 256 if gpu else 32, 2048 if gpu else 256, device, seed=1)
        hidden, weight = g_inputs[0].detach().float().requires_grad_(True), g_inputs[1].detach().float().requires_grad_(True)
        small = (hidden, weight, *g_inputs[2:])
        ours = torch.autograd.grad(_registry_loss("logits", grpo, *small), (hidden, weight))
        theirs = torch.autograd.grad(_liger_loss(*small, compiled=False), (hidden, weight))
        worst = max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-12)) for a, b in zip(theirs, ours))
        checks.append(check("Liger GRPO (dapo) gradient = registry GRPO token-mean", worst <= 1e-4,
                            f"max relative difference {worst:.2e}"))
    for row in rows:
        fused, logits = row.get("cppo fused GiB"), row.get("cppo logits GiB")
        if isinstance(fused, float) and isinstance(logits, float) and logits > 0:
            row["fused/logits memory"] = round(fused / logits, 3)
    checks.append(check("fused path ran at every size", all(isinstance(r.get("cppo fused s"), float) for r in rows)))
    # Liger runs uncompiled (compiled=False): torch.compile's warm-up for each new shape would not fit the limit
    return {"checks": checks, "measured": {"rows": rows, "device": str(device), "rounds": rounds,
                                           "liger": "compiled=False" if liger_ok else "not installed"}}


# --- 4. the local engine's rollout and update at Qwen3-1.7B's shape ----------------------------------------
def local_engine(gpu: bool, out: Path) -> dict:
    """A few RL steps of the local engine's own functions (the sampler's lean decode with μ's top-K,
    ``harness.engines.local._update`` with the registry's CPPO loss, AdamW) on a random model of
    Qwen3-1.7B's decoder shape in bf16 (the chain task's character vocabulary)."""
    from harness.config import compose, resolve
    from harness.engines.local import _update
    from harness.model import CharTokenizer, build_model
    from harness.rollout import sample
    from harness.tasks import make_task
    from harness.warmup import encode_problems
    from methods import get_method

    device = _device(gpu)
    shape = QWEN3_1P7B if gpu else dict(hidden=64, layers=2, mlp=128, heads=4, kv_heads=2)
    spec = resolve(compose(["setting=chain_s", "method=cppo", *(f"model.{k}={v}" for k, v in shape.items())]))
    task = make_task(spec.task)
    tok = CharTokenizer(task.alphabet)
    with device:  # initialised where it runs: a 1.7B-shaped model is slow to initialise on the CPU
        model = build_model(spec.model, tok.vocab_size, task.max_positions, seed=0).to(torch.bfloat16)
    top_k = min(TOP_K, tok.vocab_size)  # as the engine: μ's top-K is at most the vocabulary
    method = get_method("cppo", horizon=task.max_response_tokens, top_k=top_k)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    n, prompts_per_step, steps = spec.rl.samples_per_prompt, 8 if gpu else 2, 3 if gpu else 2
    rows, checks = [], []
    _peak_reset(device)
    for step in range(1, steps + 1):
        problems = task.problems("train", prompts_per_step, seed=step)
        prompts = encode_problems(tok, task, problems).repeat_interleave(n, 0).to(device)
        started = time.perf_counter()
        roll = sample(model, prompts, task.max_response_tokens, tok.eos_id, tok.pad_id,
                      torch.Generator(device).manual_seed(step), record_top_k=top_k, group=n, lean=True)
        _sync(device)
        rollout_s = time.perf_counter() - started
        tokens = int(roll.response_mask.sum())
        g = torch.Generator().manual_seed(step)
        adv = torch.randn(prompts_per_step, n, generator=g)
        adv = (adv - adv.mean(1, keepdim=True)).to(device)  # random group advantages: every group updates
        started = time.perf_counter()
        metrics, _ = _update(spec, step, model, optimizer, method, roll, adv, torch.arange(prompts_per_step),
                             task.max_response_tokens)
        _sync(device)
        rows.append({"step": step, "rows": prompts.shape[0], "response_tokens": tokens,
                     "rollout_tokens_per_s": round(tokens / rollout_s, 1), "update_s": round(time.perf_counter() - started, 3),
                     "policy_loss": metrics.get("policy_loss"), "mismatch_abs_logp": metrics.get("mismatch_abs_logp")})
        print(f"  step {step}: {rows[-1]}", flush=True)
    finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
    checks.append(check("parameters finite after the updates", finite))
    first = rows[0]["mismatch_abs_logp"]
    # the first update of a step is on-policy: π and μ are the same bf16 weights, the same numerics
    checks.append(check("on-policy mean abs(log π − log μ) < 2⁻⁷ on the first update",
                        first is not None and first < 2 ** -7, f"{first:.2e}" if first is not None else "none"))
    params = sum(p.numel() for p in model.parameters())
    return {"checks": checks, "measured": {"rows": rows, "parameters": params, "shape": shape,
                                           "peak_gib": _peak_gib(device), "device": str(device)}}


# --- 5. the TRL engine, two steps ------------------------------------------------------------------------
def trl_engine(gpu: bool, out: Path) -> dict:
    """``setting=lm_tiny`` (a tiny random Qwen3, the math fixture) for two RL steps through TRL's
    GRPOTrainer with the registry's CPPO loss, bf16 on a GPU; the run folder as a user would get it."""
    from harness.config import compose
    from harness.train import run

    overrides = ["setting=lm_tiny", "method=cppo", f"results_root={out / 'trl_results'}", "logging=quiet",
                 "setting.steps=2", "setting.t_stop=2", "engine.checkpoint_every=1", f"engine.bf16={str(gpu).lower()}"]
    started = time.perf_counter()
    status = run(compose(overrides))
    seconds = time.perf_counter() - started
    folder = Path(status["run_dir"])
    checks = [check("run finished", status["state"] == "done", f"{status['state']} {status.get('reason', '')}"),
              check("trained on the GPU" if gpu else "trained on the CPU",
                    (status.get("provenance", {}).get("gpu") is not None) == gpu, str(status.get("provenance", {}).get("gpu"))),
              check("policy/ and policy_best/ kept", (folder / "policy").is_dir() and (folder / "policy_best").is_dir())]
    rows = (folder / "metrics.jsonl").read_text().splitlines()
    return {"checks": checks, "measured": {"seconds": round(seconds, 1), "rows": len(rows), "best_step": status.get("best_step"),
                                           "cuda": torch.cuda.is_available() and gpu}}


STEPS = {"environment": environment, "tests": tests, "fused_loss": fused_loss, "local_engine": local_engine,
         "trl_engine": trl_engine}


def run_step(name: str, gpu: bool, out: Path) -> dict:
    os.environ.setdefault("TRH_CACHE", str(out / "cache"))
    return STEPS[name](gpu, out)
