"""CROWN-IBP's training schedules: the eps ramp and the kappa / beta ramps that follow it."""
from __future__ import annotations

from dataclasses import dataclass


def linear_ramp(progress: float) -> float:
    """Identity on ``[0, 1]``: eps grows at a constant rate."""
    return min(max(progress, 0.0), 1.0)


def smooth_ramp(progress: float, mid: float = 0.25, power: float = 4.0) -> float:
    """DeepMind's "smoothed" ramp on ``[0, 1]``: ``a s^p`` up to ``mid``, then the tangent line to 1.

    Starting polynomially keeps the first, fragile steps of robust training small; the
    linear part is the tangent at ``mid`` (continuous value and slope), and ``a`` is chosen
    so the ramp ends exactly at 1.
    """
    s = min(max(progress, 0.0), 1.0)
    a = 1.0 / (mid ** power + power * mid ** (power - 1) * (1 - mid))
    if s < mid:
        return a * s ** power
    return a * mid ** power + a * power * mid ** (power - 1) * (s - mid)


RAMPS = {"linear": linear_ramp, "smooth": smooth_ramp}


@dataclass(frozen=True)
class ScheduleValues:
    eps: float
    kappa: float
    beta: float


@dataclass(frozen=True)
class CrownIBPSchedule:
    """Per-step values of ``eps``, ``kappa`` and ``beta`` (steps count batches).

    eps is 0 for ``warmup_steps``, ramps to ``eps_train`` over ``ramp_steps``, then stays.
    kappa and beta follow the eps ramp: ``v = v_start + (v_end - v_start) * eps / eps_train``
    (CROWN-IBP's ``beta = (eps_max - eps (1 - beta_final)) / eps_max`` for ``beta_start = 1``).
    """

    eps_train: float
    warmup_steps: int
    ramp_steps: int
    kappa_start: float = 1.0
    kappa_end: float = 0.5
    beta_start: float = 1.0
    beta_end: float = 0.0
    ramp: str = "linear"

    def __post_init__(self):
        if not self.eps_train >= 0:
            raise ValueError(f"eps_train must be non-negative, got {self.eps_train}")
        if self.warmup_steps < 0 or self.ramp_steps < 0:
            raise ValueError("warmup_steps and ramp_steps must be non-negative")
        if self.ramp not in RAMPS:
            raise ValueError(f"ramp must be one of {sorted(RAMPS)}, got {self.ramp!r}")
        for name in ("kappa_start", "kappa_end", "beta_start", "beta_end"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")

    def progress(self, step: int) -> float:
        """Fraction of the eps ramp done at ``step`` (after the shape is applied)."""
        if step < self.warmup_steps:
            return 0.0
        if self.ramp_steps == 0:
            return 1.0
        return RAMPS[self.ramp]((step - self.warmup_steps) / self.ramp_steps)

    def __call__(self, step: int) -> ScheduleValues:
        p = self.progress(step)
        return ScheduleValues(eps=self.eps_train * p,
                              kappa=self.kappa_start + (self.kappa_end - self.kappa_start) * p,
                              beta=self.beta_start + (self.beta_end - self.beta_start) * p)
