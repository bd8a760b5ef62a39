"""Offline RL (`iql`, `td3bc`): Minari data as the authors used it, each algorithm's choices pinned
against SPEC section 4 written out by hand, evaluation, normalized scores, exact resume, and smoke
sweeps end to end. The datasets are tiny random-action recordings from the real v5 envs (made with
minari.DataCollector): they drive the real code paths, and no number from them is a result."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
from pathlib import Path

import gymnasium as gym
import minari
import mujoco
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import artifacts, mlflow_client, ratsweep, trial_runs
from ratsweep import config as cfg
from ratsweep import registry
from ratsweep.experiments import iql as iql_module
from ratsweep.experiments import offline_rl
from ratsweep.experiments import td3bc as td3bc_module
from ratsweep.experiments.common import DataError, LocalSession, Rational
from ratsweep.sweep import checks
from ratsweep.sweep.space import load as load_space
from synthetic_data import write_minari

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def minari_root(tmp_path_factory):
    return write_minari(tmp_path_factory.mktemp("minari"))


@pytest.fixture
def datasets(minari_root, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(minari_root))
    return minari_root


def episodes(dataset_id: str) -> list:
    return list(minari.load_dataset(dataset_id).iterate_episodes())


def make(name: str, **values):
    experiment = registry.get_experiment(name)
    return cfg.build(experiment.config, {**experiment.smoke, **values})


def algorithm(name: str, seed: int = 0, **values):
    config = make(name, **values)
    torch.manual_seed(seed)
    cls = iql_module.IQL if name == "iql" else td3bc_module.TD3BC
    return cls(config, 5, 2, torch.device("cpu"), torch.Generator().manual_seed(seed)), config


def batch(n: int = 16, seed: int = 1, obs: int = 5, act: int = 2) -> offline_rl.Batch:
    g = torch.Generator().manual_seed(seed)
    return offline_rl.Batch(torch.randn(n, obs, generator=g), torch.rand(n, act, generator=g) * 2 - 1, torch.randn(n, generator=g),
                            torch.randn(n, obs, generator=g), (torch.rand(n, generator=g) < 0.2).float())


# ---- data -------------------------------------------------------------------------------------


def test_terminal_flags_come_from_terminations_and_truncated_episodes_keep_their_last_observation(datasets):
    for task in ("halfcheetah", "hopper"):
        data = offline_rl.load(offline_rl.dataset_id(task, "medium"), str(datasets))
        recorded = episodes(offline_rl.dataset_id(task, "medium"))
        assert np.array_equal(data.terminals, np.concatenate([e.terminations for e in recorded]).astype(np.float32))
        assert np.allclose(data.next_observations, np.concatenate([e.observations[1:] for e in recorded]))
        assert np.allclose(data.observations, np.concatenate([e.observations[:-1] for e in recorded]))
    cheetah = episodes("mujoco/halfcheetah/medium-v0")
    assert all(e.truncations[-1] and not e.terminations.any() for e in cheetah)  # time limit only: never terminal
    assert offline_rl.load("mujoco/halfcheetah/medium-v0", str(datasets)).terminals.sum() == 0
    hopper = episodes("mujoco/hopper/medium-v0")
    assert sum(e.terminations[-1] for e in hopper) >= 1  # a fall: terminal, does not bootstrap


def test_observations_are_normalized_by_the_datasets_population_statistics(datasets):
    data = offline_rl.load("mujoco/hopper/medium-v0", str(datasets))
    t = data.transitions(torch.device("cpu"))
    s, s2 = t.table[:, :11].double(), t.table[:, 11 + 3 + 1:11 + 3 + 1 + 11].double()
    assert torch.allclose(s.mean(0), torch.zeros(11, dtype=torch.float64), atol=1e-4)
    assert torch.allclose(s.std(0, unbiased=False), torch.ones(11, dtype=torch.float64), atol=1e-4)
    mean, std = data.observations.mean(0), data.observations.std(0)
    assert np.allclose(s2.numpy(), (data.next_observations - mean) / std, atol=1e-4)  # the same statistics for s'


def test_std_is_floored_and_actions_are_scaled_into_the_unit_box():
    observations = np.stack([np.zeros(4, np.float32), np.arange(4, dtype=np.float32)], axis=1)
    data = offline_rl.OfflineDataset("x", observations, np.array([[0.5], [-1.0], [1.0], [0.0]], np.float32), np.ones(4, np.float32),
                                     observations, np.zeros(4, np.float32), np.array([1.0, 3.0]), 1.0)
    assert data.obs_std[0] == offline_rl.STD_FLOOR and data.obs_std[1] == pytest.approx(np.std([0, 1, 2, 3]))
    assert torch.isfinite(data.transitions(torch.device("cpu")).table).all()


def test_iql_scales_rewards_by_the_episode_return_range_and_td3bc_does_not(datasets):
    data = offline_rl.load("mujoco/hopper/medium-v0", str(datasets))
    returns = [float(np.sum(e.rewards)) for e in episodes("mujoco/hopper/medium-v0")]
    scale = 1 / (max(returns) - min(returns) + 1e-9)
    assert data.reward_scale() == pytest.approx(scale)
    assert iql_module.IQL.scales_rewards and not td3bc_module.TD3BC.scales_rewards
    rewards = data.transitions(torch.device("cpu"), data.reward_scale()).table[:, 11 + 3]
    assert torch.allclose(rewards.double(), torch.from_numpy(data.rewards).double() * scale, rtol=1e-6)


@pytest.mark.parametrize("returns", [[250.0], [120.0, 120.0, 120.0]])
def test_a_dataset_without_a_return_range_scales_rewards_by_one(returns):
    """One episode, or equal returns: 1 / (0 + 1e-9) would multiply IQL's rewards by 1e9; the authors fall back to 1.0."""
    n = len(returns)
    data = offline_rl.OfflineDataset("d", np.zeros((n, 2), np.float32), np.zeros((n, 1), np.float32), np.ones(n, np.float32),
                                     np.zeros((n, 2), np.float32), np.zeros(n, np.float32), np.array(returns), 1.0)
    assert data.return_range is None and data.reward_scale() == 1.0
    spread = dataclasses.replace(data, episode_returns=np.array([*returns, returns[-1] + 4.0]))
    assert spread.return_range == 4.0 and spread.reward_scale() == pytest.approx(0.25)


def test_a_one_episode_dataset_runs_unscaled_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(write_minari(tmp_path, tasks=("hopper",), episodes=1, steps=20)))
    session = LocalSession(smoke=True)
    registry.get_experiment("iql").run(make("iql", task="hopper", updates=20, eval_every=10), session)
    assert session.params["reward_scale"] == 1.0 and session.params["caveat"] == offline_rl.UNSCALED_CAVEAT
    assert "reward scale 1.0, as the authors fall back" in capsys.readouterr().out


def test_a_batch_is_sampled_with_replacement_from_the_runs_generator(datasets):
    t = offline_rl.load("mujoco/hopper/medium-v0", str(datasets)).transitions(torch.device("cpu"))
    a, b = (t.sample(4 * len(t), torch.Generator().manual_seed(3)) for _ in range(2))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert len(torch.unique(a.observations, dim=0)) < len(t)  # 4N draws with replacement repeat rows (and miss some)


# ---- the algorithms, pinned -------------------------------------------------------------------


def test_expectile_loss_and_advantage_weights_against_hand_computed_values():
    diff = torch.tensor([1.0, -2.0])
    assert iql_module.expectile_loss(diff, 0.7).item() == pytest.approx((0.7 * 1 + 0.3 * 4) / 2)
    weights = iql_module.advantage_weights(torch.tensor([0.0, 1.0, 10.0]), torch.zeros(3), beta=3.0, max_weight=100.0)
    assert weights.tolist() == pytest.approx([1.0, math.exp(3.0), 100.0])


def test_tanh_gaussian_log_prob_clamps_actions_and_log_std_and_corrects_for_tanh():
    mean, log_std, a = torch.tensor([[0.0, 0.5]]), torch.tensor([0.0, 3.0]), torch.tensor([[0.0, 1.0]])
    got = iql_module.tanh_gaussian_log_prob(mean, log_std, a).item()
    u1 = math.atanh(0.999)  # a = 1 clamps to 0.999; log-std 3 clamps to 2
    expected = (-0.5 * math.log(2 * math.pi) - math.log(1 + 1e-6)) + \
        (-0.5 * ((u1 - 0.5) / math.exp(2.0)) ** 2 - 2.0 - 0.5 * math.log(2 * math.pi) - math.log(1 - 0.999**2 + 1e-6))
    assert got == pytest.approx(expected, rel=1e-5)
    reference = torch.distributions.Normal(mean, log_std.clamp(-5, 2).exp()).log_prob(torch.atanh(a.clamp(-0.999, 0.999)))
    assert got == pytest.approx((reference - torch.log(1 - a.clamp(-0.999, 0.999) ** 2 + 1e-6)).sum().item(), rel=1e-5)


def test_td3bc_actor_loss_against_hand_computed_values():
    q = torch.tensor([1.0, -3.0], requires_grad=True)
    pi, a = torch.tensor([[0.5], [0.0]]), torch.tensor([[0.0], [0.0]])
    loss = td3bc_module.td3bc_actor_loss(q, pi, a, alpha=2.5)
    lam = 2.5 / (2.0 + 1e-6)
    assert loss.item() == pytest.approx(-lam * -1.0 + 0.125)
    loss.backward()
    assert q.grad.tolist() == pytest.approx([-lam / 2, -lam / 2])  # lambda is detached: no gradient through |q|


def test_target_networks_move_by_polyak():
    online, target = nn.Linear(3, 2), nn.Linear(3, 2)
    before = [p.detach().clone() for p in target.parameters()]
    offline_rl.polyak(target, online, 0.005)
    for new, old, o in zip(target.parameters(), before, online.parameters()):
        assert torch.allclose(new, 0.995 * old + 0.005 * o.detach(), atol=1e-7)


def test_iql_update_is_the_authors_order_with_the_online_v_and_target_critics():
    """SPEC section 4 written out step by step on a copy; the implementation must match it exactly."""
    iql, c = algorithm("iql")
    ref = copy.deepcopy(iql)
    b = batch()
    s, a, r, s2, d = b
    value = lambda x: ref.v(x).squeeze(-1)  # noqa: E731
    with torch.no_grad():
        target = r + c.discount * (1 - d) * value(s2)  # the online V, before this update's V step
    q_loss = F.mse_loss(ref.q1(s, a), target) + F.mse_loss(ref.q2(s, a), target)
    ref.q_optimizer.zero_grad(); q_loss.backward(); ref.q_optimizer.step()  # noqa: E702
    with torch.no_grad():
        q_min = torch.min(ref.q1_target(s, a), ref.q2_target(s, a))  # the target critics, not the just-updated ones
    diff = q_min - value(s)
    v_loss = (torch.abs(0.7 - (diff < 0).float()) * diff**2).mean()
    ref.v_optimizer.zero_grad(); v_loss.backward(); ref.v_optimizer.step()  # noqa: E702
    with torch.no_grad():
        w = torch.exp(3.0 * (q_min - value(s))).clamp(max=100.0)  # V after its update
    actor_loss = -(w * ref.actor.log_prob(s, a)).mean()
    ref.actor_optimizer.zero_grad(); actor_loss.backward(); ref.actor_optimizer.step()  # noqa: E702
    for target_net, online in ((ref.q1_target, ref.q1), (ref.q2_target, ref.q2)):
        for tp, op in zip(target_net.parameters(), online.parameters()):
            tp.data.mul_(1 - c.tau).add_(c.tau * op.data)

    losses = iql.update(b, 1)
    assert losses["q_loss"].item() == pytest.approx(q_loss.item(), rel=1e-6)
    assert losses["value_loss"].item() == pytest.approx(v_loss.item(), rel=1e-6)
    assert losses["actor_loss"].item() == pytest.approx(actor_loss.item(), rel=1e-6)
    for name in ("q1", "q2", "v", "actor", "q1_target", "q2_target"):
        for mine, theirs in zip(getattr(iql, name).parameters(), getattr(ref, name).parameters()):
            assert torch.allclose(mine, theirs, atol=1e-6), name


def test_iql_decays_only_the_actors_learning_rate_on_a_cosine_to_zero():
    iql, c = algorithm("iql", updates=8)
    for step in range(1, 5):
        iql.update(batch(seed=step), step)
    assert [g["lr"] for g in iql.actor_optimizer.param_groups] == pytest.approx([3e-4 * (1 + math.cos(math.pi * 4 / 8)) / 2] * 2)
    assert all(g["lr"] == 3e-4 for opt in (iql.q_optimizer, iql.v_optimizer) for g in opt.param_groups)
    for step in range(5, 9):
        iql.update(batch(seed=step), step)
    assert all(g["lr"] == pytest.approx(0.0, abs=1e-12) for g in iql.actor_optimizer.param_groups)


def test_td3bc_updates_actor_and_targets_every_second_update_only():
    td3, c = algorithm("td3bc")

    def snapshot():
        return {name: [p.detach().clone() for p in getattr(td3, name).parameters()]
                for name in ("actor", "actor_target", "q1_target", "q2_target", "q1")}

    actor_steps = 0
    for step in range(1, 7):
        before = snapshot()
        losses = td3.update(batch(seed=step), step)
        after = snapshot()
        moved = {name: any(not torch.equal(x, y) for x, y in zip(before[name], after[name])) for name in before}
        assert moved["q1"]  # critics every update
        expected = step % 2 == 0  # the counter is incremented before the test: updates 2, 4, 6
        assert moved["actor"] == moved["actor_target"] == moved["q1_target"] == moved["q2_target"] == expected, step
        assert ("actor_loss" in losses) == expected
        actor_steps += expected
    assert actor_steps == 3  # 150k of 300k


def test_td3bc_critic_target_uses_clipped_noise_on_the_target_actor():
    td3, c = algorithm("td3bc", seed=4)
    ref = copy.deepcopy(td3)
    generator = torch.Generator().manual_seed(4)
    s, a, r, s2, d = b = batch()
    with torch.no_grad():
        noise = (torch.randn(a.shape, generator=generator) * 0.2).clamp(-0.5, 0.5)
        a2 = (ref.actor_target(s2) + noise).clamp(-1, 1)
        target = r + 0.99 * (1 - d) * torch.min(ref.q1_target(s2, a2), ref.q2_target(s2, a2))
    expected = F.mse_loss(ref.q1(s, a), target) + F.mse_loss(ref.q2(s, a), target)
    assert td3.update(b, 1)["q_loss"].item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("name", ["iql", "td3bc"])
def test_every_linear_is_xavier_uniform_with_zero_bias_and_every_activation_is_its_own(name):
    algo, _ = algorithm(name, activation="rational")
    linears = [m for m in algo.networks.modules() if isinstance(m, nn.Linear)]
    for layer in linears:
        fan_out, fan_in = layer.weight.shape
        bound = math.sqrt(6 / (fan_in + fan_out))
        assert layer.weight.abs().max() <= bound and torch.count_nonzero(layer.bias) == 0
        if layer.weight.numel() > 10_000:  # uniform on [-bound, bound]: std bound / sqrt(3)
            assert layer.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    rationals = [m for m in algo.networks.modules() if isinstance(m, Rational)]
    assert len(rationals) == 2 * len(algo.networks) == len({id(m) for m in rationals})
    assert len({id(p) for m in rationals for p in m.parameters()}) == 2 * len(rationals)
    # initialized as ReLU from the published (5, 4) version-A fit
    x = torch.linspace(-2, 2, 9)
    assert torch.allclose(rationals[0](x), F.relu(x), atol=0.1)
    assert algo.networks["q1"].net[1] is not algo.networks["q1"].net[3]


def test_rl_configs_default_to_the_papers_settings():
    for name in ("iql", "td3bc"):
        c = cfg.build(registry.get_experiment(name).config)
        assert (c.updates, c.batch_size, c.eval_every, c.eval_episodes, c.lr, c.discount, c.tau, c.hidden) == \
            (300_000, 256, 10_000, 20, 3e-4, 0.99, 0.005, 256)
        assert (c.rational.degrees, c.rational.version, c.rational.init, c.rational.lr_mult) == ((5, 4), "A", "relu", 1.0)
    i, t = cfg.build(iql_module.IQLConfig), cfg.build(td3bc_module.TD3BCConfig)
    assert (i.expectile, i.beta, i.max_weight) == (0.7, 3.0, 100.0)
    assert (t.alpha, t.policy_noise, t.noise_clip, t.policy_delay) == (2.5, 0.2, 0.5, 2)
    with pytest.raises(cfg.ConfigError, match="task: expected one of halfcheetah, hopper, walker2d"):
        cfg.build(iql_module.IQLConfig, {"task": "ant"})
    docs = {d.key: d for d in cfg.key_docs(iql_module.IQLConfig)}
    assert docs["rational.init"].default == "relu" and "what F starts as" in docs["rational.init"].doc


# ---- evaluation and scores --------------------------------------------------------------------


def test_evaluation_is_one_batched_forward_per_step_and_equals_single_env_episodes(datasets):
    data = offline_rl.load("mujoco/hopper/medium-v0", str(datasets))
    evaluate = offline_rl.Evaluator("hopper", 3, data, torch.device("cpu"), max_steps=200)
    calls = []

    def policy(s):
        calls.append(s.shape)
        return torch.tanh(s[:, :3])  # deterministic, depends on the state

    returns = evaluate(policy, seed=7)
    assert all(shape == (3, 11) for shape in calls) and 1 <= len(calls) <= 200
    for i in range(3):  # the same policy, one env at a time with seed 7 + i
        env = gym.make("Hopper-v5", max_episode_steps=200)
        obs, _ = env.reset(seed=7 + i)
        total, done = 0.0, False
        while not done:
            s = (torch.as_tensor(obs, dtype=torch.float32) - torch.as_tensor(data.obs_mean)) / torch.as_tensor(data.obs_std)
            obs, reward, terminated, truncated, _ = env.step(policy(s[None])[0].clamp(-1, 1).numpy())
            total += reward
            done = terminated or truncated
        assert returns[i] == pytest.approx(total, rel=1e-6)
    assert np.array_equal(evaluate(policy, seed=7), returns)  # seeded per evaluation: repeatable
    assert not np.array_equal(evaluate(policy, seed=8), returns)
    evaluate.close()
    assert offline_rl.evaluation_seed(0, 1) != offline_rl.evaluation_seed(0, 2) != offline_rl.evaluation_seed(1, 1)


def test_normalized_score_anchors_are_measured_once_and_cached_with_provenance(datasets, monkeypatch):
    reference = offline_rl.reference_returns("hopper")
    expert = [float(np.sum(e.rewards)) for e in episodes("mujoco/hopper/expert-v0")]
    assert reference.expert == pytest.approx(np.mean(expert))
    assert reference.random == pytest.approx(offline_rl.random_return("hopper"))
    assert reference.score(reference.expert) == pytest.approx(100) and reference.score(reference.random) == pytest.approx(0)
    assert reference.score(0.5 * (reference.random + reference.expert)) == pytest.approx(50)
    cached = json.loads((datasets / offline_rl.REFERENCE_FILE).read_text())
    [entry] = [v for k, v in cached.items() if k.startswith("Hopper-v5 ")]
    assert entry["env_id"] == "Hopper-v5" and entry["gymnasium"] == gym.__version__ and entry["dataset_id"] == "mujoco/hopper/expert-v0"
    assert entry["expert_episodes"] == len(expert) and entry["random_episodes"] == 100 and entry["date"]
    monkeypatch.setattr(offline_rl, "random_return", lambda *a: pytest.fail("measured again"))
    assert offline_rl.reference_returns("hopper") == reference


def test_d4rl_anchors_are_a_labeled_fallback(datasets):
    session = LocalSession(smoke=True)
    registry.get_experiment("td3bc").run(make("td3bc", task="hopper", score_reference="d4rl", updates=20, eval_every=20), session)
    assert session.params["caveat"] == offline_rl.D4RL_CAVEAT
    assert (session.params["reference_random"], session.params["reference_expert"]) == offline_rl.D4RL_REFERENCE["hopper"]
    assert "caveat" not in LocalSession().params


# ---- runs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["iql", "td3bc"])
def test_a_resumed_run_continues_exactly(datasets, name):
    config = make(name, task="hopper", activation="rational", updates=60, eval_every=20)
    whole = LocalSession(smoke=True)
    registry.get_experiment(name).run(config, whole)
    resumed = LocalSession(smoke=True, restored=whole.states[0])
    registry.get_experiment(name).run(config, resumed)
    drop = ("updates_per_s", "eval_time_s", "elapsed_min")
    assert [{k: v for k, v in m.items() if k not in drop} for m in resumed.history] == \
        [{k: v for k, v in m.items() if k not in drop} for m in whole.history[1:]]
    for part in ("networks", "q1_target", "q2_target"):
        for key, tensor in whole.states[-1][part].items():
            assert torch.equal(tensor, resumed.states[-1][part][key]), (part, key)


def test_a_run_reports_every_evaluation_and_the_mean_of_the_last_five(datasets):
    session = LocalSession(smoke=True)
    out = registry.get_experiment("iql").run(make("iql", task="hopper", updates=70, eval_every=10), session)
    assert [m["updates"] for m in session.history] == list(range(10, 71, 10))
    scores = [m["normalized_score"] for m in session.history]
    assert out["final_normalized_score"] == pytest.approx(np.mean(scores[-5:]))
    assert out["final_return"] == pytest.approx(np.mean([m["return_mean"] for m in session.history[-5:]]))
    assert out["final_evaluations"] == 5 and out["nonfinite_evaluations"] == 0
    minutes = [m["elapsed_min"] for m in session.history]  # the tables' time: the run's wall time so far
    assert all(0 < a < b for a, b in zip(minutes, minutes[1:]))
    assert session.params["gymnasium_version"] == gym.__version__ and session.params["mujoco_version"] == mujoco.__version__
    assert "caveat" not in session.params
    assert {"q_loss", "value_loss", "actor_loss", "updates_per_s", "return_mean"} <= set(out)
    def mlp(inputs, outputs):  # two hidden layers of 256, weights and biases
        return (inputs + 1) * 256 + 257 * 256 + 257 * outputs

    obs, act = 11, 3  # Hopper; targets are not counted, the actor's log-std is
    assert session.params["num_params"] == 2 * mlp(obs + act, 1) + mlp(obs, 1) + mlp(obs, act) + act
    assert (session.artifact_dir / "learning_curve.png").is_file() and (session.artifact_dir / "reference_returns.json").is_file()


def test_gymnasium_and_mujoco_are_pinned_to_what_runs_here():
    """Scores move when MuJoCo does: the package pins both, exactly, and a run logs them (above)."""
    pinned = dict(re.findall(r'"(gymnasium|mujoco)(?:\[mujoco\])?==([^"]+)"', (ROOT / "pyproject.toml").read_text()))
    assert pinned == {"gymnasium": gym.__version__, "mujoco": mujoco.__version__}


def test_final_scores_average_the_last_five_finite_evaluations():
    nan = math.nan
    history = [{"normalized_score": s, "return_mean": 10 * s} for s in (1, 2, 3, 4, 5, 6, nan, 8, nan)]
    assert offline_rl.final_scores(history) == (pytest.approx(5.2), pytest.approx(52.0), 5)  # 3, 4, 5, 6, 8
    assert offline_rl.final_scores(history[:2] + [history[6]]) == (1.5, 15.0, 2)  # fewer than five finite: all of them
    score, ret, count = offline_rl.final_scores([history[6], history[8]])
    assert math.isnan(score) and math.isnan(ret) and count == 0


def poisoned(from_update: int):
    """IQL whose actor's weights turn NaN at `from_update` (as a diverging run's do)."""
    class PoisonedIQL(iql_module.IQL):
        def update(self, batch, step):
            losses = super().update(batch, step)
            if step >= from_update:
                with torch.no_grad():
                    next(self.actor.parameters()).fill_(math.nan)
            return losses

    return PoisonedIQL


def test_nan_never_stops_a_run_and_its_final_score_skips_non_finite_evaluations(datasets):
    """The authors' rule (table_RL.py): the run trains on; NaN evaluations are reported, then skipped."""
    session = LocalSession(smoke=True)
    out = offline_rl.train(make("iql", task="hopper", updates=80, eval_every=10), session, poisoned(45))
    scores = [m["normalized_score"] for m in session.history]
    assert [m["updates"] for m in session.history] == list(range(10, 81, 10))  # every evaluation ran
    assert all(math.isfinite(s) for s in scores[:4]) and all(math.isnan(s) for s in scores[4:])
    assert out["final_normalized_score"] == pytest.approx(np.mean(scores[:4])) and out["final_evaluations"] == 4
    assert out["final_return"] == pytest.approx(np.mean([m["return_mean"] for m in session.history[:4]]))
    assert out["nonfinite_evaluations"] == 4


def test_a_run_without_one_finite_evaluation_ends_diverged_after_its_last_report(datasets):
    session = LocalSession(smoke=True)
    with pytest.raises(offline_rl.Diverged, match="no finite evaluation in 3"):
        offline_rl.train(make("iql", task="hopper", updates=30, eval_every=10), session, poisoned(1))
    assert len(session.history) == 3 and session.history[-1]["final_evaluations"] == 0


@pytest.mark.parametrize("name", ["iql", "td3bc"])
def test_compiled_networks_train_as_eager_ones_do(datasets, name):
    """compile: true compiles every MLP whole-graph (a graph break would raise), rationals inside; the
    losses and weights after 30 updates match eager within fp32 reordering (rtol 1e-3, atol 1e-5)."""
    values = {"task": "hopper", "activation": "rational", "updates": 30, "eval_every": 15}
    eager, compiled = LocalSession(smoke=True), LocalSession(smoke=True)
    registry.get_experiment(name).run(make(name, **values), eager)
    registry.get_experiment(name).run(make(name, **values, compile=True), compiled)
    losses = [k for k in eager.history[0] if k.endswith("_loss")]
    for e, c in zip(eager.history, compiled.history):
        assert [c[k] for k in losses] == pytest.approx([e[k] for k in losses], rel=1e-3, abs=1e-5)
    assert compiled.history[0]["compile_s"] > 0 and "compile_s" not in compiled.history[1]
    for key, tensor in eager.states[-1]["networks"].items():
        assert torch.allclose(tensor, compiled.states[-1]["networks"][key], rtol=1e-3, atol=1e-5), key


def test_a_missing_dataset_is_one_line_naming_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    with pytest.raises(DataError, match="mujoco/hopper/medium-v0, mujoco/hopper/expert-v0 not in .*get them with: ratsweep data minari"):
        registry.get_experiment("iql").run(make("iql", task="hopper"), LocalSession(smoke=True))
    proc = ratsweep(tmp_path, "run", "rl_iql_table3", "--smoke", env={"MINARI_DATASETS_PATH": str(tmp_path)}, check=False)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "ratsweep data minari" in proc.stderr, proc.stderr
    assert not (tmp_path / "mlruns.db").exists()  # nothing started


def test_a_sweep_checks_only_the_datasets_its_tasks_read(tmp_path, monkeypatch):
    write_minari(tmp_path, tasks=("hopper",), episodes=1, steps=5)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    hopper, = load_space("rl_iql_table3", overrides={"task": "hopper"})
    checks.check_data(hopper, "data")
    table, = load_space("rl_iql_table3")
    with pytest.raises(DataError, match="halfcheetah/medium-v0.*walker2d/expert-v0"):
        checks.check_data(table, "data")
    (tmp_path / "mujoco" / "hopper" / "expert-v0").rename(tmp_path / "elsewhere")
    d4rl, = load_space("rl_iql_table3", overrides={"task": "hopper", "score_reference": "d4rl"})
    checks.check_data(d4rl, "data")  # D4RL anchors need no expert dataset


SMOKE_SPACE = """\
name: rl_smoke
experiment: {experiment}
metric: {{name: final_normalized_score, mode: max}}
config: {{task: hopper}}
search_space:
  activation: {{grid: [relu, rational]}}
report: {{rows: [task], columns: activation, std: population, best: per_row, decimals: 2}}
"""


@pytest.mark.parametrize("name", ["iql", "td3bc"])
def test_smoke_sweep_lands_final_score_num_params_and_plots_in_mlflow(datasets, tmp_path, name):
    space = tmp_path / "space.yaml"
    space.write_text(SMOKE_SPACE.format(experiment=name))
    ratsweep(tmp_path, "run", str(space), "--smoke", env={"MINARI_DATASETS_PATH": str(datasets)})
    client = mlflow_client(tmp_path)
    runs, _ = trial_runs(client, "rl_smoke")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    for run in runs:
        assert math.isfinite(run.data.metrics["final_normalized_score"]) and int(run.data.params["num_params"]) > 100_000
        names = artifacts(client, run)
        assert "learning_curve.png" in names and "reference_returns.json" in names
        assert any(n.startswith("activation_layer") for n in names) == (run.data.params["activation"] == "rational")
    out = ratsweep(tmp_path, "report", "rl_smoke", "--include-smoke").stdout
    [row] = [line for line in out.splitlines() if line.startswith("| hopper |")]
    assert "mean ± std (population)" in out and row.count("**") == 2 and row.count("*") == 6, out  # best and second in the row


@pytest.mark.parametrize("name, experiment, table", [("rl_iql_table3", "iql", "table3"), ("rl_td3bc_table4", "td3bc", "table4")])
def test_table_spaces_pin_the_papers_settings_and_lay_out_its_table(name, experiment, table):
    [space] = load_space(name)
    assert space.experiment == experiment and space.metric == "final_normalized_score" and len(space.trials()) == 60
    config = space.build_config(space.trials()[0])
    assert (config.tf32, config.score_reference, config.updates, config.eval_every, config.eval_episodes) == (True, "measured", 300_000, 10_000, 20)
    assert space.search_space["activation"].values == ("gelu", "relu", "silu", "rational")  # the paper's column order
    assert 0 < space.resources["gpu"] <= 0.125  # eight or more trials share a GPU
    assert space.report["paper"] == table and space.report["std"] == "population"
    assert space.report["rows"] == ["task", "activation"] and list(space.report["also"]) == ["final_return", "elapsed_min"]
