"""The report of each Optuna search under ``RESULTS/searches/`` (``trh search``): its trials, the
optimisation history, the parameters' importances, a contour of the first two parameters and a slice
per parameter (Optuna's matplotlib backend), and the best trial with the interval over its seeds.

A study is read back from its journal (the default storage); a search kept in another storage is
reported from its ``trials.csv`` alone (no figures need the study then but the history)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pandas as pd

from harness.store import searches_root

from . import stats as S
from .tables import to_markdown

OPTIMISTIC = ("The best of N trials is an optimistic estimate of that configuration's score: the search chose it "
              "because its seeds scored high. Rerun it on fresh seeds (a sweep) before reporting it.")


def search_folders(root: Path) -> list[Path]:
    folder = searches_root(root)
    return sorted(p for p in folder.iterdir() if p.is_dir() and (p / "trials.csv").exists()) if folder.is_dir() else []


def load_study(folder: Path):
    """The Optuna study of a search folder, read back from its journal (None without one)."""
    journal = folder / "journal.log"
    if not journal.exists():
        return None
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=folder.name, storage=JournalStorage(JournalFileBackend(str(journal))))


def write_search(folder: Path, out: Path, formats=("png",)) -> tuple[list[Path], str]:
    """Files written for one search and its section of report.md."""
    name = folder.name
    trials = pd.read_csv(folder / "trials.csv")
    best = json.loads((folder / "best.json").read_text()).get("best") if (folder / "best.json").exists() else None
    written, lines = [], [f"### search `{name}`", ""]
    shown = trials[[c for c in trials.columns if c in ("number", "value", "state") or c.startswith("params_")]].copy()
    for column in shown.columns:  # thresholds span decades: four significant digits, not two decimals
        if column == "value" or column.startswith("params_"):
            shown[column] = [f"{v:.4g}" if isinstance(v, float) and v == v else v for v in shown[column]]
    lines += [f"{len(trials)} trials ({', '.join(f'{n} {s.lower()}' for s, n in trials['state'].value_counts().items())}).",
              "", to_markdown(shown.rename(columns=lambda c: c.removeprefix("params_")), index=False), ""]
    if best:
        scores = list(best.get("seed_scores") or [])  # one per seed of the spec, in its order
        ci = S.mean_interval(pd.Series(scores, dtype=float), bounds=(0.0, 1.0)) if scores else None
        interval = (f", 95 % interval over its {len(scores)} seeds [{100 * ci.low:.1f}, {100 * ci.high:.1f}]"
                    if ci is not None and len(scores) > 1 else f" ({len(scores)} seed: no interval)")
        lines += [f"Best: trial {best['number']}, {100 * best['value']:.1f}{interval}, at "
                  + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best["params"].items())
                  + ".", "", OPTIMISTIC, ""]
    study = load_study(folder)
    if study is not None:
        for stem, files in _figures(study, name, out, formats).items():
            written += files
            lines.append(f"- `{stem}`" if files else f"- {stem}: not drawn")
    else:
        lines.append("- figures: no journal in this folder (a search kept in another storage); load it with "
                     "`optuna.load_study(study_name=..., storage=...)`")
    path = out / f"search_{name}.md"
    path.write_text("\n".join(lines) + "\n")
    return [path, *written], "\n".join(lines)


def _figures(study, name: str, out: Path, formats) -> dict:
    """history, importances, contour and slice (each where the study has what it needs)."""
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    params = sorted({p for t in complete for p in t.params})
    plots = {"history": ovm.plot_optimization_history}
    if len(complete) >= 2 and params:
        plots["importance"] = ovm.plot_param_importances
        plots["slice"] = ovm.plot_slice
    if len(complete) >= 2 and len(params) >= 2:
        plots["contour"] = lambda s: ovm.plot_contour(s, params=params[:2])
    written = {}
    for kind, plot in plots.items():
        stem = f"search_{name}_{kind}"
        try:
            with warnings.catch_warnings():  # the matplotlib backend is marked experimental
                warnings.simplefilter("ignore")
                drawn = plot(study)
        except (ValueError, RuntimeError) as err:  # e.g. importances of parameters that never varied
            written[f"{stem}: {err}"] = []
            continue
        fig = (drawn.flat[0] if hasattr(drawn, "flat") else drawn).figure
        for ax in fig.axes:  # log-scale ticks of thresholds overlap unless turned
            ax.tick_params(axis="x", which="both", labelrotation=40, labelsize=7)
        fig.suptitle(f"search {name}: {kind}", fontsize=10)
        fig.tight_layout()
        written[stem] = []
        for fmt in formats:
            path = out / f"{stem}.{fmt}"
            fig.savefig(path, dpi=150, bbox_inches="tight")
            written[stem].append(path)
        plt.close(fig)
    return written
