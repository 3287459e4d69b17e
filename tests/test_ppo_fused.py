"""
TrustPPO's fused kernels (sb3_trust/ppo/fused.py, fused_kernels.c): each against its torch counterpart on the same
data (the closed-form path, itself checked against autograd in test_ppo_analytic.py; torch's clip_grad_norm_ and Adam),
the fallback without a compiler, and that the default MlpPolicy really trains through them (so that the parity tests
against SB3 PPO cover this path).
"""

import warnings

import numpy as np
import pytest
import torch as th
from torch.nn import functional as F

import sb3_trust.common.kernels as kernels_module
import sb3_trust.ppo.fused as fused_module
from sb3_trust import TrustPPO
from sb3_trust.common.fast_rollout import FlatRollout
from sb3_trust.ppo.analytic import analytic_ppo
from sb3_trust.ppo.fused import FusedAdam, FusedPPO, HeadSettings, load_kernels


@pytest.fixture
def kernels():
    library = load_kernels()
    assert library is not None, fused_module.kernels_unavailable_reason()
    return library


@pytest.fixture
def fresh_loader(monkeypatch):
    """Forget the loaded kernels (restored afterwards), so that load_kernels() runs again."""
    monkeypatch.setattr(fused_module, "_kernels", None)
    monkeypatch.setattr(fused_module, "_kernels_error", None)
    monkeypatch.setattr(kernels_module, "_warned", set())


VARIANTS = {
    "clip": dict(policy_loss="clip"),
    "clip-ent-vf-clip": dict(policy_loss="clip", ent_coef=0.05, clip_range_vf=0.05),
    "clip-vf-max-no-adv-norm": dict(policy_loss="clip", clip_range_vf=0.05, vf_clip_mode="max", normalize_advantage=False),
    "unclipped": dict(policy_loss="unclipped", ent_coef=0.01),
    "kl-penalty": dict(policy_loss="kl_penalty", kl_coef=0.7, ent_coef=0.01),
}


def _perturb(model: TrustPPO, scale: float = 0.3) -> None:
    generator = th.Generator().manual_seed(1)
    with th.no_grad():
        for param in model.policy.parameters():
            param.add_(scale * th.randn(param.shape, generator=generator))


def _reference_rows(params: tuple[th.Tensor, th.Tensor], is_categorical: bool) -> tuple[th.Tensor, th.Tensor]:
    """A different distribution on the same rows: π_ref's parameters in the lean path's form."""
    generator = th.Generator().manual_seed(2)
    first = params[0] + 0.5 * th.randn(params[0].shape, generator=generator)
    if is_categorical:
        logits = F.log_softmax(first, dim=-1)
        return logits, logits.exp()
    return first, params[1] * th.exp(0.3 * th.randn(params[1].shape, generator=generator))


@pytest.mark.parametrize("with_reference", [False, True], ids=["", "reference-kl"])
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_minibatch_terms_match_closed_form_path(kernels, env_id, variant, with_reference):
    settings = VARIANTS[variant]
    model = TrustPPO("MlpPolicy", env_id, n_steps=64, batch_size=48, seed=0, device="cpu", **settings)
    model.learn(64)  # one rollout in the buffer
    fast = model._fast_path()
    rollout = FlatRollout(model.rollout_buffer, model.device)
    old = model._distribution_params(fast, rollout)
    _perturb(model)  # π ≠ π_old: the ratio, the clipping and the KL terms are not trivial
    parameters = list(model.policy.parameters())
    analytic = analytic_ppo(fast, parameters)
    fused = FusedPPO(kernels, analytic, parameters)
    assert fused.begin(model.policy.optimizer, rollout, 48)
    np.random.seed(5)
    batch = next(rollout.minibatches(48))
    np.random.seed(5)
    rows = next(fused.minibatches(rollout, 48))
    assert th.equal(rows.indices, batch.indices)  # the same draws: the same minibatch
    old_rows = (old[0][batch.indices], old[1][batch.indices]) if settings["policy_loss"] == "kl_penalty" else None
    reference = _reference_rows(fast.distribution_params(fast.latent(batch.observations)[0]), fast.is_categorical)
    reference_rows = reference if with_reference else None
    common = dict(
        clip_range_vf=settings.get("clip_range_vf"),
        vf_clip_mode=settings.get("vf_clip_mode", "sb3"),
        ent_coef=settings.get("ent_coef", 0.0),
        vf_coef=0.5,
        normalize_advantage=settings.get("normalize_advantage", True),
    )
    expected = analytic.terms(
        batch, settings["policy_loss"], 0.2, 0.7, old_rows, **common, reference=reference_rows, reference_coef=0.4
    )
    clip_range = 0.2 if settings["policy_loss"] == "clip" else None
    settings = HeadSettings(clip_range, **common, kl_coef=0.7, reference_coef=0.4)
    got = fused.terms(rows, settings, old=old_rows, reference=reference_rows)
    for name in ("loss", "policy_loss", "value_loss", "entropy_loss", "value_clip_fraction", "ratio", "log_ratio"):
        th.testing.assert_close(getattr(got, name), getattr(expected, name), rtol=2e-5, atol=1e-6, msg=name)
    assert expected.grads is not None and got.grads is not None
    for position, (ours, theirs) in enumerate(zip(got.grads, expected.grads, strict=True)):
        th.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6, msg=f"gradient {position}")
    # not vacuous: some samples are clipped (clip variants), the penalties contribute
    if clip_range is not None:
        assert ((got.ratio - 1).abs() > 0.2).any()
    if old_rows is not None or with_reference:
        assert float(got.loss) != pytest.approx(float(got.value_loss) * 0.5 + float(got.entropy_loss) * common["ent_coef"])


def test_minibatches_are_the_rollouts_minibatches(kernels):
    """A whole epoch, uneven last minibatch: the same rows as FlatRollout's, though gathered into one reused buffer."""
    model = TrustPPO("MlpPolicy", "Pendulum-v1", n_steps=100, batch_size=48, seed=0, device="cpu")
    model.learn(100)
    rollout = FlatRollout(model.rollout_buffer, model.device)
    parameters = list(model.policy.parameters())
    fused = FusedPPO(kernels, analytic_ppo(model._fast_path(), parameters), parameters)
    assert fused.begin(model.policy.optimizer, rollout, 48)
    np.random.seed(3)
    expected = list(rollout.minibatches(48))  # (its minibatches are slices of a fresh tensor)
    np.random.seed(3)
    sizes = []
    for batch, rows in zip(expected, fused.minibatches(rollout, 48), strict=True):
        fields = (batch.observations, batch.actions, batch.old_values, batch.old_log_prob, batch.advantages, batch.returns)
        assert th.equal(rows.indices, batch.indices)
        assert th.equal(rows.rows, th.cat([field.reshape(len(batch.indices), -1) for field in fields], dim=1))
        sizes.append(len(rows.indices))
    assert sizes == [48, 48, 4]


def _adam_problem(n_tensors: int = 3):
    generator = th.Generator().manual_seed(0)
    shapes = [(7, 5), (5,), (3, 7)][:n_tensors]
    params = [th.randn(shape, generator=generator) for shape in shapes]
    grads = [[th.randn(shape, generator=generator) for shape in shapes] for _ in range(4)]
    return params, grads


@pytest.mark.parametrize(
    "options",
    [dict(eps=1e-5), dict(eps=1e-8, weight_decay=0.1), dict(eps=1e-5, maximize=True), dict(eps=1e-5, betas=(0.5, 0.9))],
)
@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clip_adam_step_matches_torch(kernels, options, max_norm):
    """clip_grad_norm_ then th.optim.Adam.step(), four steps (the first creates the optimizer's state)."""
    params, grads = _adam_problem()
    reference = [param.clone().requires_grad_() for param in params]
    ours = [param.clone().requires_grad_() for param in params]
    reference_optimizer = th.optim.Adam(reference, lr=0.01, foreach=False, **options)
    our_optimizer = th.optim.Adam(ours, lr=0.01, **options)
    adam = FusedAdam(kernels, ours)
    for step, step_grads in enumerate(grads):
        for param, grad in zip(reference, step_grads, strict=True):
            param.grad = grad.clone()
        expected_norm = th.nn.utils.clip_grad_norm_(reference, max_norm)
        reference_optimizer.step()
        if step == 0:  # the optimizer's state does not exist yet: the caller steps through torch once
            assert not adam.bind(our_optimizer)
            for param, grad in zip(ours, step_grads, strict=True):
                param.grad = grad.clone()
            th.nn.utils.clip_grad_norm_(ours, max_norm)
            our_optimizer.step()
            continue
        assert adam.bind(our_optimizer)
        flat = th.cat([grad.flatten() for grad in step_grads])
        assert adam.step(flat, th.tensor(1.5), max_norm)
        th.testing.assert_close(adam.norm, expected_norm, rtol=1e-6, atol=0)
    for param, expected in zip(ours, reference, strict=True):
        th.testing.assert_close(param, expected, rtol=1e-6, atol=1e-7)
    for param, expected in zip(ours, reference, strict=True):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            th.testing.assert_close(our_optimizer.state[param][key], reference_optimizer.state[expected][key])


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_clip_adam_step_changes_nothing_when_not_finite(kernels, bad, where):
    params, grads = _adam_problem()
    ours = [param.clone().requires_grad_() for param in params]
    optimizer = th.optim.Adam(ours, lr=0.01)
    for param, grad in zip(ours, grads[0], strict=True):
        param.grad = grad.clone()
    optimizer.step()  # creates the state
    adam = FusedAdam(kernels, ours)
    assert adam.bind(optimizer)
    before = [param.detach().clone() for param in ours]
    state_before = {key: [optimizer.state[param][key].clone() for param in ours] for key in ("exp_avg", "exp_avg_sq", "step")}
    flat = th.cat([grad.flatten() for grad in grads[1]])
    if where == "gradient":
        flat[3] = bad
    assert not adam.step(flat, th.tensor(bad if where == "loss" else 1.0), 0.5)
    assert not th.isfinite(adam.norm + (bad if where == "loss" else 0.0))
    for param, value in zip(ours, before, strict=True):
        assert th.equal(param.detach(), value)
    for key, values in state_before.items():
        for param, value in zip(ours, values, strict=True):
            assert th.equal(optimizer.state[param][key], value)


def test_bind_refuses_what_it_does_not_implement(kernels):
    params, _ = _adam_problem()
    for optimizer in [
        th.optim.Adam(params, lr=0.01, amsgrad=True),
        th.optim.AdamW(params, lr=0.01),
        th.optim.SGD(params, lr=0.01),
        th.optim.Adam([{"params": params[:1]}, {"params": params[1:]}], lr=0.01),
    ]:
        for param in params:
            param.grad = th.ones_like(param)
        optimizer.step()
        assert not FusedAdam(kernels, params).bind(optimizer), type(optimizer).__name__


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_activation_backward(kernels, activation):
    generator = th.Generator().manual_seed(0)
    pre = th.randn(37, 11, generator=generator)
    pre[0, :3] = 0.0  # ReLU at its kink: no gradient, as torch
    y = th.tanh(pre) if activation == "tanh" else th.relu(pre)
    grad = th.randn(37, 11, generator=generator)
    if activation == "tanh":
        expected = th.ops.aten.tanh_backward(grad, y)
    else:
        expected = th.ops.aten.threshold_backward(grad, y, 0)
    ours = grad.clone()
    kernels.activation_backward(ours.data_ptr(), y.data_ptr(), ours.numel(), activation == "relu")
    th.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_default_policy_trains_through_the_fused_kernels(env_id):
    model = TrustPPO("MlpPolicy", env_id, n_steps=64, batch_size=32, n_epochs=2, seed=0, device="cpu").learn(128)
    assert model._fused_update is not None and model._fused_update.adam_bound


def test_falls_back_with_one_warning_without_a_compiler(fresh_loader, monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.delenv("SB3_TRUST_NO_KERNELS", raising=False)
    with pytest.warns(UserWarning, match="fused PPO kernels unavailable") as record:
        first = TrustPPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32, n_epochs=2, seed=0).learn(128)
        TrustPPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32, n_epochs=2, seed=0).learn(128)
    assert sum("fused PPO kernels" in str(warning.message) for warning in record) == 1
    assert first._fused_update is None  # the closed-form torch path trained it
    assert all(th.isfinite(param).all() for param in first.policy.parameters())


def test_no_kernels_switch_is_silent(fresh_loader, monkeypatch):
    monkeypatch.setenv("SB3_TRUST_NO_KERNELS", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = TrustPPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32, n_epochs=2, seed=0).learn(128)
    assert model._fused_update is None


def test_compiles_into_the_cache_directory(fresh_loader, monkeypatch, tmp_path):
    monkeypatch.setenv("SB3_TRUST_CACHE", str(tmp_path))
    monkeypatch.delenv("SB3_TRUST_NO_KERNELS", raising=False)
    monkeypatch.delenv("CC", raising=False)
    library = load_kernels()
    assert library is not None, fused_module.kernels_unavailable_reason()
    compiled = list(tmp_path.glob("fused_kernels-*.so"))
    assert len(compiled) == 1
    # a second process (here: a second load) finds it and does not compile again
    mtime = compiled[0].stat().st_mtime_ns
    monkeypatch.setattr(fused_module, "_kernels", None)
    assert load_kernels() is not None
    assert compiled[0].stat().st_mtime_ns == mtime
    assert np.isfinite(mtime)


def test_numpy_blas_only_where_it_runs_on_one_thread(monkeypatch):
    """Products go to NumPy only up to its single-thread size, or up to NUMPY_PRODUCT_WORK when BLAS is pinned to one
    thread (torch's thread setting is kept); larger ones always to th.mm."""
    from sb3_trust.common.fused_policy import NumpyFusedActorCritic
    from sb3_trust.ppo.fused import NUMPY_PRODUCT_WORK, numpy_product_limit

    assert NumpyFusedActorCritic.MAX_NUMPY_WORK < NUMPY_PRODUCT_WORK
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert numpy_product_limit() == NumpyFusedActorCritic.MAX_NUMPY_WORK
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert numpy_product_limit() == NUMPY_PRODUCT_WORK
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")  # OpenBLAS's own setting wins over OMP's
    assert numpy_product_limit() == NumpyFusedActorCritic.MAX_NUMPY_WORK
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    assert numpy_product_limit() == NUMPY_PRODUCT_WORK


def test_chain_products_into_the_workspace():
    """The gradients are the chain's (``chain_vjp``), whether the products go to NumPy or to th.mm; the forward pass
    into the workspace is ``chain_forward``'s."""
    from sb3_trust.common.fast_fisher import chain_forward, chain_vjp
    from sb3_trust.ppo.fused import Workspace, chain_forward_into, chain_vjp_into, load_kernels

    kernels = load_kernels()
    if kernels is None:
        pytest.skip("no C compiler")
    th.manual_seed(0)
    chain = [(th.randn(32, 5), th.randn(32)), "relu", (th.randn(16, 32), th.randn(16)), "tanh", (th.randn(3, 16), None)]
    cache: list[th.Tensor] = []
    x = th.randn(40, 5)
    out = chain_forward(chain, x, cache)
    grad = th.randn_like(out)
    expected = chain_vjp(chain, cache, grad)
    work = Workspace()
    for limit in (0, 1 << 30):
        got = [th.empty_like(g) for g in expected]
        chain_vjp_into(kernels, chain, cache, grad.clone(), got, limit, work, "chain")
        for a, b in zip(got, expected, strict=True):
            th.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # chain_forward_into: the same output and cache as chain_forward (the same operations), into the workspace
    for numpy_tanh in (False, True):
        cache_into: list[th.Tensor] = []
        got_out = chain_forward_into(chain, x, cache_into, numpy_tanh, work, "chain")
        th.testing.assert_close(got_out, chain_forward(chain, x, None, numpy_tanh), rtol=0, atol=0)
        assert len(cache_into) == len(cache) and cache_into[0] is x
        for a, b in zip(cache_into, cache, strict=True):
            th.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


# ReLU networks train through whole epochs in one C call (FusedPPO.epoch); Tanh ones keep the per-minibatch path
# Products by NumPy's BLAS (the actor's, some of which differ from th.mm's in the last bits) and by th.mm (the critic's)
RELU_NET = dict(activation_fn=th.nn.ReLU, net_arch=dict(pi=[4, 64], vf=[256, 256]))
EPOCH_CASES = {
    "gaussian-clip": ("Pendulum-v1", dict()),
    "gaussian-uneven-kl-penalty": ("Pendulum-v1", dict(batch_size=100, policy_loss="kl_penalty")),
    "gaussian-vf-max-ent-no-adv-norm": (
        "Pendulum-v1",
        dict(clip_range_vf=0.2, vf_clip_mode="max", ent_coef=0.01, normalize_advantage=False, n_steps=200, batch_size=50),
    ),
    "gaussian-reference-kl": ("Pendulum-v1", dict(reference_kl_mode="loss", reference_kl_coef=0.3)),
    "categorical-unclipped-ent": ("CartPole-v1", dict(policy_loss="unclipped", ent_coef=0.01, batch_size=96)),
    "categorical-reference-kl-weight-decay": (
        "CartPole-v1",
        dict(reference_kl_mode="loss", policy_kwargs=dict(**RELU_NET, optimizer_kwargs=dict(weight_decay=1e-3))),
    ),
}


def _relu_model(env_id: str, settings: dict) -> TrustPPO:
    settings = dict(settings)
    if "reference_kl_mode" in settings:
        reference = TrustPPO("MlpPolicy", env_id, seed=9, device="cpu")
        _perturb(reference, 0.5)
        settings["reference_policy"] = reference.policy
    kwargs = dict(n_steps=256, batch_size=64, n_epochs=3, seed=3, device="cpu", policy_kwargs=RELU_NET)
    return TrustPPO("MlpPolicy", env_id, **{**kwargs, **settings})


def _count_epoch_calls(monkeypatch) -> list[int]:
    """:return: a list that ``FusedPPO.epoch`` appends 1 to at every call (for the rest of the test)"""
    calls: list[int] = []
    epoch = FusedPPO.epoch
    monkeypatch.setattr(FusedPPO, "epoch", lambda self, *args: calls.append(1) or epoch(self, *args))
    return calls


@pytest.mark.parametrize("case", list(EPOCH_CASES))
def test_epochs_in_one_call_are_the_minibatch_path_bit_for_bit(case, monkeypatch):
    """Oracle: the per-minibatch fused path (itself held to the closed-form path above and to SB3 PPO by the parity
    tests), on the same seed: the same permutations, products, losses and Adam steps, so identical parameters, optimizer
    state and logs after four updates."""
    env_id, settings = EPOCH_CASES[case]
    calls = _count_epoch_calls(monkeypatch)
    ours = _relu_model(env_id, settings).learn(1024)
    n_epochs = ours._n_updates  # SB3 counts epochs
    assert (
        n_epochs >= 12 and len(calls) == n_epochs - 1
    )  # every epoch but the first: the optimizer's state is made by the first step
    monkeypatch.setattr(FusedPPO, "plan_epochs", lambda self, *args, **kwargs: False)
    theirs = _relu_model(env_id, settings).learn(1024)
    assert len(calls) == n_epochs - 1
    for a, b in zip(ours.policy.parameters(), theirs.policy.parameters(), strict=True):
        assert th.equal(a, b)
    ours_state, theirs_state = ours.policy.optimizer.state_dict()["state"], theirs.policy.optimizer.state_dict()["state"]
    for key, state in theirs_state.items():
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert th.equal(ours_state[key][name], state[name])
    logged, expected = ours.logger.name_to_value, theirs.logger.name_to_value
    assert {key: value for key, value in logged.items() if not key.startswith("time/")} == {
        key: value for key, value in expected.items() if not key.startswith("time/")
    }


def test_tanh_networks_and_target_kl_keep_the_minibatch_path(monkeypatch):
    calls = _count_epoch_calls(monkeypatch)
    TrustPPO("MlpPolicy", "Pendulum-v1", n_steps=64, batch_size=32, n_epochs=2, seed=0).learn(128)
    TrustPPO(
        "MlpPolicy", "Pendulum-v1", n_steps=64, batch_size=32, n_epochs=2, seed=0, target_kl=0.01, policy_kwargs=RELU_NET
    ).learn(128)
    assert calls == []
    TrustPPO("MlpPolicy", "Pendulum-v1", n_steps=64, batch_size=32, n_epochs=2, seed=0, policy_kwargs=RELU_NET).learn(128)
    assert calls == [1, 1, 1]


def test_relu_layers():
    from sb3_trust.ppo.fused import relu_layers

    w1, b1, w2, b2 = th.zeros(8, 3), th.zeros(8), th.zeros(2, 8), th.zeros(2)
    assert relu_layers([(w1, b1), "relu", (w2, None)]) == [(0, w1, b1, True), (2, w2, None, False)]
    assert relu_layers([(w2, b2)]) == [(0, w2, b2, False)]
    assert relu_layers([(w1, b1), "tanh", (w2, b2)]) is None
    assert relu_layers([(w1, b1), "relu", "relu", (w2, b2)]) is None
    assert relu_layers([(w1, b1), "relu"]) is None  # ReLU on the output: not an SB3 head
    assert relu_layers(["relu", (w1, b1)]) is None


def test_epoch_stops_at_a_non_finite_minibatch_without_stepping(kernels):
    """The C epoch's contract with TrustPPO._update: the index of the first non-finite minibatch, and no step taken
    from it on (guarded_update then restores the earlier ones, test_reliability.py)."""
    model = _relu_model("Pendulum-v1", dict(n_steps=128, batch_size=32)).learn(128)
    fused = model._fused_update
    assert fused is not None and fused._plan is not None and fused.adam_bound
    rollout = FlatRollout(model.rollout_buffer, model.device, model._rollout_table)
    with th.no_grad():
        model.policy.value_net.weight.fill_(float("nan"))
    before = [param.clone() for param in model.policy.parameters()]
    stats = model._update_stats
    stats.begin(4, 128, 0.2, th.float32, th.device("cpu"))
    slots = stats.next_epoch([32] * 4)
    assert fused.epoch(rollout, 32, slots) == 0
    assert th.isnan(slots[2][0, fused_module.VALUE_LOSS]) and th.isfinite(slots[2][0, fused_module.POLICY_LOSS])
    for a, b in zip(before, model.policy.parameters(), strict=True):
        th.testing.assert_close(b, a, rtol=0, atol=0, equal_nan=True)


def test_non_finite_loss_in_a_c_epoch_restores_the_update(monkeypatch):
    from sb3_trust.common.safety import NonFiniteError

    model = _relu_model("Pendulum-v1", dict(n_steps=128, batch_size=32)).learn(128)
    before = [param.clone() for param in model.policy.parameters()]
    n_updates = model._n_updates
    epoch = FusedPPO.epoch
    calls: list[int] = []

    def poisoned(self, *args):
        calls.append(1)
        if len(calls) == 2:  # after one whole epoch of steps, poison the value head
            with th.no_grad():
                model.policy.value_net.weight.fill_(float("nan"))
        return epoch(self, *args)

    monkeypatch.setattr(FusedPPO, "epoch", poisoned)
    with pytest.raises(NonFiniteError, match=r"non-finite value_loss in update \d+, epoch 1 "):
        model.learn(128, reset_num_timesteps=False)
    for a, b in zip(before, model.policy.parameters(), strict=True):
        assert th.equal(a, b)
    assert model._n_updates == n_updates


def test_blas_functions_are_torchs_and_numpys():
    """ppo_epoch needs both (else TrustPPO keeps the per-minibatch path); this machine's torch and NumPy have them."""
    found = fused_module.blas_functions()
    assert found is not None and all(isinstance(address, int) and address > 0 for address in found)
    assert fused_module._loaded_library("numpy.libs", "no-such-library") is None
