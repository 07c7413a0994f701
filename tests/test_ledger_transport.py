"""Web3Ledger against a flaky RPC link: retries never send a second transaction."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
from chain_helpers import EMPTY_CID, Chain
from net import Forward, RpcProxy
from web3 import Web3

from fedmarket.exceptions import ChainUnavailable
from fedmarket.ledger import Web3Ledger

pytestmark = pytest.mark.integration


class LossyProxy:
    """The link fails on the first ``eth_sendRawTransaction``: ``lose="answer"`` forwards it
    and drops the reply; ``lose="request"`` drops it unsent."""

    def __init__(self, upstream: str, lose: str) -> None:
        self.lose = lose
        self.attempts = 0  # sends the client made
        self.sent_to_node = 0  # sends that reached anvil
        self.proxy = RpcProxy(upstream, self._intercept)
        self.url = self.proxy.url

    def _intercept(self, body: bytes, forward: Forward) -> requests.Response | None:
        sending = b"eth_sendRawTransaction" in body
        self.attempts += sending
        failing = sending and self.attempts == 1
        if failing and self.lose == "request":
            return None  # lost on the way: the node never sees it
        answer = forward()
        self.sent_to_node += sending
        return None if failing else answer  # failing: the node got it, the client hears nothing


@pytest.fixture(params=["answer", "request"])
def proxy(chain: Chain, request: pytest.FixtureRequest) -> Iterator[LossyProxy]:
    lossy = LossyProxy(chain.local.rpc_url, request.param)
    yield lossy
    lossy.proxy.close()


def test_a_failed_link_never_makes_a_second_transaction(chain: Chain, proxy: LossyProxy) -> None:
    w3 = Web3(Web3.HTTPProvider(proxy.url, request_kwargs={"timeout": 30}))
    sponsor = Web3Ledger(w3, chain.deployment, chain.accounts[0], receipt_timeout=30)
    nonce_before = chain.w3.eth.get_transaction_count(sponsor.address)

    task = sponsor.create_task(
        aggregator=chain.accounts[1].address, reward_per_update=1, budget=100, spec_cid=EMPTY_CID
    )

    # Lost answer: the ledger finds its transaction on the node and does not send again.
    # Lost request: it re-sends the same signed bytes once.
    expected = (1, 1) if proxy.lose == "answer" else (2, 1)
    assert (proxy.attempts, proxy.sent_to_node) == expected
    assert chain.w3.eth.get_transaction_count(sponsor.address) == nonce_before + 1
    assert sponsor.task(task).escrow == 100
    assert chain.ledger(0)._c.market.functions.taskCount().call() == task


def test_unreachable_endpoint_is_a_clear_error(chain: Chain) -> None:
    w3 = Web3(Web3.HTTPProvider("http://127.0.0.1:9", request_kwargs={"timeout": 2}))
    with pytest.raises(ChainUnavailable, match="RPC endpoint did not answer"):
        Web3Ledger(w3, chain.deployment, chain.accounts[0])
