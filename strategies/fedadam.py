"""FedAdam: Adam's second moment on the server."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from strategies.fedopt import FedOpt


class FedAdam(FedOpt):
    """``v <- beta2 * v + (1 - beta2) * d^2``."""

    name = "fedadam"

    def second_moment(self, v: NDArray[np.float32], d: NDArray[np.float32]) -> NDArray[np.float32]:
        out: NDArray[np.float32] = self.beta2 * v + (1 - self.beta2) * d * d
        return out
