import collections, inspect, time
import test_market_invariants as m
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

COUNTS = collections.Counter()
orig = m.MarketMachine._expect

def counting(action, expected):
    rule = inspect.stack()[1].function
    COUNTS[(rule, getattr(expected, "__name__", "ok"))] += 1
    return orig(action, expected)

def test_cov(chain):
    m.MarketMachine.chain = chain
    m.MarketMachine._expect = staticmethod(counting)
    t = time.perf_counter()
    run_state_machine_as_test(m.MarketMachine, settings=settings(max_examples=15, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]))
    for k, v in sorted(COUNTS.items()):
        print(k, v)
    print("time", time.perf_counter() - t)
