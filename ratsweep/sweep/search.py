"""A Space's search algorithm and scheduler as Ray Tune objects.

random / grid: the distinct trial configs are expanded here (Space.trials) and given to Tune's
BasicVariantGenerator as points to evaluate, one trial each, so keys that do not apply never
multiply trials. A point holds every searched key, None where it does not apply: Tune would fill a
missing key from its domain, and its progress table would show a value the trial never uses (the
domains stay in the param space, which names the table's columns). This path also serves PBT,
which refuses model-based searchers.
optuna / hyperopt: Tune's own searchers over the same domains, wrapped in `DistinctSearcher`, which
strips keys that do not apply and never starts a config that already ran.
"""

from __future__ import annotations

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining, TrialScheduler
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter, SearchAlgorithm, Searcher

from .. import config as cfg
from .space import Domain, Space, encode


def tune_domain(domain: Domain):
    """The Ray Tune domain (list values, such as degree pairs, encode()d as strings)."""
    if domain.kind in ("grid", "choice"):
        return tune.choice([encode(v) for v in domain.values])
    low, high = domain.values
    return {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}[domain.kind](low, high)


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
            config = self.space.active(suggestion)
            key = cfg.identity(config)
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

    # Tune saves a wrapper searcher (one with a .searcher) through get_state, the wrapped one itself.
    def get_state(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("searcher", "space")}

    def set_state(self, state: dict) -> None:
        self.__dict__.update(state)


def search_algorithm(space: Space, max_concurrent: int | None) -> tuple[SearchAlgorithm | Searcher, dict, int]:
    """(search algorithm, param_space, num_samples) for the Tuner."""
    kind, seed = space.search_alg["type"], space.search_alg.get("seed", 0)
    if kind in ("random", "grid"):
        trials = [{k: encode(trial.get(k)) for k in space.search_space} for trial in space.trials()]
        domains = {key: tune_domain(domain) for key, domain in space.search_space.items()}
        return BasicVariantGenerator(points_to_evaluate=trials, max_concurrent=max_concurrent or 0, random_state=seed), domains, len(trials)
    domains = {key: tune_domain(domain) for key, domain in space.search_space.items()}
    if kind == "optuna":
        from ray.tune.search.optuna import OptunaSearch  # noqa: PLC0415

        inner = OptunaSearch(space=domains, metric=space.metric, mode=space.mode, seed=seed)
    else:
        from ray.tune.search.hyperopt import HyperOptSearch  # noqa: PLC0415

        inner = HyperOptSearch(space=domains, metric=space.metric, mode=space.mode, random_state_seed=seed)
    searcher: Searcher = DistinctSearcher(inner, space)
    if max_concurrent:
        searcher = ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)
    return searcher, {}, space.num_samples


def _mutation(domain: Domain):
    """PBT resamples from a list as is (degree pairs included), or from a continuous domain."""
    return [encode(v) for v in domain.values] if domain.kind in ("grid", "choice") else tune_domain(domain)


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
