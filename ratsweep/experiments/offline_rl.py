"""What the offline-RL experiments `iql` and `td3bc` share: Minari data, evaluation, scores, the loop.

The paper's Appendix F (SPEC section 4). Each algorithm lives in its own file (iql.py, td3bc.py),
readable top to bottom; this module gives them the data as one transition tensor on the trial's
device, the MLPs every network is made of, the evaluation in a vector of Gymnasium v5 envs, the
v5-normalized score with its measured and cached anchors, and `train`, the loop that updates,
evaluates, reports and checkpoints.

Datasets are Minari's `mujoco/{task}/medium-v0` (training) and `mujoco/{task}/expert-v0` (the
expert anchor), where Minari keeps them: MINARI_DATASETS_PATH, else ~/.minari/datasets.
"""

from __future__ import annotations

import copy
import datetime
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol

import numpy as np
import torch
from torch import nn

from ..config import check
from ..rational import capture_inputs
from ..registry import register_dataset
from .common import (
    Activation,
    DataError,
    Diverged,
    RationalConfig,
    RationalInit,
    Session,
    check_seed,
    checkpoint,
    evaluating,
    file_lock,
    num_params,
    plot_rational_evolution,
    plot_rationals,
    rational_field,
    rational_param_groups,
    rational_snapshot,
    restore,
    save_learning_curve,
    seed_everything,
)

Task = Literal["halfcheetah", "hopper", "walker2d"]
ENVS = {"halfcheetah": "HalfCheetah-v5", "hopper": "Hopper-v5", "walker2d": "Walker2d-v5"}
TASKS = tuple(ENVS)
EPISODE_STEPS = 1000  # an evaluation episode ends at termination, truncation or this many steps
RANDOM_EPISODES, RANDOM_SEED = 100, 12345  # the random anchor: episodes i = 0..99 reset with seed 12345 + i
FINAL_EVALUATIONS = 5  # final_normalized_score: the mean of the last five finite ones (260k-300k), as table_RL.py
STD_FLOOR = 1e-6
# D4RL v2's (random, expert) returns: a labeled fallback (score_reference: d4rl), never the default;
# the authors measured v5 anchors instead.
D4RL_REFERENCE = {"halfcheetah": (-280.18, 12135.0), "hopper": (-20.27, 3234.3), "walker2d": (1.63, 4592.3)}
D4RL_CAVEAT = "normalized with D4RL v2's reference returns, not v5 anchors"
UNSCALED_CAVEAT = "rewards unscaled: the medium dataset's episode returns have no range (one episode, or all equal)"
REFERENCE_FILE = "ratsweep_reference_returns.json"  # in Minari's datasets folder, beside the datasets
SNAPSHOT_FRACTIONS = (1 / 6, 1 / 3, 1 / 2, 1)  # rational shapes at 50k, 100k, 150k and 300k of 300k updates
SMOKE_EVAL_STEPS = 50  # --smoke evaluates short episodes
COMPILED_VARIANTS = 64  # compile: Dynamo entries the MLPs may take (IQL: 6 networks x grad modes x batch shapes)


@dataclass
class OfflineRationalConfig(RationalConfig):
    """The paper's RL runs start every Rational as ReLU, coefficients at the base learning rate."""

    init: RationalInit = "relu"
    lr_mult: float | None = 1.0


@dataclass
class OfflineRLConfig:
    """Keys both algorithms take (each adds its own hyperparameters)."""

    task: Task = "halfcheetah"  # Minari mujoco/{task}/medium-v0, evaluated in the Gymnasium v5 env
    activation: Activation = "relu"  # in every hidden layer of every network (a fresh module per layer)
    rational: OfflineRationalConfig = rational_field(OfflineRationalConfig)  # when activation is rational
    updates: int = 300_000  # gradient updates (one batch each)
    batch_size: int = 256  # transitions per update, sampled uniformly with replacement
    eval_every: int = 10_000  # updates between evaluations (none at step 0)
    eval_episodes: int = 20  # evaluation episodes, run as one vector of envs
    lr: float = 3e-4  # Adam, every network
    discount: float = 0.99  # gamma of the TD targets
    tau: float = 0.005  # Polyak rate of the target networks
    hidden: int = 256  # width of the two hidden layers of every MLP
    tf32: bool = True  # TF32 matmuls on CUDA, as the authors allowed (fp32 otherwise)
    compile: bool = False  # torch.compile every MLP (whole graph, rationals inside): a speed option; compile_s reports its first call
    score_reference: Literal["measured", "d4rl"] = "measured"  # normalized-score anchors: v5-measured, or D4RL's (marked)
    seed: int = 0  # networks, batches, evaluation episodes

    def __post_init__(self):
        check_seed(self.seed)
        self.rational.default_lr_mult(1.0)
        check(self.updates >= 1, "updates", "an integer >= 1", self.updates)
        check(self.batch_size >= 1, "batch_size", "an integer >= 1", self.batch_size)
        check(self.eval_every >= 1, "eval_every", "an integer >= 1", self.eval_every)
        check(self.eval_episodes >= 1, "eval_episodes", "an integer >= 1", self.eval_episodes)
        check(self.lr > 0, "lr", "a number > 0", self.lr)
        check(0 <= self.discount <= 1, "discount", "a number in [0, 1]", self.discount)
        check(0 < self.tau <= 1, "tau", "a number in (0, 1]", self.tau)
        check(self.hidden >= 1, "hidden", "an integer >= 1", self.hidden)


OFFLINE_METRICS = {
    "normalized_score": "max", "final_normalized_score": "max", "return_mean": "max", "final_return": "max",
    "updates_per_s": "max", "eval_time_s": "min", "elapsed_min": "min", "final_evaluations": "max", "nonfinite_evaluations": "min",
    "compile_s": "min",
}
SMOKE = {"updates": 200, "eval_every": 100, "eval_episodes": 2, "batch_size": 64}


# ---- data -------------------------------------------------------------------------------------


def dataset_id(task: str, quality: Literal["medium", "expert"]) -> str:
    return f"mujoco/{task}/{quality}-v0"


def datasets_root() -> Path:
    """Where Minari keeps datasets: MINARI_DATASETS_PATH, else ~/.minari/datasets (Minari's rule)."""
    from minari.storage import get_dataset_path  # noqa: PLC0415  (minari loads in a second)

    return get_dataset_path()


def verify(data_dir: Path, task: tuple[str, ...] = TASKS, score_reference: tuple[str, ...] = ("measured",)) -> None:
    """The medium dataset of every task, and its expert dataset where the score is measured, are in
    Minari's folder (data_dir is not used: Minari's own location rules). DataError otherwise."""
    root = datasets_root()
    qualities = ("medium", "expert") if "measured" in score_reference else ("medium",)
    missing = [dataset_id(t, q) for t in task for q in qualities if not (root / dataset_id(t, q) / "data" / "metadata.json").is_file()]
    if missing:
        raise DataError(f"minari: {', '.join(missing)} not in {root} (MINARI_DATASETS_PATH, else ~/.minari/datasets); "
                        f"get {'it' if len(missing) == 1 else 'them'} with: ratsweep data minari")


def download(data_dir: Path) -> None:
    """Minari's MuJoCo medium and expert datasets (halfcheetah, hopper, walker2d) into Minari's folder.

    That is MINARI_DATASETS_PATH, else ~/.minari/datasets; --dir is not used."""
    import minari  # noqa: PLC0415

    for task in TASKS:
        for quality in ("medium", "expert"):
            minari.download_dataset(dataset_id(task, quality))


class Batch(NamedTuple):
    observations: torch.Tensor  # B x obs, normalized
    actions: torch.Tensor  # B x act, in [-1, 1]
    rewards: torch.Tensor  # B (scaled for IQL)
    next_observations: torch.Tensor  # B x obs, normalized with the same statistics
    dones: torch.Tensor  # B, 1.0 where the episode terminated (never for a truncation)


@dataclass(frozen=True)
class OfflineDataset:
    """A Minari dataset as transitions (numpy, float32), with what the experiments derive from it."""

    dataset_id: str
    observations: np.ndarray  # s = obs[t]
    actions: np.ndarray  # divided by max_action, clipped to [-1, 1]
    rewards: np.ndarray
    next_observations: np.ndarray  # s' = obs[t + 1] (a truncated episode's final observation included)
    terminals: np.ndarray  # terminations only: a truncated step still bootstraps
    episode_returns: np.ndarray  # summed reward per episode
    max_action: float  # max |high| of the action space

    @cached_property  # read for the transitions and again for evaluation
    def obs_mean(self) -> np.ndarray:
        """Mean of s over the whole dataset (accumulated in float64), float32."""
        return self.observations.mean(0, dtype=np.float64).astype(np.float32)

    @cached_property
    def obs_std(self) -> np.ndarray:
        """Population std of s over the whole dataset, floored at STD_FLOOR, float32."""
        return np.maximum(self.observations.std(0, dtype=np.float64), STD_FLOOR).astype(np.float32)

    @property
    def return_range(self) -> float | None:
        """max - min episode return; None where it says nothing of the rewards' size: one episode,
        or every return equal."""
        spread = float(self.episode_returns.max() - self.episode_returns.min())
        return spread if len(self.episode_returns) > 1 and spread > 0 else None

    def reward_scale(self) -> float:
        """IQL's 1 / (max - min episode return + 1e-9), no shift; 1.0 without a return range, as the
        authors fall back (RL_test.py:718-724) rather than multiply rewards by 1e9."""
        spread = self.return_range
        return 1.0 if spread is None else 1.0 / (spread + 1e-9)

    def transitions(self, device: torch.device, reward_scale: float = 1.0) -> Transitions:
        mean, std = self.obs_mean, self.obs_std
        columns = [(self.observations - mean) / std, self.actions, (self.rewards * reward_scale)[:, None],
                   (self.next_observations - mean) / std, self.terminals[:, None]]
        table = torch.from_numpy(np.concatenate(columns, axis=1).astype(np.float32)).to(device)
        return Transitions(table, self.observations.shape[1], self.actions.shape[1])


@lru_cache(maxsize=2)  # trials that reuse a worker process read each dataset once
def load(dataset: str, root: str) -> OfflineDataset:
    """The Minari dataset `dataset` (under `root`, Minari's folder, which keys the cache) as transitions."""
    import minari  # noqa: PLC0415

    try:
        data = minari.load_dataset(dataset)
        high = np.abs(np.asarray(data.action_space.high, dtype=np.float64)).max()
        parts: dict[str, list[np.ndarray]] = {k: [] for k in ("s", "a", "r", "s2", "d")}
        returns = []
        for episode in data.iterate_episodes():
            observations = np.asarray(episode.observations, dtype=np.float32)
            parts["s"].append(observations[:-1])
            parts["s2"].append(observations[1:])
            parts["a"].append(np.clip(np.asarray(episode.actions, dtype=np.float32) / high, -1, 1))
            parts["r"].append(np.asarray(episode.rewards, dtype=np.float32))
            parts["d"].append(np.asarray(episode.terminations, dtype=np.float32))
            returns.append(float(np.sum(episode.rewards, dtype=np.float64)))
    except Exception as e:  # noqa: BLE001  (a half-downloaded or foreign file: say how to fix it)
        raise DataError(f"minari: {dataset} in {root} could not be read ({type(e).__name__}: {e}); "
                        f"download it again with: ratsweep data minari") from None
    if not returns:
        raise DataError(f"minari: {dataset} in {root} has no episodes; download it again with: ratsweep data minari")
    s, a, r, s2, d = (np.concatenate(parts[k]) for k in ("s", "a", "r", "s2", "d"))
    return OfflineDataset(dataset, s, a, r, s2, d, np.asarray(returns), float(high))


class Transitions:
    """Every transition as one (N, obs + act + 1 + obs + 1) float32 table on the trial's device, so
    a batch is one gather (no host work per update)."""

    def __init__(self, table: torch.Tensor, obs_dim: int, act_dim: int):
        self.table, self.obs_dim, self.act_dim = table, obs_dim, act_dim

    def __len__(self) -> int:
        return len(self.table)

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """A batch drawn uniformly with replacement from the run's data RNG (on the table's device)."""
        rows = self.table[torch.randint(len(self.table), (batch_size,), generator=generator, device=self.table.device)]
        o, a = self.obs_dim, self.act_dim
        s, actions, rewards, s2, dones = rows.split((o, a, 1, o, 1), dim=1)
        return Batch(s, actions, rewards.squeeze(1), s2, dones.squeeze(1))


# ---- networks ---------------------------------------------------------------------------------


def mlp(inputs: int, outputs: int, activation: Callable[[], nn.Module], hidden: int) -> nn.Sequential:
    """Linear -> act -> Linear -> act -> Linear, each activation a new module (each Rational its own
    coefficients), every Linear xavier-uniform with zero bias, as the authors built all networks."""
    net = nn.Sequential(nn.Linear(inputs, hidden), activation(), nn.Linear(hidden, hidden), activation(), nn.Linear(hidden, outputs))
    for layer in net:
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
    return net


class Critic(nn.Module):
    """Q(s, a): an MLP on cat(s, a)."""

    def __init__(self, obs_dim: int, act_dim: int, activation: Callable[[], nn.Module], hidden: int):
        super().__init__()
        self.net = mlp(obs_dim + act_dim, 1, activation, hidden)

    def forward(self, observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([observations, actions], dim=-1)).squeeze(-1)


def frozen_copy(network: nn.Module) -> nn.Module:
    """A target network: a copy that no optimizer sees."""
    return copy.deepcopy(network).requires_grad_(False)


@torch.no_grad()
def polyak(target: nn.Module, online: nn.Module, tau: float) -> None:
    """target <- (1 - tau) target + tau online, for every parameter (one fused op)."""
    torch._foreach_lerp_(list(target.parameters()), list(online.parameters()), tau)


def adam(config: OfflineRLConfig, *modules: nn.Module) -> torch.optim.Adam:
    """Adam over the modules' parameters at config.lr, the rational coefficients at lr x lr_mult."""
    return torch.optim.Adam(rational_param_groups(nn.ModuleList(modules), config.lr, config.rational.lr_mult), lr=config.lr)


def optimize(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


class Algorithm(Protocol):
    """What `train` needs of an offline-RL algorithm."""

    scales_rewards: bool  # IQL divides rewards by the dataset's return range; TD3+BC does not
    networks: nn.ModuleDict  # the trained networks, not targets (a Critic takes (s, a), any other s): counted, plotted
    parts: dict[str, Any]  # everything with a state_dict a resumed run needs (targets, optimizers, schedules)

    def update(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        """One gradient update (step counts from 1); its losses, detached, without a host sync."""

    def act(self, observations: torch.Tensor) -> torch.Tensor:
        """Deterministic actions in [-1, 1] for normalized observations."""


# ---- evaluation and normalized score ----------------------------------------------------------


def make_envs(task: str, count: int, max_steps: int = EPISODE_STEPS):
    """`count` copies of the task's v5 env in one synchronous vector env (MuJoCo steps take
    microseconds: subprocesses would cost more than they save)."""
    import gymnasium as gym  # noqa: PLC0415

    env_id = ENVS[task]
    return gym.vector.SyncVectorEnv([lambda: gym.make(env_id, max_episode_steps=max_steps)] * count)


def rollout(envs, act: Callable[[np.ndarray], np.ndarray], seed: int) -> np.ndarray:
    """One episode in every env of the vector (env i reset with seed + i), all stepped together,
    one `act` call per step for the whole batch; each episode's summed reward."""
    observations, _ = envs.reset(seed=seed)
    returns = np.zeros(envs.num_envs)
    done = np.zeros(envs.num_envs, dtype=bool)
    while not done.all():  # an ended env is auto-reset by the vector; its later rewards are ignored
        observations, rewards, terminated, truncated, _ = envs.step(act(observations))
        returns += np.where(done, 0.0, rewards)
        done |= terminated | truncated
    return returns


class Evaluator:
    """The policy's deterministic return over `episodes` episodes, seeded per evaluation."""

    def __init__(self, task: str, episodes: int, data: OfflineDataset, device: torch.device, max_steps: int = EPISODE_STEPS):
        self.envs = make_envs(task, episodes, max_steps)
        self.mean = torch.as_tensor(data.obs_mean, device=device)
        self.std = torch.as_tensor(data.obs_std, device=device)
        self.max_action, self.device = data.max_action, device

    def __call__(self, policy: Callable[[torch.Tensor], torch.Tensor], seed: int) -> np.ndarray:
        def act(observations: np.ndarray) -> np.ndarray:
            s = (torch.as_tensor(observations, dtype=torch.float32, device=self.device) - self.mean) / self.std
            return (policy(s).clamp(-1, 1) * self.max_action).cpu().numpy()

        return rollout(self.envs, act, seed)

    def close(self) -> None:
        self.envs.close()


def evaluation_seed(seed: int, evaluation: int) -> int:
    """The reset seed of a trial's n-th evaluation (the authors reset unseeded; seeding makes runs repeatable)."""
    return int(np.random.SeedSequence([seed, evaluation]).generate_state(1)[0])


@dataclass(frozen=True)
class Reference:
    """The normalized score's anchors: score = 100 (R - random) / (expert - random + 1e-9)."""

    random: float
    expert: float
    provenance: dict[str, Any]

    def score(self, ret: float | np.ndarray) -> float | np.ndarray:
        return 100.0 * (ret - self.random) / (self.expert - self.random + 1e-9)


def random_return(task: str, episodes: int = RANDOM_EPISODES, seed: int = RANDOM_SEED) -> float:
    """Mean return of uniformly random actions over `episodes` episodes (resets seed + i; the action
    sampler seeded too, which the authors' was not)."""
    envs = make_envs(task, episodes)
    try:
        envs.action_space.seed(seed)
        return float(rollout(envs, lambda _: envs.action_space.sample(), seed).mean())
    finally:
        envs.close()


def reference_returns(task: str) -> Reference:
    """The task's v5 anchors, measured on first use and cached in Minari's folder with provenance:
    random = random_return in the v5 env, expert = mean episode return of mujoco/{task}/expert-v0.
    Keyed by env id, Gymnasium and MuJoCo versions and dataset, so an upgrade measures again."""
    import gymnasium as gym  # noqa: PLC0415
    import mujoco  # noqa: PLC0415

    root = datasets_root()
    path = root / REFERENCE_FILE
    expert_id = dataset_id(task, "expert")
    key = f"{ENVS[task]} gymnasium {gym.__version__} mujoco {mujoco.__version__} {expert_id}"
    with file_lock(path):
        cache = json.loads(path.read_text()) if path.is_file() else {}
        if key not in cache:
            expert = load(expert_id, str(root))
            cache[key] = {
                "random": random_return(task), "expert": float(expert.episode_returns.mean()),
                "env_id": ENVS[task], "gymnasium": gym.__version__, "mujoco": mujoco.__version__,
                "random_episodes": RANDOM_EPISODES, "random_seeds": f"{RANDOM_SEED} + i",
                "dataset_id": expert_id, "expert_episodes": len(expert.episode_returns),
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            }
            temporary = path.with_suffix(f".{os.getpid()}.tmp")
            temporary.write_text(json.dumps(cache, indent=1, sort_keys=True))
            os.replace(temporary, path)
    entry = cache[key]
    return Reference(entry["random"], entry["expert"], entry)


def d4rl_reference(task: str) -> Reference:
    random, expert = D4RL_REFERENCE[task]
    return Reference(random, expert, {"source": "D4RL v2 reference returns (SPEC section 4)", "env_id": ENVS[task]})


# ---- the loop ---------------------------------------------------------------------------------


def compile_networks(algorithm: Algorithm, mode: str | None = None) -> None:
    """Every MLP of the algorithm, trained and target, compiled in place with torch.compile as one
    graph each (fullgraph: the rational op is a registered custom op, so it breaks nothing); their
    parameters and state_dicts stay the modules' own.

    They all run one code object (nn.Sequential.forward), and Dynamo caches per code object: each
    network, target, grad mode and batch shape is an entry of its own, more than its default limit
    of 8 (past it, Dynamo raises under fullgraph), so the limit is raised for this process. `mode`:
    torch.compile's ("reduce-overhead": CUDA graphs, benchmarks/rl_updates.py on a GPU)."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, COMPILED_VARIANTS)
    for part in algorithm.parts.values():
        if isinstance(part, nn.Module):
            for module in part.modules():
                if isinstance(module, nn.Sequential):
                    module.compile(fullgraph=True, mode=mode, dynamic=False)


def final_scores(history: list[dict[str, float]]) -> tuple[float, float, int]:
    """(final normalized score, final return, evaluations behind them): the means over the last
    FINAL_EVALUATIONS FINITE evaluations, as table_RL.py (a run is never stopped on NaN; non-finite
    evaluations are skipped); NaN and 0 where there is none."""
    finite = [m for m in history if math.isfinite(m["normalized_score"])][-FINAL_EVALUATIONS:]
    if not finite:
        return math.nan, math.nan, 0
    return (float(np.mean([m["normalized_score"] for m in finite])), float(np.mean([m["return_mean"] for m in finite])),
            len(finite))


def train(config: OfflineRLConfig, session: Session,
          make_algorithm: Callable[[OfflineRLConfig, int, int, torch.device, torch.Generator], Algorithm]) -> dict[str, float]:
    """Train an offline-RL algorithm on the task's medium dataset: `config.updates` updates, an
    evaluation every `eval_every` (and after the last), each reported with its losses and speed and
    checkpointed; artifacts (learning curve, rational shapes) with the last report.

    As the authors ran it, non-finite losses never stop a run: it trains on, its non-finite
    evaluations are skipped by the final scores, and only a run without one finite evaluation ends
    Diverged (after its last report), which the report then drops from its cell and counts."""
    import gymnasium as gym  # noqa: PLC0415
    import mujoco  # noqa: PLC0415

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = config.tf32
    torch.backends.cudnn.allow_tf32 = config.tf32
    root = str(datasets_root())
    verify(session.data_dir, (config.task,), (config.score_reference,))
    data = load(dataset_id(config.task, "medium"), root)
    caveats = []
    if config.score_reference == "measured":
        reference = reference_returns(config.task)
    else:
        reference = d4rl_reference(config.task)
        caveats.append(D4RL_CAVEAT)

    seed_everything(config.seed)  # the networks' init
    # batches and every algorithm draw; then the plots' batch: streams apart from the init's
    generator, probe = (torch.Generator(device).manual_seed(int(np.random.SeedSequence([config.seed, stream]).generate_state(1)[0]))
                        for stream in (1, 2))
    obs_dim, act_dim = data.observations.shape[1], data.actions.shape[1]
    algorithm = make_algorithm(config, obs_dim, act_dim, device, generator)
    if config.compile:
        compile_networks(algorithm)
    scale = data.reward_scale() if algorithm.scales_rewards else 1.0
    if algorithm.scales_rewards and data.return_range is None:
        caveats.append(UNSCALED_CAVEAT)
        print(f"{data.dataset_id}: {UNSCALED_CAVEAT}; reward scale 1.0, as the authors fall back", flush=True)
    transitions = data.transitions(device, scale)
    # scores move when MuJoCo's physics or the v5 envs do: the versions the anchors were measured with
    session.log_params(num_params=num_params(algorithm.networks), transitions=len(transitions), reward_scale=scale,
                       reference_random=reference.random, reference_expert=reference.expert,
                       gymnasium_version=gym.__version__, mujoco_version=mujoco.__version__,
                       **({"caveat": "; ".join(caveats)} if caveats else {}))
    (session.artifact_dir / "reference_returns.json").write_text(json.dumps(reference.provenance, indent=1, sort_keys=True))

    updates = config.updates
    snapshot_steps = {max(1, round(f * updates)) for f in SNAPSHOT_FRACTIONS}
    start, history, shapes, elapsed = 0, [], {0: rational_snapshot(algorithm.networks)}, 0.0
    if session.restored is not None:
        state = restore(session.restored, algorithm.parts, generator)
        start, history, shapes = state["step"], list(state["history"]), dict(state["shapes"])
        elapsed = state.get("elapsed", 0.0)  # checkpoints of ratsweep 0.x before it was kept
    evaluate = Evaluator(config.task, config.eval_episodes, data, device, SMOKE_EVAL_STEPS if session.smoke else EPISODE_STEPS)
    try:
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        window_start, window_updates, compiled = time.perf_counter(), 0, {}
        for step in range(start + 1, updates + 1):
            for name, value in algorithm.update(transitions.sample(config.batch_size, generator), step).items():
                sums[name] = sums[name] + value if name in sums else value
                counts[name] = counts.get(name, 0) + 1
            if config.compile and step == start + 1:  # the first update compiles: timed apart from the steady state
                compiled["compile_s"] = time.perf_counter() - window_start
                elapsed += compiled["compile_s"]
                window_start = time.perf_counter()
            else:
                window_updates += 1
            if step in snapshot_steps:
                shapes[step] = rational_snapshot(algorithm.networks)
            if step % config.eval_every and step != updates:
                continue
            losses = {name: total.item() / counts[name] for name, total in sums.items()}  # one host sync per window
            trained = time.perf_counter()
            with evaluating(algorithm.networks):  # non-finite weights give a NaN return: skipped below
                returns = evaluate(algorithm.act, evaluation_seed(config.seed, len(history)))
            evaluated = time.perf_counter()
            elapsed += evaluated - window_start
            metrics = {
                "updates": step,
                "normalized_score": float(reference.score(returns.mean())),
                "return_mean": float(returns.mean()),
                "return_std": float(returns.std()),
                **losses,
                "updates_per_s": window_updates / max(trained - window_start, 1e-9),
                "eval_time_s": evaluated - trained,
                "elapsed_min": elapsed / 60,  # the run's wall time so far, evaluations included (the tables' time)
                **compiled,
            }
            compiled = {}
            history.append(metrics)
            # so far; final after the last evaluation
            metrics["final_normalized_score"], metrics["final_return"], metrics["final_evaluations"] = final_scores(history)
            metrics["nonfinite_evaluations"] = sum(not math.isfinite(m["normalized_score"]) for m in history)
            if step == updates:  # artifacts go out with the final report
                save_artifacts(algorithm, transitions, probe, history, shapes, session)
            session.report(metrics, state=checkpoint(algorithm.parts, generator, step=step, history=history, shapes=shapes,
                                                     elapsed=elapsed))
            sums, counts = {}, {}
            window_start, window_updates = time.perf_counter(), 0
    finally:
        evaluate.close()
    if not history[-1]["final_evaluations"]:
        raise Diverged(f"no finite evaluation in {len(history)} (the authors' table drops such a seed)")
    return history[-1]


def save_artifacts(algorithm: Algorithm, transitions: Transitions, generator: torch.Generator, history: list[dict[str, float]],
                   shapes: dict[int, Any], session: Session) -> None:
    """learning_curve.png (normalized score and return over updates) and every Rational's learned
    shape, alone and over its snapshots, over a histogram of what it receives on a batch of the data."""
    save_learning_curve(history, session, panels=(("normalized_score", "normalized score", "linear"),
                                                  ("return_mean", "return", "linear")),
                        steps=[m["updates"] for m in history], step_label="updates")
    batch = transitions.sample(min(len(transitions), 4096), generator)
    with evaluating(algorithm.networks), capture_inputs(algorithm.networks) as seen:
        for network in algorithm.networks.values():  # critics take (s, a), every other network s
            if isinstance(network, Critic):
                network(batch.observations, batch.actions)
            else:
                network(batch.observations)
    plot_rationals(algorithm.networks, session.artifact_dir, inputs=seen)
    plot_rational_evolution(algorithm.networks, shapes, seen, session.artifact_dir / "rational_evolution.png")


register_dataset("minari", download=download, verify=verify, keys=("task", "score_reference"), location=lambda _: datasets_root())
