"""auto_LiRPA's epsilon schedulers (``auto_LiRPA.eps_scheduler``), with the same numbers.

Options come as a string ``"start=3,length=60,mid=0.4"``. A trainer calls ``step_epoch()`` at
the start of each epoch, ``step_batch()`` before each batch, and reads ``get_eps()``.

* ``FixedScheduler(max_eps)``: always ``max_eps``.
* ``LinearScheduler(max_eps, "start=S,length=L")``: from epoch ``S`` eps grows by ``max_eps / L``
  per epoch, linearly over the batches of each epoch.
* ``SmoothedScheduler(max_eps, "start=S,length=L[,mid=0.25,beta=4.0]")``: DeepMind's IBP ramp,
  ``alpha t^beta`` up to the ``mid`` fraction of the ramp, then linear to ``max_eps``.
* ``AdaptiveScheduler(max_eps, "start=S[,min_step,max_step,...]")``: steps eps by the loss trend.
* ``RangeScheduler``, ``BiLinearScheduler``: eps on a range of epochs; up then down.
"""
from __future__ import annotations

import random  # noqa: F401  (auto_LiRPA's star import hands it out)

from .utils import logger

__all__ = ["BaseScheduler", "FixedScheduler", "LinearScheduler", "RangeScheduler", "BiLinearScheduler",
           "SmoothedScheduler", "AdaptiveScheduler", "logger", "random"]

_NAN = float("nan")


class BaseScheduler:
    """Holds ``eps``, ``max_eps``, the epoch / batch counters, the loss history and the parsed options ``params``."""

    def __init__(self, max_eps: float, opt_str: str):
        self.params = self._parse(opt_str)
        self.prev_loss = self.loss = self.epoch_length = _NAN
        self.eps = 0.0
        self.max_eps = max_eps
        self.is_training = True
        self.epoch = 0
        self.batch = 0

    @staticmethod
    def _parse(opt_str: str) -> dict[str, str]:
        params = {}
        for item in opt_str.split(","):
            if item.strip():
                key, value = item.split("=")
                params[key] = value
        return params

    def __repr__(self) -> str:
        return f"<BaseScheduler: eps {self.eps}, max_eps {self.max_eps}>"

    def get_max_eps(self) -> float:
        return self.max_eps

    def get_eps(self) -> float:
        return self.eps

    def reached_max_eps(self) -> bool:
        return abs(self.eps - self.max_eps) < 1e-3

    def step_batch(self, verbose: bool = False) -> None:
        if self.is_training:
            self.batch += 1

    def step_epoch(self, verbose: bool = False) -> None:
        if self.is_training:
            self.epoch += 1

    def update_loss(self, new_loss: float) -> None:
        self.prev_loss, self.loss = self.loss, new_loss

    def train(self) -> None:
        self.is_training = True

    def eval(self) -> None:
        self.is_training = False

    def set_epoch_length(self, epoch_length: int) -> None:
        """Batches per epoch."""
        self.epoch_length = epoch_length


class FixedScheduler(BaseScheduler):
    def __init__(self, max_eps: float, opt_str: str = ""):
        super().__init__(max_eps, opt_str)
        self.eps = self.max_eps


class LinearScheduler(BaseScheduler):
    def __init__(self, max_eps: float, opt_str: str):
        super().__init__(max_eps, opt_str)
        self.schedule_start = int(self.params["start"])
        self.schedule_length = int(self.params["length"])
        self.epoch_start_eps = self.epoch_end_eps = 0

    def __repr__(self) -> str:
        return f"<LinearScheduler: start_eps {self.epoch_start_eps:.3f}, end_eps {self.epoch_end_eps:.3f}>"

    def step_epoch(self, verbose: bool = True) -> None:
        self.epoch += 1
        self.batch = 0
        if self.epoch < self.schedule_start:
            self.epoch_start_eps = self.epoch_end_eps = 0
        elif self.schedule_length == 0:
            self.epoch_start_eps = self.epoch_end_eps = self.max_eps
        else:
            done = self.epoch - self.schedule_start          # whole epochs of the ramp behind us
            per_epoch = self.max_eps / self.schedule_length
            self.epoch_start_eps = min(done * per_epoch, self.max_eps)
            self.epoch_end_eps = min((done + 1) * per_epoch, self.max_eps)
        self.eps = self.epoch_start_eps
        if verbose:
            logger.info(f"Epoch {self.epoch:3d} eps start {self.epoch_start_eps:7.5f} end {self.epoch_end_eps:7.5f}")

    def step_batch(self) -> None:
        if not self.is_training:
            return
        self.batch += 1
        per_batch = (self.epoch_end_eps - self.epoch_start_eps) / self.epoch_length
        self.eps = self.epoch_start_eps + per_batch * (self.batch - 1)
        if self.batch > self.epoch_length:
            logger.warning(f"Warning: we expect {self.epoch_length} batches in this epoch but this is batch "
                           f"{self.batch}")
            self.eps = self.epoch_end_eps


class RangeScheduler(BaseScheduler):
    """``max_eps`` on epochs ``[start, start + length)``, 0 elsewhere."""

    def __init__(self, max_eps: float, opt_str: str):
        super().__init__(max_eps, opt_str)
        self.schedule_start = int(self.params["start"])
        self.schedule_length = int(self.params["length"])

    def __repr__(self) -> str:
        return f"<RangeScheduler: epoch [{self.schedule_start}, {self.schedule_start + self.schedule_length}]>"

    def step_epoch(self, verbose: bool = True) -> None:
        self.epoch += 1
        inside = self.schedule_start <= self.epoch < self.schedule_start + self.schedule_length
        self.eps = self.max_eps if inside else 0

    def step_batch(self) -> None:
        pass


class BiLinearScheduler(LinearScheduler):
    """Linear up to ``max_eps`` over the first half of ``length`` epochs, linear down over the second."""

    def __init__(self, max_eps: float, opt_str: str):
        super().__init__(max_eps, opt_str)
        self.schedule_length_half = self.schedule_length / 2

    def __repr__(self) -> str:
        return f"<BiLinearScheduler: start_eps {self.epoch_start_eps:.5f}, end_eps {self.epoch_end_eps:.5f}>"

    def step_epoch(self, verbose: bool = True) -> None:
        self.epoch += 1
        self.batch = 0
        if self.epoch < self.schedule_start:
            self.epoch_start_eps = self.epoch_end_eps = 0
        else:
            done = self.epoch - self.schedule_start
            per_epoch = self.max_eps / self.schedule_length_half
            if done < self.schedule_length_half:
                self.epoch_start_eps = min(done * per_epoch, self.max_eps)
                self.epoch_end_eps = min((done + 1) * per_epoch, self.max_eps)
            else:
                self.epoch_start_eps = max(0, self.max_eps - (done - self.schedule_length_half) * per_epoch)
                self.epoch_end_eps = max(0, self.epoch_start_eps - per_epoch)
        self.eps = self.epoch_start_eps
        if verbose:
            logger.info(f"Epoch {self.epoch:3d} eps start {self.epoch_start_eps:7.5f} end {self.epoch_end_eps:7.5f}")


class SmoothedScheduler(BaseScheduler):
    """DeepMind's smooth ramp: ``alpha (t - t0)^beta`` up to the mid point, then linear to ``max_eps``.

    ``alpha`` makes the two pieces meet with the same slope. Counted in batches: the ramp runs
    from batch ``(start - 1) * E`` to ``(start + length - 1) * E`` (``E`` batches per epoch).
    """

    def __init__(self, max_eps: float, opt_str: str):
        super().__init__(max_eps, opt_str)
        self.schedule_start = int(self.params["start"])
        self.schedule_length = int(self.params["length"])
        self.mid_point = float(self.params.get("mid", 0.25))
        self.beta = float(self.params.get("beta", 4.0))
        if self.beta < 2.0:
            raise ValueError(f"SmoothedScheduler: beta must be at least 2, got {self.beta}")
        if not 0.0 <= self.mid_point <= 1.0:
            raise ValueError(f"SmoothedScheduler: mid must lie in [0, 1], got {self.mid_point}")
        self.batch = 0

    def set_epoch_length(self, epoch_length: int) -> None:
        if self.epoch_length != self.epoch_length:  # still NaN: the first call sets it
            self.epoch_length = epoch_length
        elif self.epoch_length != epoch_length:
            raise ValueError("epoch_length must stay the same for SmoothedScheduler")

    def step_epoch(self, verbose: bool = True) -> None:
        super().step_epoch()
        if verbose is False:  # auto_LiRPA's resume path: run through the epoch's batches at once
            for _ in range(self.epoch_length):
                self.step_batch()

    def step_batch(self, verbose: bool = False) -> None:
        if not self.is_training:
            return
        self.batch += 1
        lo, hi, beta = 0.0, self.max_eps, self.beta
        t = self.batch - 1
        t0 = (self.schedule_start - 1) * self.epoch_length
        t1 = (self.schedule_start + self.schedule_length - 1) * self.epoch_length
        t_mid = int((t1 - t0) * self.mid_point) + t0
        grow = (t_mid - t0) ** (beta - 1.0)
        # alpha: the power piece reaches the mid point with the slope of the linear piece after it
        alpha = (hi - lo) / ((t1 - t_mid) * beta * grow + (t_mid - t0) * grow)
        mid_value = lo + alpha * (t_mid - t0) ** beta
        ramping = float(t > t0)
        linear = float(t >= t_mid)
        power_value = lo + alpha * float(t - t0) ** beta
        linear_value = min(mid_value + (hi - mid_value) * (t - t_mid) / (t1 - t_mid), hi)
        self.eps = ramping * ((1.0 - linear) * power_value + linear * linear_value) + (1.0 - ramping) * lo


class AdaptiveScheduler(BaseScheduler):
    """Grows eps from epoch ``start`` by a step that widens while the loss falls and narrows when it rises."""

    def __init__(self, max_eps: float, opt_str: str):
        super().__init__(max_eps, opt_str)
        get = self.params.get
        self.schedule_start = int(self.params["start"])
        self.min_eps_step = float(get("min_step", 1e-9))
        self.max_eps_step = float(get("max_step", 1e-4))
        self.eps_increase_thresh = float(get("increase_thresh", 1.0))
        self.eps_increase_factor = float(get("increase_factor", 1.5))
        self.eps_decrease_thresh = float(get("decrease_thresh", 1.5))
        self.eps_decrease_factor = float(get("decrease_factor", 2.0))
        self.small_loss_thresh = float(get("small_loss_thresh", 0.05))
        self.epoch = 0
        self.eps_step = self.min_eps_step

    def step_batch(self) -> None:
        if not (self.eps < self.max_eps and self.epoch >= self.schedule_start and self.is_training):
            return
        if self.loss != self.loss or self.prev_loss != self.prev_loss:  # no loss history yet (NaN)
            self.eps += self.min_eps_step
            return
        if self.loss < self.eps_increase_thresh * self.prev_loss or self.loss < self.small_loss_thresh:
            self.eps_step = min(self.eps_step * self.eps_increase_factor, self.max_eps_step)
        elif self.loss > self.eps_decrease_thresh * self.prev_loss:
            self.eps_step = max(self.eps_step / self.eps_decrease_factor, self.min_eps_step)
        self.eps = min(self.eps + self.eps_step, self.max_eps)
