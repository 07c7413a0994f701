"""SecAgg+ settings for test cohorts too small for the default assumptions.

Below 6 devices no k and t reach 2^-40 once one device may collude with the server (see
fedmarket.secagg.parameters); these tests state that none does, and their devices accept it.
"""

from fedmarket.secagg.config import SecAggConfig
from fedmarket.secagg.parameters import Assumptions

NO_COLLUSION = Assumptions(corrupt_fraction=0.0)
FEW_DEVICES = SecAggConfig(assumptions=NO_COLLUSION)
