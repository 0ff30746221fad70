"""Learning-rate schedules: each against its formula, against torch.optim.lr_scheduler when PyTorch is
importable, and inside fit (the η of each epoch is the schedule's)."""
import math

import numpy as np
import pytest

import gpumlp
from gpumlp import schedules

BASE = 0.3
EPOCHS = range(0, 25)


@pytest.mark.parametrize("schedule,formula", [
    (schedules.Constant(), lambda e, t: BASE),
    (schedules.StepDecay(4, 0.5), lambda e, t: BASE * 0.5 ** (e // 4)),
    (schedules.ExponentialDecay(0.9), lambda e, t: BASE * 0.9**e),
    (schedules.Cosine(10, 0.01), lambda e, t: 0.01 + (BASE - 0.01) * (1 + math.cos(math.pi * min(e, 10) / 10)) / 2),
    (schedules.InvScaling(0.25), lambda e, t: BASE / (t + 1) ** 0.25),
])
def test_schedule_matches_its_formula(schedule, formula):
    for e in EPOCHS:
        t = 37 * e  # samples seen after e epochs of 37 examples
        assert schedule.lr(BASE, e, t) == pytest.approx(formula(e, t), rel=1e-15)


def test_cosine_ends_at_eta_min_and_stays():
    s = schedules.Cosine(T_max=8, eta_min=0.02)
    assert s.lr(BASE, 0, 0) == BASE
    assert s.lr(BASE, 8, 0) == pytest.approx(0.02) and s.lr(BASE, 30, 0) == pytest.approx(0.02)
    lrs = [s.lr(BASE, e, 0) for e in range(9)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))


def test_adaptive_divides_by_five_until_1e6_then_stops():
    s = schedules.Adaptive()
    lr, expected = 0.1, 0.1
    stops = []
    for _ in range(12):
        assert s.lr(lr, 99, 99) == expected  # repeated division, bit for bit as scikit-learn
        stop = s.on_plateau(lr)
        stops.append(stop)
        if not stop:
            expected /= 5.0
    # 0.1/5^k <= 1e-6 first at k = 8 (0.1/390625 = 2.56e-7): plateaus 1..8 divide, the 9th stops
    assert stops[:8] == [False] * 8 and stops[8] is True and s.n_reductions == 8
    s.reset()
    assert s.lr(lr, 0, 0) == lr


def test_other_schedules_stop_at_a_plateau():
    for s in (schedules.Constant(), schedules.Cosine(5)):
        assert s.on_plateau(0.1) is True


@pytest.mark.parametrize("s", [schedules.Constant(), schedules.StepDecay(3, 0.2), schedules.ExponentialDecay(0.5),
                               schedules.Cosine(7, 1e-3), schedules.InvScaling(0.5), schedules.Adaptive(4.0, 1e-5)])
def test_json_round_trip(s):
    if isinstance(s, schedules.Adaptive):
        s.on_plateau(1.0)
    back = schedules.from_json(schedules.to_json(s))
    assert back == s and type(back) is type(s)
    assert [back.lr(BASE, e, 10 * e) for e in EPOCHS] == [s.lr(BASE, e, 10 * e) for e in EPOCHS]


def test_make_schedule():
    assert isinstance(schedules.make_schedule(None), schedules.Constant)
    assert schedules.make_schedule("cosine", T_max=4).T_max == 4
    s = schedules.Adaptive()
    assert schedules.make_schedule(s) is s
    with pytest.raises(ValueError, match="lr_schedule must be"):
        schedules.make_schedule("warmup")
    with pytest.raises(TypeError, match="cosine"):
        schedules.make_schedule("cosine")  # T_max is required
    with pytest.raises(TypeError):
        schedules.make_schedule(s, divisor=3)


@pytest.mark.parametrize("make", [lambda: schedules.StepDecay(0), lambda: schedules.ExponentialDecay(0.0),
                                  lambda: schedules.Cosine(5, -1.0), lambda: schedules.Adaptive(divisor=1.0),
                                  lambda: schedules.InvScaling(-0.5)])
def test_bad_settings_raise(make):
    with pytest.raises((ValueError, TypeError)):
        make()


# ---------------------------------------------------------------------- PyTorch
@pytest.mark.parametrize("ours,make_torch", [
    (schedules.StepDecay(4, 0.5), lambda torch, opt: torch.optim.lr_scheduler.StepLR(opt, 4, 0.5)),
    (schedules.ExponentialDecay(0.9), lambda torch, opt: torch.optim.lr_scheduler.ExponentialLR(opt, 0.9)),
    (schedules.Cosine(12, 0.01), lambda torch, opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, 12, 0.01)),
])
def test_matches_torch_scheduler(ours, make_torch):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed: lr_scheduler cross-check skipped")
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=BASE)
    sched = make_torch(torch, opt)
    for e in range(13):  # through T_max for the cosine (PyTorch's closed form rises again after it)
        assert ours.lr(BASE, e, 0) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12, abs=1e-15)
        opt.step()
        sched.step()


# ---------------------------------------------------------------------- inside fit
def _data(seed=0, n=48):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    return X, (X[:, 0] + X[:, 1] > 0).astype(int)


@pytest.mark.parametrize("schedule", [schedules.StepDecay(2, 0.5), schedules.Cosine(5, 0.001),
                                      schedules.ExponentialDecay(0.7), schedules.InvScaling(0.5)])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_fit_uses_the_schedules_rate_each_epoch(schedule, optimizer):
    """fit with a schedule == one-epoch fits at the schedule's rates (shuffling continues alike)."""
    X, y = _data()
    kw = dict(dtype="float64", backend="numpy", seed=3, optimizer=optimizer, bias=True)
    a = gpumlp.MLP((4, 6, 2), lr_schedule=schedule, **kw).fit(X, y, epochs=6, batch_size=16, lr=0.2)
    b = gpumlp.MLP((4, 6, 2), **kw)
    for e in range(6):
        b.fit(X, y, epochs=1, batch_size=16, lr=schedule.lr(0.2, e, e * len(X)))
    np.testing.assert_array_equal(a.theta, b.theta)
    assert a.history_["lr"] == [schedule.lr(0.2, e, e * len(X)) for e in range(6)]
    assert a.samples_seen_ == 6 * len(X)


def test_adaptive_in_fit_divides_at_plateaus_then_stops():
    """With η so small that nothing improves by tol, every plateau divides η by 5 until it is <= 1e-6."""
    X, y = _data()
    m = gpumlp.MLP((4, 6, 2), dtype="float64", backend="numpy", seed=0, lr_schedule="adaptive")
    m.fit(X, y, epochs=200, lr=1e-4, tol=1.0, n_iter_no_change=2)
    lrs = m.history_["lr"]
    # epoch 1 sets the best; epochs 2-4 do not improve by tol=1 -> plateau after epoch 4 (count 3 > 2)
    assert lrs[:4] == [1e-4] * 4 and lrs[4] == pytest.approx(2e-5)
    # then every 3 epochs: 1e-4/5^k <= 1e-6 at k = 3 (8e-7): plateaus at epochs 4, 7, 10 divide, 13 stops
    assert m.epochs_ == 13 and m.stop_reason_ == "lr_too_small"
    assert m.lr_schedule.n_reductions == 3


def test_custom_schedules_work_in_fit_but_are_not_checkpointed():
    class Halving(schedules.Schedule):
        name = "halving"

        def lr(self, base_lr, epoch, samples_seen):
            return base_lr / 2**epoch

    X, y = _data()
    m = gpumlp.MLP((4, 3, 2), dtype="float64", backend="numpy", lr_schedule=Halving()).fit(X, y, epochs=3, lr=0.4)
    assert m.history_["lr"] == [0.4, 0.2, 0.1]
    with pytest.raises(TypeError, match="built-in"):
        m.state_dict()
