"""FedYogi: Yogi's additive second moment, which grows more slowly than Adam's."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from strategies.fedopt import FedOpt


class FedYogi(FedOpt):
    """``v <- v - (1 - beta2) * d^2 * sign(v - d^2)``."""

    name = "fedyogi"

    def second_moment(self, v: NDArray[np.float32], d: NDArray[np.float32]) -> NDArray[np.float32]:
        d2 = d * d
        out: NDArray[np.float32] = v - (1 - self.beta2) * d2 * np.sign(v - d2)
        return out
