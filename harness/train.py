"""Train one run: ``run(cfg)`` — the entry both engines share (``harness.lifecycle`` has the rest).

    python -m harness.train method=cppo setting=base_s seed=1 method.delta=0.2
    python -m harness.train -m method=grpo,cppo          # Hydra multirun
"""

from __future__ import annotations

import contextlib
import os

import torch
from omegaconf import DictConfig, OmegaConf

from .config import resolve
from .lifecycle import finished, record_failure, summary_line
from .store import RunStore


def run(cfg: DictConfig, tags: dict | None = None, keep_model=None) -> dict:
    """Train one run to its verdict (or return the verdict of a finished one). ``tags`` (e.g. the
    launcher's job id) are recorded in the run's status; ``keep_model`` (a path, local engine) saves
    the final weights there (the run folder keeps none)."""
    spec = resolve(cfg)  # every field checked, method parameters included, before any work
    if spec.engine.threads:  # the local engine always has a count (recorded in the id); trl: null = torch's
        torch.set_num_threads(spec.engine.threads)
    store = RunStore(spec.run_dir, tags=tags)
    done = finished(spec, store)  # a finished run returns its verdict without the lock (a read-only archive works)
    if done:
        return done
    if spec.engine.name == "trl" and int(os.environ.get("RANK", "0")) > 0:
        from .engines import trl  # data-parallel rank > 0: rank 0 owns (and locks) the folder
        return trl.train(spec, store, main=False)
    with store.exclusive():  # one process per run folder: a second one fails fast instead of interleaving
        done = finished(spec, store)
        if done:
            return done
        store.write_config(OmegaConf.to_yaml(OmegaConf.create(spec.resolved)))
        try:
            if spec.engine.name == "trl":
                from .engines import trl  # imported only when used: TRL takes seconds to import
                return trl.train(spec, store)
            from .engines import local
            return local.train(spec, store, keep_model)
        except Exception as err:  # a crash is recorded as a verdict (where it can still be written), then re-raised
            with contextlib.suppress(OSError):
                record_failure(spec, store, err)
            raise


def main() -> None:
    import hydra

    from .config import CONFIG_DIR, register_configs

    register_configs()  # the typed defaults, the engines, tasks and methods as Hydra config nodes
    @hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base=None)
    def _main(cfg: DictConfig) -> None:
        status = run(cfg)
        print(summary_line(status))

    _main()


if __name__ == "__main__":
    main()
