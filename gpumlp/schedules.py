"""Learning-rate schedules: the η of each epoch, from the base rate given to ``fit``.

η is constant within an epoch (the fast step takes it as a number, so a schedule costs nothing per
step). ``epoch`` counts the epochs the model has completed (``MLP.epochs_``), ``samples_seen`` the
examples it has trained on (scikit-learn's ``t_``).

    constant      η_e = η0
    step          η_e = η0 · γ^⌊e / step_size⌋                  torch.optim.lr_scheduler.StepLR
    exponential   η_e = η0 · γ^e                                torch.optim.lr_scheduler.ExponentialLR
    cosine        η_e = η_min + (η0 − η_min)(1 + cos(π e / T))/2 for e ≤ T, then η_min
                                                                torch CosineAnnealingLR (closed form)
    invscaling    η_e = η0 / (t + 1)^power_t, t = samples seen  scikit-learn's learning_rate="invscaling"
    adaptive      η0, divided by 5 at each plateau              scikit-learn's learning_rate="adaptive"

"adaptive" reacts to the plateaus that ``fit`` detects: more than ``n_iter_no_change`` consecutive
epochs in which the monitored value (training loss, or validation score with early stopping) did
not improve by more than ``tol`` (scikit-learn's exact counting). At a plateau it divides η by 5
instead of stopping, and stops training only once η ≤ 1e-6. Every other schedule lets the plateau
stop training (when plateau stopping is on at all, see ``MLP.fit``).

Past T, PyTorch's closed form rises again (the cosine is periodic); ours stays at η_min.
"""
from __future__ import annotations

import math

from .validation import check_positive_number

SCHEDULES = ("constant", "step", "exponential", "cosine", "invscaling", "adaptive")


class Schedule:
    """Base class. ``lr`` maps (η0, epoch, samples_seen) to this epoch's η; ``on_plateau`` says
    whether a plateau stops training. ``config``/``state`` are JSON-serialisable (checkpoints)."""

    name = ""

    def lr(self, base_lr, epoch, samples_seen):
        raise NotImplementedError

    def on_plateau(self, base_lr):
        """Called when fit detects a plateau; True means stop training."""
        return True

    def reset(self):
        """Forget state accumulated during training (only "adaptive" has any)."""

    def config(self):
        return {}

    def state(self):
        return {}

    def load_state(self, state):
        if state:
            raise ValueError(f"the {self.name!r} schedule has no state, got {state!r}")

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other):
        return type(self) is type(other) and self.config() == other.config() and self.state() == other.state()


class Constant(Schedule):
    name = "constant"

    def lr(self, base_lr, epoch, samples_seen):
        return base_lr


class StepDecay(Schedule):
    """η0 · γ^⌊epoch / step_size⌋."""

    name = "step"

    def __init__(self, step_size, gamma=0.1):
        self.step_size = check_positive_number(step_size, "step_size", integer=True)
        self.gamma = check_positive_number(gamma, "gamma")

    def lr(self, base_lr, epoch, samples_seen):
        return base_lr * self.gamma ** (epoch // self.step_size)

    def config(self):
        return {"step_size": self.step_size, "gamma": self.gamma}


class ExponentialDecay(Schedule):
    """η0 · γ^epoch."""

    name = "exponential"

    def __init__(self, gamma):
        self.gamma = check_positive_number(gamma, "gamma")

    def lr(self, base_lr, epoch, samples_seen):
        return base_lr * self.gamma**epoch

    def config(self):
        return {"gamma": self.gamma}


class Cosine(Schedule):
    """η_min + (η0 − η_min)(1 + cos(π·epoch/T_max))/2, held at η_min after T_max epochs."""

    name = "cosine"

    def __init__(self, T_max, eta_min=0.0):
        self.T_max = check_positive_number(T_max, "T_max", integer=True)
        self.eta_min = check_positive_number(eta_min, "eta_min", allow_zero=True)

    def lr(self, base_lr, epoch, samples_seen):
        e = min(epoch, self.T_max)
        return self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * e / self.T_max)) / 2

    def config(self):
        return {"T_max": self.T_max, "eta_min": self.eta_min}


class InvScaling(Schedule):
    """η0 / (samples_seen + 1)^power_t, as scikit-learn (updated at the end of each epoch)."""

    name = "invscaling"

    def __init__(self, power_t=0.5):
        self.power_t = check_positive_number(power_t, "power_t", allow_zero=True)

    def lr(self, base_lr, epoch, samples_seen):
        return base_lr / (samples_seen + 1) ** self.power_t

    def config(self):
        return {"power_t": self.power_t}


class Adaptive(Schedule):
    """η0 divided by ``divisor`` at every plateau; training stops at a plateau once η ≤ ``min_lr``.

    scikit-learn's learning_rate="adaptive" is Adaptive() (divisor 5, min_lr 1e-6). The rate is
    divided repeatedly (η0/5/5...), as scikit-learn does, so the two agree to the last bit.
    """

    name = "adaptive"

    def __init__(self, divisor=5.0, min_lr=1e-6):
        self.divisor = check_positive_number(divisor, "divisor")
        if self.divisor <= 1:
            raise ValueError(f"divisor must be > 1, got {divisor!r}")
        self.min_lr = check_positive_number(min_lr, "min_lr", allow_zero=True)
        self.n_reductions = 0

    def lr(self, base_lr, epoch, samples_seen):
        lr = base_lr
        for _ in range(self.n_reductions):
            lr /= self.divisor
        return lr

    def on_plateau(self, base_lr):
        if self.lr(base_lr, 0, 0) <= self.min_lr:
            return True
        self.n_reductions += 1
        return False

    def reset(self):
        self.n_reductions = 0

    def config(self):
        return {"divisor": self.divisor, "min_lr": self.min_lr}

    def state(self):
        return {"n_reductions": self.n_reductions}

    def load_state(self, state):
        n = state.get("n_reductions", 0)
        self.n_reductions = check_positive_number(n, "n_reductions", allow_zero=True, integer=True)


_CLASSES = {c.name: c for c in (Constant, StepDecay, ExponentialDecay, Cosine, InvScaling, Adaptive)}


def make_schedule(spec=None, **config):
    """A Schedule from an instance (returned as is), None ("constant"), or a name and its settings:
    ``make_schedule("cosine", T_max=50)``."""
    if spec is None:
        spec = "constant"
    if isinstance(spec, Schedule):
        if config:
            raise TypeError("settings can only be given with a schedule name, not with a Schedule")
        return spec
    if not isinstance(spec, str) or spec not in _CLASSES:
        raise ValueError(f"lr_schedule must be a gpumlp.schedules.Schedule or one of {SCHEDULES}, got {spec!r}")
    try:
        return _CLASSES[spec](**config)
    except TypeError as exc:
        raise TypeError(f"lr_schedule {spec!r}: {exc}") from None


def to_json(schedule):
    """{"name", "config", "state"}: what a checkpoint stores (built-in schedules only)."""
    if _CLASSES.get(schedule.name) is not type(schedule):
        raise TypeError(f"checkpoints store the built-in schedules {SCHEDULES}; {type(schedule).__name__} is "
                        f"not one of them (save the model with a built-in schedule and set yours after loading)")
    return {"name": schedule.name, "config": schedule.config(), "state": schedule.state()}


def from_json(d):
    if d["name"] not in _CLASSES:
        raise ValueError(f"unknown learning-rate schedule {d['name']!r} in checkpoint")
    s = _CLASSES[d["name"]](**d.get("config", {}))
    s.load_state(d.get("state", {}))
    return s
