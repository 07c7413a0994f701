"""The deployment's small parts: the owner's eligibility policy, certificates and node keys, and
the node config Flower parses."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key
from flwr.common.config import parse_config_args
from hypothesis import given
from hypothesis import strategies as st

from fedmarket.deploy.flower import format_node_config
from fedmarket.deploy.tls import make_certificates, make_node_key
from fedmarket.device.eligibility import EligibilityPolicy, SystemState
from fedmarket.exceptions import InvalidInput


def state(on_power: bool | None = True, busy: float = 10.0, free_mb: float = 4096) -> SystemState:
    return SystemState(on_power=on_power, cpu_busy_percent=busy, available_mb=free_mb)


def test_a_device_trains_when_every_condition_holds() -> None:
    policy = EligibilityPolicy(require_power=True, max_cpu_busy=50, memory_budget_mb=1024)
    assert policy.decline_reason(lambda: state()) is None
    assert policy.decline_reason(lambda: state(on_power=None)) is None  # no battery to report


@pytest.mark.parametrize(
    ("machine", "words"),
    [
        (state(on_power=False), "on battery"),
        (state(busy=80.0), "CPU 80% busy"),
        (state(free_mb=100.0), "100 MB memory available"),
    ],
)
def test_a_device_declines_with_the_condition_that_failed(machine: SystemState, words: str) -> None:
    policy = EligibilityPolicy(require_power=True, max_cpu_busy=50, memory_budget_mb=1024)
    reason = policy.decline_reason(lambda: machine)
    assert reason is not None
    assert words in reason


def test_conditions_the_owner_did_not_set_do_not_decline() -> None:
    policy = EligibilityPolicy(require_power=False, max_cpu_busy=None, memory_budget_mb=0)
    assert policy.decline_reason(lambda: state(on_power=False, busy=100.0, free_mb=0)) is None


@pytest.mark.parametrize(
    "bad", [{"max_cpu_busy": 0.0}, {"max_cpu_busy": 101.0}, {"memory_budget_mb": -1}]
)
def test_a_policy_with_impossible_limits_is_refused(bad: dict[str, float]) -> None:
    with pytest.raises(InvalidInput):
        EligibilityPolicy(**bad)  # type: ignore[arg-type]


@given(
    busy=st.floats(0, 100),
    free=st.floats(0, 1e6),
    on_power=st.sampled_from([True, False, None]),
    limit=st.floats(1, 100),
    budget=st.integers(0, 10**5),
)
def test_a_device_trains_exactly_when_its_conditions_hold(
    busy: float, free: float, on_power: bool | None, limit: float, budget: int
) -> None:
    policy = EligibilityPolicy(require_power=True, max_cpu_busy=limit, memory_budget_mb=budget)
    holds = on_power is not False and busy <= limit and free >= budget
    reason = policy.decline_reason(lambda: state(on_power, busy, free))
    assert (reason is None) == holds


def test_the_server_certificate_is_signed_by_the_ca_for_the_named_hosts(tmp_path: Path) -> None:
    paths = make_certificates(tmp_path / "certs", ["127.0.0.1", "fl.example.org"])
    ca = x509.load_pem_x509_certificate(paths.ca.read_bytes())
    server = x509.load_pem_x509_certificate(paths.certificate.read_bytes())
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["fl.example.org", "localhost"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert stat.S_IMODE(paths.private_key.stat().st_mode) == 0o600
    assert not list((tmp_path / "certs").glob("ca.key"))  # the CA key is never kept
    with pytest.raises(InvalidInput, match="already holds"):
        make_certificates(tmp_path / "certs", ["127.0.0.1"])


def test_a_node_key_pair_is_what_flower_reads(tmp_path: Path) -> None:
    paths = make_node_key(tmp_path / "node")
    private = load_ssh_private_key(paths.private_key.read_bytes(), password=None)
    public = load_ssh_public_key(paths.public_key.read_bytes())
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert private.curve.name == "secp384r1"
    assert private.public_key().public_numbers() == public.public_numbers()
    assert stat.S_IMODE(paths.private_key.stat().st_mode) == 0o600
    with pytest.raises(InvalidInput, match="keeps its key"):
        make_node_key(tmp_path / "node")


def test_node_config_survives_flowers_parser() -> None:
    values: dict[str, str | int | float | bool] = {
        "name": "laptop one",
        "data": '/data/with "quotes"/x.npz',
        "keystore": "C:\\Users\\o'neil\\key.json",
        "epsilon-cap": 8.0,
        "memory-budget-mb": 512,
        "require-power": True,
    }
    assert parse_config_args([format_node_config(values)]) == values
    with pytest.raises(InvalidInput, match="mixed quotes"):
        format_node_config({"data": """/it's "here".npz"""})
