"""Few-shot learners: the ConvNet under vmap, meta-gradients against finite differences, prototypes by hand,
REINFORCE inner steps, learning on synthetic glyphs, exact resume, refused settings."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

import envs  # noqa: F401  (registers metarl/BernoulliBandit-v0, a family that is no EpisodeSource)
from agents.fewshot import (
    ConvNet,
    FewShotMAML,
    FewShotMAMLConfig,
    ProtoNet,
    ProtoNetConfig,
    prototype_logits,
    prototypes,
    task_forward,
)
from envs.omniglot import synthetic_glyph_classes
from metarl.agent import MetaLearner
from metarl.fewshot import FewShotEpisodes

SIZE = 16  # 16x16 glyphs: 3 blocks take them to 2x2
CLASSES = synthetic_glyph_classes(30, 20, image_size=SIZE, drawers=6, seed=0)
GLYPHS = dict(classes=CLASSES, image_size=SIZE, num_ways=5, shots=1, queries=3)
NARROW = dict(width=16, blocks=3)


def maml(**overrides) -> FewShotMAML:
    return FewShotMAML(FewShotMAMLConfig(**{"env_kwargs": GLYPHS, "meta_batch_size": 4, **NARROW, **overrides}))


def protonet(**overrides) -> ProtoNet:
    return ProtoNet(ProtoNetConfig(**{"env_kwargs": GLYPHS, "meta_batch_size": 2, **NARROW, **overrides}))


def held_out(agent: FewShotMAML | ProtoNet, n: int = 8, seed: int = 123):
    return agent.family.task_space.sample(n, generator=torch.Generator().manual_seed(seed), split="test")


def copy_generator(generator: torch.Generator) -> torch.Generator:
    copy = torch.Generator()
    copy.set_state(generator.get_state())
    return copy


def net_params(agent: FewShotMAML | ProtoNet) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in agent.net.named_parameters()}


# --- the network ----------------------------------------------------------------------------


def test_learners_follow_the_meta_learner_protocol() -> None:
    assert isinstance(maml(), MetaLearner) and isinstance(protonet(), MetaLearner)


def test_convnet_shapes() -> None:
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(7, 1, 28, 28, generator=gen)
    head = ConvNet((1, 28, 28), width=8, blocks=4, num_outputs=5, generator=gen)
    embed = ConvNet((1, 28, 28), width=8, blocks=4, generator=gen)
    assert head(images).shape == (7, 5)
    assert embed.embedding_dim == 8 and embed(images).shape == (7, 8)  # 28 -> 14 -> 7 -> 3 -> 1
    assert ConvNet((1, 28, 28), generator=gen).embedding_dim == 64  # the paper's network: a 64-d embedding
    assert ConvNet((3, 20, 24), width=4, blocks=2, generator=gen).embedding_dim == 4 * 5 * 6
    assert list(head.buffers()) == []  # no running statistics anywhere
    with pytest.raises(ValueError, match="too small"):
        ConvNet((1, 8, 8), blocks=4, generator=gen)


def test_batch_norm_uses_batch_statistics() -> None:
    gen = torch.Generator().manual_seed(1)
    net = ConvNet((1, 8, 8), width=4, blocks=1, generator=gen)
    with torch.no_grad():
        net.blocks[0].norm.weight.uniform_(0.5, 1.5, generator=gen)
        net.blocks[0].norm.bias.uniform_(-0.5, 0.5, generator=gen)
    images = torch.randn(5, 1, 8, 8, generator=gen)
    block = net.blocks[0]
    z = block.conv(images)
    mean, var = z.mean((0, 2, 3), keepdim=True), z.var((0, 2, 3), unbiased=False, keepdim=True)
    weight, bias = block.norm.weight.view(1, -1, 1, 1), block.norm.bias.view(1, -1, 1, 1)
    normed = (z - mean) / torch.sqrt(var + block.norm.eps) * weight + bias
    expected = F.max_pool2d(F.relu(normed), 2).flatten(1)
    torch.testing.assert_close(net(images), expected)
    native = F.batch_norm(z, None, None, block.norm.weight, block.norm.bias, training=True, eps=block.norm.eps)
    torch.testing.assert_close(block.norm(z), native)  # what nn.BatchNorm2d(track_running_stats=False) computes
    net.eval()  # no running statistics: eval mode normalises with the batch too
    torch.testing.assert_close(net(images), expected)
    other = images.clone()
    other[1:] += 1.0
    assert not torch.allclose(net(other)[0], net(images)[0])  # image 0 unchanged, its batch changed


def test_vmap_path_equals_module_forward() -> None:
    gen = torch.Generator().manual_seed(2)
    net = ConvNet((1, SIZE, SIZE), width=6, blocks=3, num_outputs=4, generator=gen)
    images = torch.rand(3, 5, 1, SIZE, SIZE, generator=gen)
    shared = {k: v.detach() for k, v in net.named_parameters()}
    per_task = {k: v + 0.1 * torch.randn(3, *v.shape, generator=gen) for k, v in shared.items()}
    batched = task_forward(net, per_task, images, shared=False)
    assert batched.shape == (3, 5, 4)
    for i in range(3):
        copy_net = copy.deepcopy(net)
        copy_net.load_state_dict({k: v[i] for k, v in per_task.items()})
        torch.testing.assert_close(batched[i], copy_net(images[i]))
        torch.testing.assert_close(task_forward(net, shared, images, shared=True)[i], net(images[i]))
        torch.testing.assert_close(batched[i], functional_call(net, {k: v[i] for k, v in per_task.items()}, (images[i],)))


# --- MAML meta-gradients --------------------------------------------------------------------------


def float64_maml(**overrides) -> tuple[FewShotMAML, FewShotEpisodes]:
    """A tiny float64 MAML (8x8 images, 3 channels wide) and a random float64 episode of 2 tasks, 3-way 2-shot."""
    classes = synthetic_glyph_classes(6, 4, image_size=8, drawers=4, seed=1)
    kwargs = dict(classes=classes, image_size=8, num_ways=3, shots=2, queries=2)
    agent = FewShotMAML(FewShotMAMLConfig(env_kwargs=kwargs, width=3, blocks=2, meta_batch_size=2, inner_lr=0.5, **overrides))
    agent.net.double()
    gen = torch.Generator().manual_seed(5)
    labels = torch.arange(3).repeat(2).expand(2, 6)
    episodes = FewShotEpisodes(
        torch.randn(2, 6, 1, 8, 8, generator=gen, dtype=torch.float64),
        labels[:, torch.randperm(6, generator=gen)],
        torch.randn(2, 6, 1, 8, 8, generator=gen, dtype=torch.float64),
        labels[:, torch.randperm(6, generator=gen)],
        num_ways=3,
    )
    return agent, episodes


def meta_objective(agent: FewShotMAML, episodes: FewShotEpisodes):
    def objective(params: dict[str, torch.Tensor]) -> torch.Tensor:
        # Reward mode samples actions: the same seed each time, so every evaluation holds the same samples.
        return agent.meta_loss(params, episodes, torch.Generator().manual_seed(0))[0]

    return objective


@pytest.mark.parametrize("inner_steps", [1, 2])
@pytest.mark.parametrize("feedback", ["labels", "reward"])
def test_second_order_meta_gradient_matches_finite_differences(inner_steps: int, feedback: str, finite_difference) -> None:
    agent, episodes = float64_maml(inner_steps=inner_steps, feedback=feedback)
    objective = meta_objective(agent, episodes)
    params = dict(agent.net.named_parameters())
    grads = torch.autograd.grad(objective(params), list(params.values()))
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):
        direction = {k: torch.randn(v.shape, generator=gen, dtype=torch.float64) for k, v in params.items()}
        analytic = float(sum((g * direction[k]).sum() for g, k in zip(grads, params, strict=True)))
        assert analytic == pytest.approx(finite_difference(objective, params, direction), rel=1e-5, abs=1e-9)


def test_first_order_drops_second_order_terms() -> None:
    first, episodes = float64_maml(first_order=True)
    second, _ = float64_maml(first_order=False)
    params = dict(first.net.named_parameters())
    fo = torch.autograd.grad(meta_objective(first, episodes)(params), list(params.values()))
    # FOMAML: the adaptation's Jacobian is the identity, so the meta-gradient is the
    # sum over tasks of the query-loss gradient at each task's adapted parameters.
    adapted, _ = first.adapt(params, episodes, 1, torch.Generator(), first_order=True)
    adapted = {k: v.detach().requires_grad_() for k, v in adapted.items()}
    loss = first.query_loss(task_forward(first.net, adapted, episodes.query_images, shared=False), episodes.query_labels)
    at_adapted = torch.autograd.grad(loss, list(adapted.values()))
    for g, a in zip(fo, at_adapted, strict=True):
        torch.testing.assert_close(g, a.sum(0))
    so_params = dict(second.net.named_parameters())
    so = torch.autograd.grad(meta_objective(second, episodes)(so_params), list(so_params.values()))
    difference = sum(float((a - b).norm()) for a, b in zip(fo, so, strict=True))
    assert difference > 1e-3 * sum(float(b.norm()) for b in so)  # the second-order terms matter here


# --- reward feedback --------------------------------------------------------------------------


def test_reward_inner_gradient_is_the_reinforce_estimator() -> None:
    agent = maml(feedback="reward", meta_batch_size=3)
    with torch.no_grad():  # a zero head: the policy is uniform, pi(a|x) = 1/N for every image
        agent.net.head.weight.zero_()
        agent.net.head.bias.zero_()
    tasks = agent.family.task_space.sample(3, generator=torch.Generator().manual_seed(0), split="train")
    episodes = agent.family.episodes(tasks, torch.Generator().manual_seed(1))
    params = net_params(agent)
    actions, rewards, advantages = agent.bandit_feedback(params, True, episodes, torch.Generator().manual_seed(2))
    torch.testing.assert_close(rewards, (actions == episodes.support_labels).float())
    torch.testing.assert_close(advantages, rewards - rewards.mean(1, keepdim=True))  # per-task mean-reward baseline
    grads, sampled = agent.inner_gradients(params, True, episodes, torch.Generator().manual_seed(2))
    torch.testing.assert_close(sampled, rewards)  # same generator state, same actions
    # -(1/S) sum_s (r_s - b) grad log pi(a_s|x_s), with grad_logits log pi(a|x) = onehot(a) - 1/N,
    # and grad_W = grad_logits x features; for the bias the 1/N part cancels (a task's advantages sum to zero).
    score = F.one_hot(actions, 5).float() - 1 / 5
    weighted = advantages.unsqueeze(-1) * score  # (M, S, N)
    features = torch.stack([agent.net.embed(episodes.support_images[i]) for i in range(3)]).detach()
    num_support = actions.shape[1]
    torch.testing.assert_close(grads["head.bias"], -weighted.sum(1) / num_support)
    torch.testing.assert_close(grads["head.bias"], -(advantages.unsqueeze(-1) * F.one_hot(actions, 5)).sum(1) / num_support)
    torch.testing.assert_close(grads["head.weight"], -weighted.transpose(1, 2) @ features / num_support)
    for name, g in grads.items():  # a zero head passes no gradient into the conv blocks
        if not name.startswith("head."):
            assert bool((g == 0).all()), name


def test_reward_mode_meta_trains_and_evaluates() -> None:
    agent = maml(feedback="reward")
    for _ in range(2):
        stats = agent.meta_train_step()
    assert {"loss", "query_accuracy", "query_expected_reward", "support_reward", "seconds"} <= stats.keys()
    assert all(math.isfinite(v) for v in stats.values())
    assert stats["loss"] == pytest.approx(-stats["query_expected_reward"])
    curve = agent.adaptation_curve(held_out(agent), 2, torch.Generator().manual_seed(0))
    assert curve.shape == (3, 8) and bool(((curve >= 0) & (curve <= 1)).all())


# --- prototypical networks ---------------------------------------------------------------------


def test_prototypes_and_logits_by_hand() -> None:
    support = torch.tensor([[[0.0, 2.0], [0.0, 0.0], [0.0, 4.0], [2.0, 0.0]]])  # labels 1, 0, 1, 0
    labels = torch.tensor([[1, 0, 1, 0]])
    protos = prototypes(support, labels, 2)
    torch.testing.assert_close(protos, torch.tensor([[[1.0, 0.0], [0.0, 3.0]]]))
    query = torch.tensor([[[1.0, 1.0], [0.0, 3.0]]])
    # -|q - p|^2: (1,1) is 1 from (1,0) and 1 + 4 from (0,3); (0,3) is 1 + 9 and 0.
    torch.testing.assert_close(prototype_logits(query, protos), torch.tensor([[[-1.0, -5.0], [-10.0, 0.0]]]))


def test_protonet_logits_are_distances_to_mean_support_embeddings() -> None:
    agent = protonet()
    tasks = agent.family.task_space.sample(2, generator=torch.Generator().manual_seed(0), split="train")
    episodes = agent.family.episodes(tasks, torch.Generator().manual_seed(1))
    logits = agent.logits(dict(agent.net.named_parameters()), episodes)
    assert logits.shape == (2, 15, 5)
    for i in range(2):  # support and query embedded in one batch (batch-norm statistics of the whole episode)
        both = agent.net(torch.cat([episodes.support_images[i], episodes.query_images[i]]))
        support, query = both[:5], both[5:]
        protos = torch.stack([support[episodes.support_labels[i] == c].mean(0) for c in range(5)])
        torch.testing.assert_close(logits[i], -torch.cdist(query, protos).square(), rtol=1e-4, atol=1e-4)


def test_protonet_trains_with_more_ways_than_it_tests() -> None:
    agent = protonet(train_ways=10)
    assert agent.train_family.num_ways == 10 and agent.family.num_ways == 5
    agent.meta_train_step()
    assert agent.query_accuracy(held_out(agent), torch.Generator().manual_seed(0)).shape == (8,)


def test_protonet_learning_rate_halves_on_schedule_and_resumes_with_it() -> None:
    agent = protonet(lr=0.01, lr_halving_updates=2)
    rates = [agent.meta_train_step()["lr"] for _ in range(5)]
    assert rates == pytest.approx([0.01, 0.01, 0.005, 0.005, 0.0025])
    assert agent.optimizer.param_groups[0]["lr"] == pytest.approx(0.0025)  # the step just taken used it
    resumed = protonet(lr=0.01, lr_halving_updates=2)
    resumed.load_state_dict(agent.state_dict())
    assert resumed.meta_train_step()["lr"] == agent.meta_train_step()["lr"] == pytest.approx(0.0025)
    assert protonet(lr=0.01).meta_train_step()["lr"] == 0.01  # no schedule: constant


# --- evaluation and classify -----------------------------------------------------------------


def test_adaptation_curves_and_query_accuracy_agree() -> None:
    agent = maml()
    tasks = held_out(agent)
    before = {k: v.get_state() for k, v in (("t", agent.task_generator), ("e", agent.episode_generator))}
    curve = agent.adaptation_curve(tasks, 3, torch.Generator().manual_seed(4))
    assert curve.shape == (4, 8)
    assert not torch.equal(curve[0], curve[3])  # the inner steps run (torch.func.grad under evaluation's no_grad)
    torch.testing.assert_close(agent.query_accuracy(tasks, torch.Generator().manual_seed(4), num_steps=3), curve[3])
    torch.testing.assert_close(agent.query_accuracy(tasks, torch.Generator().manual_seed(4)), curve[1])  # default: inner_steps
    chunked = maml(eval_batch_size=3)
    torch.testing.assert_close(chunked.adaptation_curve(tasks, 3, torch.Generator().manual_seed(4)), curve)
    assert before["t"].equal(agent.task_generator.get_state()) and before["e"].equal(agent.episode_generator.get_state())

    proto = protonet()
    flat = proto.adaptation_curve(tasks, 2, torch.Generator().manual_seed(4))
    assert flat.shape == (3, 8) and bool((flat == flat[0]).all())  # no gradient steps: the same accuracy at every index
    torch.testing.assert_close(proto.query_accuracy(tasks, torch.Generator().manual_seed(4)), flat[0])
    torch.testing.assert_close(protonet(eval_batch_size=3).adaptation_curve(tasks, 2, torch.Generator().manual_seed(4)), flat)


def test_classify_one_task() -> None:
    gen = torch.Generator().manual_seed(0)
    classes = synthetic_glyph_classes(30, 20, image_size=SIZE, drawers=2, seed=3)[1].images  # 20 held-out glyphs, 2 drawers
    support, query = classes[:, 0].unsqueeze(1), classes[:, 1].unsqueeze(1)  # Lake-style: 20-way one-shot
    labels = torch.arange(20)
    proto = protonet()
    predicted = proto.classify(support, labels, query)
    assert predicted.shape == (20,) and predicted.dtype == torch.long
    episode = FewShotEpisodes(support[None], labels[None], query[None], labels[None], 20)
    torch.testing.assert_close(predicted, proto.logits(net_params(proto), episode)[0].argmax(-1))
    gapped = proto.classify(support[:3], torch.tensor([0, 2, 0]), query)  # label 1 has no support image
    assert set(gapped.tolist()) <= {0, 2}
    agent = maml()  # a 5-way head: 20-way runs need a model trained with num_ways=20
    with pytest.raises(ValueError, match="num_ways >= 20"):
        agent.classify(support, labels, query)
    three_way = agent.classify(support[:3], torch.tensor([2, 0, 1]), query[torch.randperm(20, generator=gen)])
    assert three_way.shape == (20,) and set(three_way.tolist()) <= {0, 1, 2}  # only the support's labels
    reward = maml(feedback="reward")
    first = reward.classify(support[:5], torch.arange(5), query[:5])
    torch.testing.assert_close(first, reward.classify(support[:5], torch.arange(5), query[:5]))  # seeded: deterministic
    with pytest.raises(ValueError, match="support_images"):
        proto.classify(support[:, :, :8], labels, query)


# --- learning ------------------------------------------------------------------------------


def test_learners_beat_chance_on_held_out_glyphs() -> None:
    """5-way 1-shot on held-out synthetic glyphs (chance 0.2), after a few seconds of meta-training."""
    torch.manual_seed(0)  # nothing should read the global RNG; this makes sure a stray use cannot make the test flaky
    tasks_seed, eval_seed = 123, 7

    def accuracy(agent: FewShotMAML | ProtoNet) -> float:
        return float(agent.query_accuracy(held_out(agent, 40, tasks_seed), torch.Generator().manual_seed(eval_seed)).mean())

    proto = protonet(meta_batch_size=4, lr=3e-3)
    untrained = accuracy(proto)
    for _ in range(60):
        proto.meta_train_step()
    assert accuracy(proto) > max(0.6, untrained + 0.1)

    agent = maml(meta_batch_size=8, outer_lr=3e-3)
    untrained = accuracy(agent)
    for _ in range(150):
        stats = agent.meta_train_step()
    assert stats["query_accuracy"] > 0.4
    assert accuracy(agent) > max(0.45, untrained + 0.1)


# --- state ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make", [protonet, maml, lambda **kw: maml(feedback="reward", **kw)], ids=["protonet", "maml", "maml-reward"]
)
def test_resume_continues_bit_identically(make) -> None:
    straight = make()
    for _ in range(2):
        straight.meta_train_step()
    saved = copy.deepcopy(straight.state_dict())
    for _ in range(2):
        straight.meta_train_step()
    resumed = make(seed=1)  # different initial weights and generators: everything must come from the state
    resumed.load_state_dict(saved)
    for _ in range(2):
        resumed.meta_train_step()
    assert resumed.iteration == straight.iteration == 4
    for (name, a), b in zip(straight.net.state_dict().items(), resumed.net.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    for a, b in zip(straight.optimizer.state.values(), resumed.optimizer.state.values(), strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)


# --- refused settings -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ProtoNetConfig(lr=0.0), "lr must be a positive finite number, got 0.0"),
        (lambda: ProtoNetConfig(lr=-1e-3), "lr must be a positive finite number, got -0.001"),
        (lambda: FewShotMAMLConfig(outer_lr=0), "outer_lr must be a positive finite number, got 0"),
        (lambda: FewShotMAMLConfig(inner_lr=float("nan")), "inner_lr must be a positive finite number, got nan"),
        (lambda: ProtoNetConfig(train_ways=0), "train_ways must be a positive int, got 0"),
        (lambda: ProtoNetConfig(lr_halving_updates=0), "lr_halving_updates must be a positive int, got 0"),
        (lambda: FewShotMAMLConfig(env_kwargs={"num_ways": 0}), r"env_kwargs\['num_ways'\] must be a positive int, got 0"),
        (lambda: FewShotMAMLConfig(inner_steps=-1), "inner_steps must be a non-negative int, got -1"),
        (lambda: FewShotMAMLConfig(feedback="rewards"), "feedback must be 'labels' or 'reward', got 'rewards'"),
        (lambda: FewShotMAMLConfig(meta_batch_size=0), "meta_batch_size must be a positive int, got 0"),
        (lambda: ProtoNetConfig(width=0), "width must be a positive int, got 0"),
        (lambda: FewShotMAMLConfig(env_kwargs=[("num_ways", 5)]), "env_kwargs must be a dict"),
        (lambda: FewShotMAMLConfig(outer="fomaml"), "outer must be 'maml' or 'reptile', got 'fomaml'"),
        (lambda: FewShotMAMLConfig(meta_lr=0.0), r"meta_lr \(Reptile's step size ε\) must lie in \(0, 1\], got 0.0"),
        (lambda: FewShotMAMLConfig(meta_lr_final=1.5), "meta_lr_final"),
    ],
)
def test_bad_settings_are_refused(make, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("agent", [ProtoNet, FewShotMAML])
def test_family_without_episodes_is_refused(agent) -> None:
    config = ProtoNetConfig if agent is ProtoNet else FewShotMAMLConfig
    with pytest.raises(TypeError, match="BernoulliBandit-v0 .* is not a few-shot classification family"):
        agent(config(env_id="metarl/BernoulliBandit-v0"))


def test_one_way_family_and_negative_steps_are_refused() -> None:
    with pytest.raises(ValueError, match="num_ways"):
        maml(env_kwargs={**GLYPHS, "num_ways": 1})  # the family's own floor: at least 2 ways
    agent = maml()
    with pytest.raises(ValueError, match="num_steps must be a non-negative int, got -1"):
        agent.adaptation_curve(held_out(agent), -1, torch.Generator())


# --- Reptile as the outer loop ------------------------------------------------------------------


def test_reptile_outer_loop_moves_theta_by_epsilon_toward_the_mean_adapted_network() -> None:
    """θ ← θ + ε (mean θ̃ − θ), θ̃ = first-order inner steps on each task's whole episode (support and query)."""
    agent = maml(outer="reptile", inner_steps=2, inner_lr=0.1, meta_lr=0.5, meta_lr_final=0.5)
    theta = net_params(agent)
    generators = [copy_generator(g) for g in (agent.task_generator, agent.episode_generator)]
    tasks = agent.family.task_space.sample(agent.config.meta_batch_size, generator=generators[0], split="train")
    episodes = agent.family.episodes(tasks, generators[1])
    whole = dataclasses.replace(
        episodes,
        support_images=torch.cat([episodes.support_images, episodes.query_images], 1),
        support_labels=torch.cat([episodes.support_labels, episodes.query_labels], 1),
    )
    adapted, _ = agent.adapt(theta, whole, 2, torch.Generator(), first_order=True)
    stats = agent.meta_train_step()
    assert stats["meta_step_size"] == 0.5
    for name, value in agent.net.named_parameters():
        expected = theta[name] + 0.5 * (adapted[name].mean(0) - theta[name])
        torch.testing.assert_close(value.detach(), expected, rtol=1e-5, atol=1e-6)
        assert not torch.equal(value.detach(), theta[name])


@pytest.mark.slow
def test_reptile_outer_loop_learns_held_out_glyphs() -> None:
    agent = maml(outer="reptile", meta_batch_size=8, inner_steps=3, inner_lr=0.1, anneal_iterations=100)
    tasks = held_out(agent, 40, 123)

    def accuracy() -> float:
        return float(agent.query_accuracy(tasks, torch.Generator().manual_seed(7)).mean())

    untrained = accuracy()  # already adapted with 3 steps from the random init
    for _ in range(100):
        agent.meta_train_step()
    assert accuracy() > untrained + 0.1
