"""The results store: the one place that knows the layout of a results folder.

    ROOT/runs/<setting>-<method>-s<seed>-<hash>/   one run folder per cell (shared by every sweep)
    ROOT/sweeps/<name>/manifest.json               a sweep's cells, spec and invocations
    ROOT/sweeps/<name>/summary.csv                 one row per cell
    ROOT/sweeps/<name>/submitit/                   launcher logs
    ROOT/searches/<name>/                          an Optuna study's journal, trials.csv, best.json
    ROOT/theory/                                   trh theory: checks.md/csv, adversarial.csv, a figure

A run folder:

    RUN_DIR/config.yaml       the resolved config (its hash is the run id)
    RUN_DIR/status.json       {"state": running|done|collapsed|failed, "step", "reason", ...}
    RUN_DIR/metrics.jsonl     one row per training step (validation scores on eval steps)
    RUN_DIR/diagnostics.jsonl per-position diagnostics on eval steps
    RUN_DIR/checkpoint.pt     while running (model, optimizer, step); removed when the run ends
    RUN_DIR/best-<step>.pt    while running: the weights of each eval step that was the best so far
                              within [0, T_stop], for the held-out test score; removed when the run ends
    RUN_DIR/trl_checkpoints/  engine=trl: TRL's checkpoints while running (or engine.checkpoint_dir/RUN_NAME/)
    RUN_DIR/policy/           engine=trl: the final policy in Hugging Face format (engine.keep_weights)
    RUN_DIR/policy_best/      engine=trl: the matched-window best step's policy (engine.keep_best_weights),
                              with best_step.json saying which step it is
    RUN_DIR/policy_best.anchor/  while running: the best policy as of the last checkpoint, while
                              policy_best/ holds a later step (what a resume from that checkpoint needs)
    RUN_DIR/launch/           multi-GPU cells: the accelerate config and the cell's config for each node
    RUN_DIR/search_trials.json  the (search, trial) pairs that use this run, when a search made it

Every write of status and checkpoint is atomic (temp file + rename), so a kill never leaves a
half-written file, and a folder is finished only when its status says so.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterable, Optional

from .locks import FileLock, LockHeld

FINISHED = ("done", "collapsed")
BEST_POLICY_MARKER = "best_step.json"
SEARCH_LINKS = "search_trials.json"
METRICS, DIAGNOSTICS, STATUS, CONFIG = "metrics.jsonl", "diagnostics.jsonl", "status.json", "config.yaml"
OWNER = ".owner"  # the lock of a run folder (harness.locks)


def runs_dir(results_root) -> Path:
    """Where the run folders of a results root live."""
    return Path(results_root) / "runs"


def sweep_dir(results_root, name: str) -> Path:
    return Path(results_root) / "sweeps" / name


def searches_root(results_root) -> Path:
    """Where the Optuna searches of a results root live, one folder each."""
    return Path(results_root) / "searches"


def search_dir(results_root, name: str) -> Path:
    return searches_root(results_root) / name


def theory_dir(results_root) -> Path:
    """``trh theory``'s tables and figure (the exact check of the paper's bounds)."""
    return Path(results_root) / "theory"


def submitit_dir(folder) -> Path:
    """The launcher logs of a sweep or search folder."""
    return Path(folder) / "submitit"


def manifest_path(folder) -> Path:
    return Path(folder) / "manifest.json"


def summary_path(folder) -> Path:
    return Path(folder) / "summary.csv"


class StoreError(ValueError):
    """A results file cannot be read as what it should be; the message names it and what to do."""


def _parse_file(path: Path, parse, what: str, remedy: str):
    """A results file parsed, None if absent; one StoreError naming it if it does not parse."""
    if not path.exists():
        return None
    try:
        return parse(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError, and YAML errors re-raised as ValueError
        raise StoreError(f"{path} is not {what} ({' '.join(str(err).split())}); {remedy}") from None


def read_manifest(folder) -> Optional[dict]:
    """A sweep folder's manifest (None if there is none yet)."""
    return _parse_file(manifest_path(folder), json.loads, "a valid manifest",
                       "delete it and rerun the sweep (finished cells are kept in their run folders)")


def write_manifest(folder, manifest: dict) -> None:
    Path(folder).mkdir(parents=True, exist_ok=True)
    atomic_write_text(manifest_path(folder), json.dumps(manifest, indent=1, default=str))


def sweep_manifests(results_root) -> dict:
    """{sweep name: manifest path} of a results root, or of one sweep folder given directly."""
    root = Path(results_root)
    if manifest_path(root).exists():
        return {root.name: manifest_path(root)}
    return {p.parent.name: p for p in sorted((root / "sweeps").glob("*/manifest.json"))}


def run_folders(results_root) -> list[Path]:
    """Every run folder (one holding a config) under ``ROOT/runs`` or directly under ``ROOT``; ``ROOT`` alone
    when it is a run folder."""
    root = Path(results_root)
    if (root / CONFIG).is_file():  # a run folder itself (trh report RUN_FOLDER)
        return [root]
    configs = sorted(runs_dir(root).glob(f"*/{CONFIG}")) + sorted(root.glob(f"*/{CONFIG}"))
    return [c.parent for c in configs if ".damaged-" not in c.parent.name]  # (moved aside by trh sweep --repair)


def atomic_write_text(path, text: str) -> None:
    """Write a whole file so that a reader never sees it half-written (temp file + rename)."""
    _atomic_write(Path(path), text.encode())


class RunInUse(RuntimeError):
    """Another process is running in this run folder."""


def config_hash(resolved: dict) -> str:
    text = json.dumps(resolved, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def atomic_torch_save(path: Path, obj) -> None:
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    _atomic_write(Path(path), buffer.getvalue())


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _atomic_write(path: Path, data: bytes) -> None:
    # a unique temp name: two processes writing the same file never share a half-written temp file
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk or a kill: no temp file is left behind
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


class RunStore:
    def __init__(self, run_dir, tags: Optional[dict] = None):
        self.dir = Path(run_dir)
        self.tags = dict(tags or {})  # added to every status write (e.g. the launcher's job id)
        self.cut: dict = {}  # file name → the first line found cut by the last read

    @property
    def _lock(self) -> FileLock:
        return FileLock(self.dir / OWNER)

    def in_use(self) -> bool:
        """Whether a live process holds the folder's lock right now (it is training this run); reading
        needs no write access."""
        return self._lock.held()

    @contextlib.contextmanager
    def exclusive(self):
        """Hold the folder's lock for the life of a run; RunInUse if another live process holds it
        (a lock file with a heartbeat: it holds on shared filesystems where flock does not)."""
        lock = self._lock
        try:
            lock.acquire()
        except LockHeld as err:
            raise RunInUse(f"run folder {self.dir} is in use by another process ({err})") from None
        try:
            yield
        finally:
            lock.release()

    # status ------------------------------------------------------------------------------
    def read_status(self) -> Optional[dict]:
        status = self._parse(STATUS, json.loads, "JSON")
        if status is not None and (not isinstance(status, dict) or "state" not in status):
            raise self._unreadable(STATUS, "holds no run status (no 'state')")
        return status

    def _parse(self, name: str, parse, kind: str):
        return _parse_file(self.dir / name, parse, f"valid {kind}", self._remedy)

    def _unreadable(self, name: str, why: str) -> "StoreError":
        return StoreError(f"{self.dir / name} {why}; {self._remedy}")

    @property
    def _remedy(self) -> str:
        return f"delete the run folder {self.dir} to rerun this cell"

    def write_status(self, **status) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        status = {**status, **self.tags}
        _atomic_write(self.dir / STATUS, strict_json(status, indent=1).encode())

    def is_finished(self) -> bool:
        status = self.read_status()
        return bool(status) and status.get("state") in FINISHED

    # config ------------------------------------------------------------------------------
    def write_config(self, yaml_text: str) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.dir / CONFIG, yaml_text.encode())

    def has_config(self) -> bool:
        return (self.dir / CONFIG).exists()

    def read_config(self) -> Optional[dict]:
        import yaml

        def parse(text):
            try:
                return yaml.safe_load(text)
            except yaml.YAMLError as err:
                raise ValueError(err) from None

        config = self._parse(CONFIG, parse, "YAML")
        missing = [k for k in ("setting", "method", "seed") if not isinstance(config, dict) or k not in config]
        if config is not None and missing:
            raise self._unreadable(CONFIG, f"is not a run config (missing {missing})")
        return config

    @property
    def trl_checkpoint_dir(self) -> Path:
        return self.dir / "trl_checkpoints"

    def trl_checkpoints_in(self, root: Optional[str]) -> Path:
        """Where TRL's checkpoints go: ``trl_checkpoint_dir``, or a subfolder of ``root`` (e.g. shared
        scratch) named as the run folder."""
        return self.trl_checkpoint_dir if root is None else Path(root).expanduser().resolve() / self.dir.name

    @property
    def policy_dir(self) -> Path:
        """engine=trl: the final policy in Hugging Face format, kept at the verdict (``engine.keep_weights``)."""
        return self.dir / "policy"

    def add_search_trial(self, search: str, trial: int) -> None:
        """Record that a search's trial uses this run (a cell can serve several trials of equal parameters)."""
        links = self.search_trials()
        if {"search": search, "trial": trial} not in links:
            self.dir.mkdir(parents=True, exist_ok=True)
            _atomic_write(self.dir / SEARCH_LINKS, json.dumps(links + [{"search": search, "trial": trial}]).encode())

    def search_trials(self) -> list[dict]:
        """The (search, trial) pairs that use this run ([] for a run no search made)."""
        try:
            links = json.loads((self.dir / SEARCH_LINKS).read_text())
            return [link for link in links if isinstance(link, dict)] if isinstance(links, list) else []
        except (OSError, ValueError):
            return []

    @property
    def best_policy_dir(self) -> Path:
        """engine=trl: the policy of the matched-window best step so far (``engine.keep_best_weights``)."""
        return self.dir / "policy_best"

    @property
    def partial_policy_dir(self) -> Path:
        """Where the best policy is written before it replaces ``best_policy_dir`` (a kill leaves it partial)."""
        return self.dir / "policy_best.partial"

    @property
    def anchor_policy_dir(self) -> Path:
        """The best policy as of the last checkpoint, kept while ``best_policy_dir`` holds a later step:
        a resume from that checkpoint recomputes the later rows, and may not find that best again."""
        return self.dir / "policy_best.anchor"

    def best_policy_step(self, folder: Optional[Path] = None) -> Optional[int]:
        """The step whose weights ``folder`` (default ``best_policy_dir``) holds, or None (none kept, or
        its marker is unreadable)."""
        try:
            marker = (folder or self.best_policy_dir) / BEST_POLICY_MARKER
            return int(json.loads(marker.read_text())["step"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def replace_best_policy(self, written: Path, step: int, checkpointed: int) -> None:
        """Make ``written`` (weights just saved) the best policy, marked with ``step``. A best of a step
        at or before the last checkpoint (``checkpointed``) becomes the anchor; a later one is dropped.
        The marker is written before the renames, so no folder claims a step it does not hold."""
        _atomic_write(written / BEST_POLICY_MARKER, json.dumps({"step": step}).encode())
        current = self.best_policy_step()
        if current is not None and current <= checkpointed:
            _rmtree(self.anchor_policy_dir)
            self.best_policy_dir.rename(self.anchor_policy_dir)
        _rmtree(self.best_policy_dir)
        written.rename(self.best_policy_dir)

    def checkpointed_best_policy(self, step: int) -> None:
        """A checkpoint at ``step`` was written: a best policy at or before it needs no anchor any more."""
        current = self.best_policy_step()
        if current is not None and current <= step:
            _rmtree(self.anchor_policy_dir)

    def resume_best_policy(self, start: int, keep: bool) -> None:
        """A run (re)starts after step ``start``: a best policy of a later step is dropped (its rows are
        recomputed) and the anchor, the best as of that checkpoint, takes its place."""
        _rmtree(self.partial_policy_dir)
        current = self.best_policy_step()
        if not keep or current is None or current > start:
            _rmtree(self.best_policy_dir)
            anchor = self.best_policy_step(self.anchor_policy_dir)
            if keep and anchor is not None and anchor <= start:
                self.anchor_policy_dir.rename(self.best_policy_dir)
        _rmtree(self.anchor_policy_dir)

    @property
    def launch_files(self) -> tuple[Path, Path]:
        """A multi-GPU cell's accelerate config and its run config, read by every node's launch."""
        return self.dir / "launch" / "accelerate.yaml", self.dir / "launch" / "config.json"

    def write_launch_files(self, config: dict, accelerate: dict) -> None:
        import yaml

        accelerate_path, config_path = self.launch_files
        accelerate_path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(config_path, json.dumps(config, indent=1).encode())
        _atomic_write(accelerate_path, yaml.safe_dump(accelerate).encode())

    # metrics and diagnostics: one JSON row per step ------------------------------------------
    def append_metrics(self, row: dict) -> None:
        self._append(METRICS, row)

    def append_diagnostics(self, row: dict) -> None:
        self._append(DIAGNOSTICS, row)

    def read_metrics(self) -> list[dict]:
        return self._read(METRICS)

    def read_diagnostics(self) -> list[dict]:
        return self._read(DIAGNOSTICS)

    def truncate_records(self, last_step: int) -> None:
        """Keep the rows up to ``last_step`` (rows past a checkpoint are recomputed on resume)."""
        for name in (METRICS, DIAGNOSTICS):
            if (self.dir / name).exists():
                rows = [r for r in self._read(name) if r["step"] <= last_step]
                _atomic_write(self.dir / name, "".join(strict_json(r) + "\n" for r in rows).encode())

    def clear_records(self) -> None:
        """A run starting from step 0: no rows of an earlier attempt survive."""
        for name in (METRICS, DIAGNOSTICS):
            (self.dir / name).unlink(missing_ok=True)

    def _append(self, name: str, row: dict) -> None:
        with open(self.dir / name, "a") as f:
            f.write(strict_json(row) + "\n")
            f.flush()

    def _read(self, name: str) -> list[dict]:
        path = self.dir / name
        if not path.exists():
            return []
        rows = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill: everything after it is redone on resume
                self.cut[name] = number
                break
        return rows

    def damage(self, status: Optional[dict], rows: Optional[list] = None) -> Optional[str]:
        """Why a finished run's records cannot be trusted (a cut line, or metrics that end before the
        status's last step), else None: such a run is reported as damaged, never scored. ``rows``: the
        metrics this store has just read, if the caller has them."""
        if not status or status.get("state") not in FINISHED:
            return None
        rows = self.read_metrics() if rows is None else rows
        if METRICS in self.cut:
            return f"line {self.cut[METRICS]} of {self.dir / METRICS} is cut"
        last = rows[-1]["step"] if rows else None
        if last is None or last < status.get("step", 0):
            return f"{self.dir / METRICS} ends at step {last}, its status at step {status.get('step')}"
        return None

    # checkpoints -------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.dir / "checkpoint.pt"

    def save_checkpoint(self, state: dict) -> None:
        atomic_torch_save(self.checkpoint_path, state)

    def load_checkpoint(self) -> Optional[dict]:
        import torch

        if not self.checkpoint_path.exists():
            return None
        try:
            return torch.load(self.checkpoint_path, weights_only=False)
        except Exception as err:  # noqa: BLE001 - any unpickling failure means the same thing
            raise RuntimeError(f"checkpoint {self.checkpoint_path} is corrupted ({err}); "
                               "delete it to restart the run from step 0") from None

    def remove_checkpoint(self) -> None:
        self.checkpoint_path.unlink(missing_ok=True)

    # weights of best-so-far eval steps (the held-out score is taken on the chosen one) -----------
    def _best_paths(self) -> dict:
        return {int(p.stem.split("-")[1]): p for p in self.dir.glob("best-*.pt")}

    def save_best_weights(self, step: int, state: dict) -> None:
        atomic_torch_save(self.dir / f"best-{step}.pt", state)

    def load_best_weights(self, step: int) -> Optional[dict]:
        import torch

        path = self._best_paths().get(step)
        return None if path is None else torch.load(path, weights_only=True)

    def remove_best_weights(self, after_step: int = -1) -> None:
        """Remove the kept weights of steps > ``after_step`` (all by default; on resume, those past the
        checkpoint, whose rows are recomputed)."""
        for step, path in self._best_paths().items():
            if step > after_step:
                path.unlink(missing_ok=True)


def best_within_window(rows: Iterable[dict], t_stop: int, key: str = "headline") -> Optional[dict]:
    """The matched-window rule: the row with the best ``key`` among eval rows with step ≤ t_stop;
    ties go to the earlier step. None when no eval row is in the window."""
    best = None
    for row in rows:
        value = row.get(key)
        if value is None or row["step"] > t_stop or (isinstance(value, float) and math.isnan(value)):
            continue
        if best is None or value > best[key] or (value == best[key] and row["step"] < best["step"]):
            best = row
    return best


# runs recorded before a run named its splits were all on the addition task, whose splits these are
LEGACY_SPLITS = {"validation": ["val_a", "val_b", "val_c"], "test": ["test_a", "test_b", "test_c"]}


def run_splits(status) -> dict:
    """A run's split names, as it recorded them (``{"validation": [...], "test": [...]}``): the task
    names them, the analysis reads them from here."""
    return (status or {}).get("splits") or LEGACY_SPLITS


def strict_json(obj, **kwargs) -> str:
    """JSON any strict parser reads: a NaN or an infinity (a metric with nothing to average, a rule
    without that quantity) is written as null, never as a bare ``NaN``."""
    return json.dumps(_finite(obj), allow_nan=False, default=_json_default, **kwargs)


def _finite(value):
    if hasattr(value, "item") and not isinstance(value, (dict, list, tuple)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
