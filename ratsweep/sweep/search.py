"""A Space's search algorithm and scheduler as Ray Tune objects.

random / grid: the distinct trial configs are expanded here (Space.trials) and handed out in order
by `TrialList`, so keys that do not apply never multiply trials.
optuna / hyperopt: Tune's own searchers over the same domains, wrapped in `DistinctSearcher`, which
strips keys that do not apply and never starts a config that already ran.
"""

from __future__ import annotations

import pickle
from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining, TrialScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher

from .space import Domain, Space

_PRIMITIVE = (bool, int, float, str, type(None))


def tune_domain(domain: Domain):
    """The Ray Tune domain; choices that are not plain scalars (degree pairs) become their indices."""
    if domain.kind in ("grid", "choice"):
        values = domain.values
        return tune.choice(values if all(isinstance(v, _PRIMITIVE) for v in values) else list(range(len(values))))
    low, high = domain.values
    return {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}[domain.kind](low, high)


def decode(space: Space, suggestion: dict[str, Any]) -> dict[str, Any]:
    """Undo tune_domain's index encoding."""
    out = {}
    for key, value in suggestion.items():
        domain = space.search_space[key]
        encoded = domain.kind in ("grid", "choice") and not all(isinstance(v, _PRIMITIVE) for v in domain.values)
        out[key] = domain.values[value] if encoded else value
    return out


class TrialList(Searcher):
    """Hands out a fixed list of trial configs, then says FINISHED."""

    def __init__(self, trials: list[dict[str, Any]], space: Space):
        super().__init__(metric=space.metric, mode=space.mode)
        self.pending = list(trials)

    def suggest(self, trial_id: str):
        return self.pending.pop(0) if self.pending else Searcher.FINISHED

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass

    def save(self, checkpoint_path: str) -> None:  # Tune saves searchers for --resume
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.pending, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.pending = pickle.load(f)


class DistinctSearcher(Searcher):
    """Runs each distinct applicable config once; a repeat is answered from its twin's result."""

    MAX_TRIES = 100

    def __init__(self, searcher: Searcher, space: Space):
        super().__init__(metric=space.metric, mode=space.mode)
        self.searcher, self.space = searcher, space
        self._inner_id: dict[str, str] = {}  # our trial id -> the id the inner searcher knows
        self._key: dict[str, str] = {}  # our trial id -> its config key
        self._results: dict[str, dict] = {}  # config key -> final result
        self._seen: set[str] = set()

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str):
        for attempt in range(self.MAX_TRIES):
            inner_id = trial_id if attempt == 0 else f"{trial_id}_repeat{attempt}"
            suggestion = self.searcher.suggest(inner_id)
            if suggestion is None or suggestion == Searcher.FINISHED:
                return suggestion
            config = self.space.active(decode(self.space, suggestion))
            key = repr(sorted(config.items()))
            if key not in self._seen:
                self._seen.add(key)
                self._inner_id[trial_id], self._key[trial_id] = inner_id, key
                return config
            # The inner searcher learns its repeat's outcome (same config, same result) and tries again.
            twin = self._results.get(key)
            self.searcher.on_trial_complete(inner_id, result=twin, error=twin is None)
        return Searcher.FINISHED  # every suggestion is a repeat: the applicable space is exhausted

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._inner_id:
            self.searcher.on_trial_result(self._inner_id[trial_id], result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self._inner_id:
            return
        if result is not None and not error:
            self._results[self._key[trial_id]] = result
        self.searcher.on_trial_complete(self._inner_id[trial_id], result=result, error=error)

    def save(self, checkpoint_path: str) -> None:
        inner = checkpoint_path + ".inner"
        self.searcher.save(inner)
        state = {k: v for k, v in self.__dict__.items() if k not in ("searcher", "space")}
        with open(checkpoint_path, "wb") as f:
            pickle.dump(state, f)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path + ".inner")
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


def search_algorithm(space: Space, max_concurrent: int | None) -> tuple[Searcher, int]:
    """(searcher, num_samples for TuneConfig)."""
    kind, seed = space.search_alg["type"], space.search_alg.get("seed", 0)
    searcher: Searcher
    if kind in ("random", "grid"):
        trials = space.trials()
        searcher = TrialList(trials, space)
        if max_concurrent:
            searcher = ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)
        return searcher, len(trials)
    domains = {key: tune_domain(domain) for key, domain in space.search_space.items()}
    if kind == "optuna":
        from ray.tune.search.optuna import OptunaSearch  # noqa: PLC0415

        inner = OptunaSearch(space=domains, metric=space.metric, mode=space.mode, seed=seed)
    else:
        from ray.tune.search.hyperopt import HyperOptSearch  # noqa: PLC0415

        inner = HyperOptSearch(space=domains, metric=space.metric, mode=space.mode, random_state_seed=seed)
    searcher = DistinctSearcher(inner, space)
    if max_concurrent:
        searcher = ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)
    return searcher, space.num_samples


def _mutation(domain: Domain):
    """PBT resamples from a list as is (degree pairs included), or from a continuous domain."""
    return list(domain.values) if domain.kind in ("grid", "choice") else tune_domain(domain)


def scheduler(space: Space) -> TrialScheduler:
    options = dict(space.scheduler)
    kind = options.pop("type")
    if kind == "asha":
        return ASHAScheduler(time_attr="training_iteration", **options)
    if kind == "pbt":
        mutate = options.pop("mutate")
        return PopulationBasedTraining(
            time_attr="training_iteration",
            hyperparam_mutations={key: _mutation(space.search_space[key]) for key in mutate},
            **options,
        )
    return FIFOScheduler()
