"""The challenge game against colluding parties (red-team reproductions, THREATS.md): every
test here failed against the first version of the challenge window and passes now."""

from __future__ import annotations

import pytest
from chain_helpers import CHALLENGE_WINDOW, CLOSE_GRACE, DISPUTE_WINDOW, RESPONSE_WINDOW, Chain
from test_market_contracts import (
    AGGREGATOR,
    BUYER,
    SPONSOR,
    SYBIL,
    TOKEN,
    A,
    B,
    C,
    D,
    ack,
    address,
    buy,
    challenge,
    claim,
    commit,
    delivery_of,
    give,
    list_round,
    new_task,
    raw_market,
    send_raw,
    signed,
    tree_of,
)
from web3.exceptions import ContractCustomError

from fedmarket.acks import ACK_TYPES, Ack
from fedmarket.contracts import load_artifact
from fedmarket.crypto import AssetKey
from fedmarket.exceptions import FedmarketError, InvalidInput
from fedmarket.ledger import deploy
from fedmarket.ledger import errors as market_errors
from fedmarket.ledger.chain import rpc
from fedmarket.ledger.deploy import deploy_contract
from fedmarket.market.claims import Rewards, SaleShare, claim_all
from fedmarket.market.rewards import RewardTree
from fedmarket.receipts import eip712_domain
from fedmarket.types import TaskId

pytestmark = pytest.mark.integration

H = A  # the honest device
S1, S2 = SYBIL, B  # the aggregator's Sybils: colluding devices that never challenge


def leaf_and_acks(
    chain: Chain,
    task: TaskId,
    tree: RewardTree,
    device: int,
    acks: list[Ack],
    *,
    claimed: int = 0,
    shares: tuple[SaleShare, ...] = (),
) -> Rewards:
    """``device``'s rewards as `rewards_of` finds them: its leaf in ``tree`` (final, round 1)
    and ``acks``, largest first, signed by the aggregator."""
    account = address(chain, device)
    held = [(a, signed(chain, a)) for a in acks]
    return Rewards(
        task=task,
        account=account,
        earned=tree.amounts[account],
        round=1,
        claimed=claimed,
        rounds=1,
        proof=tree.proof(account),
        acked=acks[0].cumulative_amount if acks else 0,
        ack=held[0] if held else None,
        fallback_acks=tuple(held[1:]),
        sale_shares=shares,
    )


def test_silent_sybils_cannot_hide_a_decrease_from_an_honest_watcher(chain: Chain) -> None:
    """Round 2 silently drops Sybil S1 (who never complains) to pay Sybil S2, so that S1 claims
    from round 1 and S2 from round 2 beyond the escrow. Honest H challenges round 2 *for S1*
    with S1's round-1 leaf; nobody can answer; the root is voided and H is paid."""
    # Prepare
    task = new_task(chain, budget=100 * TOKEN)
    round1 = tree_of(chain, {S1: 45 * TOKEN, H: 10 * TOKEN})  # total 55
    round2 = tree_of(chain, {S2: 55 * TOKEN, H: 10 * TOKEN})  # total 65, S1 dropped
    commit(chain, task, 1, round1)
    commit(chain, task, 2, round2)

    # Execute: H speaks for S1, the aggregator stays silent, anyone voids
    challenge(chain, task, 2, 1, round1, S1, by=H)
    chain.advance(RESPONSE_WINDOW + 1)
    chain.ledger(H).void_round(task, 2, address(chain, S1))
    chain.advance(CHALLENGE_WINDOW + 1)

    # Assert: round 2 pays nobody; round 1 pays S1 and H what it committed
    with pytest.raises(market_errors.RoundIsVoided):
        claim(chain, task, 2, round2, S2)
    assert claim(chain, task, 1, round1, S1) == 45 * TOKEN
    assert claim(chain, task, 1, round1, H) == 10 * TOKEN
    assert chain.ledger(SPONSOR).task(task).paid == 55 * TOKEN


def test_no_ack_is_paid_while_the_task_still_commits(chain: Chain) -> None:
    """Closing opens the grace for the aggregator's last commit. Anyone (the sponsor too)
    holding an ack cannot cash it then, so cannot stop that commit nor take escrow its root
    will reserve; once commits stop, a Sybil's ack takes only what no root reserves, and H's
    leaves stay payable."""
    task = new_task(chain, budget=100 * TOKEN)
    round1 = tree_of(chain, {H: 50 * TOKEN})
    commit(chain, task, 1, round1)
    chain.advance(CHALLENGE_WINDOW + 1)
    chain.ledger(SPONSOR).close_task(task)
    sybil_ack = ack(chain, task, 2, S1, 50 * TOKEN)
    with pytest.raises(market_errors.AcksNotPayable):
        chain.ledger(SPONSOR).claim_acknowledged(sybil_ack, signed(chain, sybil_ack))

    round2 = tree_of(chain, {H: 60 * TOKEN, S2: 10 * TOKEN})
    commit(chain, task, 2, round2)  # the last commit lands in the grace
    chain.advance(CLOSE_GRACE + 1)
    with pytest.raises(market_errors.TaskUnderfunded):  # 30 unreserved: not the 50 it names
        chain.ledger(S1).claim_acknowledged(sybil_ack, signed(chain, sybil_ack))
    assert claim(chain, task, 2, round2, H) == 60 * TOKEN


def test_an_ack_claimed_before_its_leaf_is_counted_once_after_a_credit(chain: Chain) -> None:
    """Budget 40: round 1 pays A and B 10 each (final); round 2 is acknowledged to both at 20
    and never committed. Someone claims A's ack outright, before A's leaf: counted in full, it
    reserves A's round-1 10 twice and B's ack no longer fits. Anyone shows A's leaf in the
    committed root (`creditAck`): A's 10 is counted once, and B is paid in full."""
    # Prepare
    task = new_task(chain, budget=40 * TOKEN)
    round1 = tree_of(chain, {A: 10 * TOKEN, B: 10 * TOKEN})
    commit(chain, task, 1, round1)
    chain.advance(CHALLENGE_WINDOW + 1)
    chain.ledger(SPONSOR).close_task(task)
    chain.advance(CLOSE_GRACE + 1)  # commits are over: acks pay
    a_ack, b_ack = ack(chain, task, 2, A, 20 * TOKEN), ack(chain, task, 2, B, 20 * TOKEN)
    anyone = chain.ledger(SYBIL)
    assert anyone.claim_acknowledged(a_ack, signed(chain, a_ack)) == 20 * TOKEN
    assert claim(chain, task, 1, round1, B) == 10 * TOKEN
    with pytest.raises(market_errors.TaskUnderfunded):
        anyone.claim_acknowledged(b_ack, signed(chain, b_ack))

    # Execute
    a = address(chain, A)
    credited = anyone.credit_ack(task, a, 10 * TOKEN, round1.proof(a))

    # Assert: A's overlap left the ack reserve once; B's ack fits; nothing is locked or owed
    assert credited == 10 * TOKEN
    with pytest.raises(market_errors.NothingToCredit):
        anyone.credit_ack(task, a, 10 * TOKEN, round1.proof(a))
    assert anyone.claim_acknowledged(b_ack, signed(chain, b_ack)) == 10 * TOKEN
    state = chain.ledger(SPONSOR).task(task)
    assert (state.paid, state.committed, state.paid_on_acks) == (40 * TOKEN, 20 * TOKEN, 20 * TOKEN)
    chain.advance(CLOSE_GRACE + 1)
    with pytest.raises(market_errors.NothingToRefund):
        chain.ledger(SPONSOR).refund_unspent(task)


def test_a_credit_shows_the_final_committed_leaf_and_no_other(chain: Chain) -> None:
    """Budget 60: round 2 (A 20, B 20) is committed but still in its window when A's ack of 20
    is claimed outright. A credit must show A's leaf in the committed root, not an earlier one,
    not a larger amount, and only once that root is final."""
    task = new_task(chain, budget=60 * TOKEN)
    round1 = tree_of(chain, {A: 10 * TOKEN, B: 10 * TOKEN})
    round2 = tree_of(chain, {A: 20 * TOKEN, B: 20 * TOKEN})
    commit(chain, task, 1, round1)
    chain.advance(CHALLENGE_WINDOW + 1)
    chain.ledger(SPONSOR).close_task(task)
    chain.advance(CLOSE_GRACE - CHALLENGE_WINDOW // 2)
    commit(chain, task, 2, round2)  # late in the grace: still in its window once acks pay
    chain.advance(CHALLENGE_WINDOW // 2 + 1)
    a_ack = ack(chain, task, 2, A, 20 * TOKEN)
    anyone, a = chain.ledger(SYBIL), address(chain, A)
    assert anyone.claim_acknowledged(a_ack, signed(chain, a_ack)) == 20 * TOKEN

    with pytest.raises(market_errors.InvalidProof):  # round 1 is no longer the committed root
        anyone.credit_ack(task, a, 10 * TOKEN, round1.proof(a))
    with pytest.raises(market_errors.InvalidProof):  # a leaf larger than the root holds
        anyone.credit_ack(task, a, 25 * TOKEN, round2.proof(a))
    with pytest.raises(market_errors.RoundNotFinal):
        anyone.credit_ack(task, a, 20 * TOKEN, round2.proof(a))
    chain.advance(CHALLENGE_WINDOW + 1)
    b = address(chain, B)
    with pytest.raises(market_errors.NothingToCredit):  # B was never paid on an ack
        anyone.credit_ack(task, b, 20 * TOKEN, round2.proof(b))

    assert anyone.credit_ack(task, a, 20 * TOKEN, round2.proof(a)) == 20 * TOKEN
    assert chain.ledger(SPONSOR).task(task).paid_on_acks == 0
    with pytest.raises(market_errors.NothingToClaim):  # A's leaf was paid by its ack
        claim(chain, task, 2, round2, A)
    assert claim(chain, task, 2, round2, B) == 20 * TOKEN


def test_a_refund_after_a_void_waits_for_the_acks_the_root_left_out(chain: Chain) -> None:
    """A root committed late in the close grace pays D less than acked and reserves the whole
    escrow. D challenges; after the grace the root is voided; the sponsor's refund must wait a
    close grace so that D's ack is paid first."""
    # Prepare
    task = new_task(chain, budget=100 * TOKEN)
    round1 = tree_of(chain, {D: 10 * TOKEN})
    commit(chain, task, 1, round1)
    chain.advance(CHALLENGE_WINDOW + 1)
    d_ack = ack(chain, task, 2, D, 20 * TOKEN)
    sponsor, device = chain.ledger(SPONSOR), chain.ledger(D)
    sponsor.close_task(task)
    chain.advance(CLOSE_GRACE - 100)
    commit(chain, task, 2, tree_of(chain, {D: 10 * TOKEN, SYBIL: 90 * TOKEN}))
    with pytest.raises(market_errors.AcksNotPayable):  # the grace is on: commits may come
        device.claim_acknowledged(d_ack, signed(chain, d_ack))
    device.challenge_with_ack(task, 2, d_ack, signed(chain, d_ack))
    chain.advance(RESPONSE_WINDOW + 1)  # past the grace and the response deadline

    # Execute: anyone voids, and tries to refund in the same breath
    sponsor.void_round(task, 2, device.address)
    with pytest.raises(market_errors.TaskNotClosed, match="voided root"):
        sponsor.refund_unspent(task)

    # Assert: D is paid its round-1 leaf and what its ack adds; only then the sponsor the rest
    assert claim(chain, task, 1, round1, D) == 10 * TOKEN
    assert device.claim_acknowledged(d_ack, signed(chain, d_ack)) == 10 * TOKEN
    chain.advance(CLOSE_GRACE + 1)
    assert sponsor.refund_unspent(task) == 80 * TOKEN


def test_an_acknowledged_round_the_aggregator_never_commits_is_paid_once_the_sponsor_closes(
    chain: Chain,
) -> None:
    """The aggregator acknowledges D's round 2 and stops. Nothing pays the ack while the task is
    open (no root to challenge), but the escrow is hostage too: the sponsor gets it back only
    by closing, and closing makes the ack payable (README: what each party must trust)."""
    task = new_task(chain, budget=100 * TOKEN)
    round1 = tree_of(chain, {D: 10 * TOKEN})
    commit(chain, task, 1, round1)
    d_ack = ack(chain, task, 2, D, 20 * TOKEN)
    chain.advance(365 * 24 * 3600)
    device, sponsor = chain.ledger(D), chain.ledger(SPONSOR)
    with pytest.raises(market_errors.AcksNotPayable):
        device.claim_acknowledged(d_ack, signed(chain, d_ack))
    with pytest.raises(market_errors.TaskNotClosed):
        sponsor.refund_unspent(task)

    sponsor.close_task(task)
    chain.advance(CLOSE_GRACE + 1)  # no commit came in the grace: the ack pays
    assert claim(chain, task, 1, round1, D) == 10 * TOKEN
    assert device.claim_acknowledged(d_ack, signed(chain, d_ack)) == 10 * TOKEN
    chain.advance(CLOSE_GRACE)
    assert sponsor.refund_unspent(task) == 80 * TOKEN


def test_sixty_five_thousand_open_challenges_do_not_lock_honest_devices_out(chain: Chain) -> None:
    """The open-challenge counter is 24 bits: 65,535 Sybil challenges (set directly in storage;
    sending them takes too long for a test) leave room for an honest device's."""
    task = new_task(chain, budget=100 * TOKEN)
    round1 = tree_of(chain, {D: 10 * TOKEN})
    commit(chain, task, 1, round1)
    chain.advance(CHALLENGE_WINDOW + 1)
    commit(chain, task, 2, tree_of(chain, {SYBIL: 10 * TOKEN, C: TOKEN}))
    slot = _first_round_word(chain, task, 2)
    market = chain.w3.to_checksum_address(chain.deployment.market)
    word = int.from_bytes(chain.w3.eth.get_storage_at(market, slot), "big")
    word = (word & ~((2**24 - 1) << 224)) | (65_535 << 224)
    rpc(chain.local.rpc_url, "anvil_setStorageAt", [market, hex(slot), f"0x{word:064x}"])
    stored = chain.ledger(SPONSOR).round_state(task, 2)
    assert stored is not None
    assert stored.open_challenges == 65_535

    challenge(chain, task, 2, 1, round1, D)

    stored = chain.ledger(SPONSOR).round_state(task, 2)
    assert stored is not None
    assert stored.open_challenges == 65_536


def test_anyone_answers_a_baseless_challenge_of_an_honest_root(chain: Chain) -> None:
    """A challenges an honest root (nobody's amount fell) while the aggregator is away; another
    device that holds the tree answers it, so the root cannot be voided and pays."""
    task = new_task(chain, budget=100 * TOKEN)
    round1 = tree_of(chain, {A: 10 * TOKEN, B: 10 * TOKEN})
    commit(chain, task, 1, round1)
    round2 = tree_of(chain, {A: 10 * TOKEN, B: 20 * TOKEN})
    commit(chain, task, 2, round2)
    challenge(chain, task, 2, 1, round1, A)  # baseless

    a = address(chain, A)
    chain.ledger(B).answer(task, 2, a, round2.amounts[a], round2.proof(a))
    chain.advance(RESPONSE_WINDOW + 1)

    with pytest.raises(market_errors.NotChallenged):
        chain.ledger(A).void_round(task, 2, a)
    chain.advance(CHALLENGE_WINDOW + 1)
    assert claim(chain, task, 2, round2, B) == 20 * TOKEN


def test_claiming_a_root_and_an_ack_leaves_nothing_locked(chain: Chain) -> None:
    """D's final leaf is 10 and its ack 12: `claim_all` claims the root, then only the 2 the ack
    adds, so the refund returns everything else (88) and the market holds nothing for the
    task."""
    task = new_task(chain, budget=100 * TOKEN)
    tree = tree_of(chain, {D: 10 * TOKEN})
    commit(chain, task, 1, tree)
    chain.advance(CHALLENGE_WINDOW + 1)
    d_ack = ack(chain, task, 2, D, 12 * TOKEN)
    sponsor, device = chain.ledger(SPONSOR), chain.ledger(D)
    sponsor.close_task(task)
    chain.advance(CLOSE_GRACE + 1)
    owed = leaf_and_acks(chain, task, tree, D, [d_ack])

    assert claim_all(device, [owed]) == {task: 12 * TOKEN}

    chain.advance(CLOSE_GRACE)
    assert sponsor.refund_unspent(task) == 88 * TOKEN
    state = sponsor.task(task)
    assert state.escrow - state.paid == 0


def _first_round_word(chain: Chain, task: int, round_: int) -> int:
    """The storage slot of rounds[task][round_]'s first word (rewardsKey | committedAt |
    openChallenges | voided), found by its committedAt."""
    from eth_abi.abi import encode
    from eth_utils.crypto import keccak

    market = chain.w3.to_checksum_address(chain.deployment.market)
    stored = chain.ledger(SPONSOR).round_state(task, round_)
    assert stored is not None
    for base in range(16):
        inner = keccak(encode(["uint256", "uint256"], [task, base]))
        slot = int.from_bytes(keccak(encode(["uint256"], [round_]) + inner), "big")
        word = int.from_bytes(chain.w3.eth.get_storage_at(market, slot), "big")
        if word and (word >> 184) & (2**40 - 1) == stored.committed_at:
            return slot
    raise AssertionError("rounds slot not found")


def test_a_zero_leaf_cannot_open_a_challenge(chain: Chain) -> None:
    """An account owed nothing has nothing to challenge: a zero leaf opens none, so it cannot be
    used to make the aggregator answer for free."""
    task = new_task(chain, budget=100 * TOKEN)
    round1 = tree_of(chain, {A: 10 * TOKEN, C: 0})
    commit(chain, task, 1, round1)
    commit(chain, task, 2, tree_of(chain, {A: 10 * TOKEN}))

    with pytest.raises(market_errors.ZeroAmount):
        challenge(chain, task, 2, 1, round1, C, by=A)
    stored = chain.ledger(SPONSOR).round_state(task, 2)
    assert stored is not None
    assert stored.open_challenges == 0


def test_a_zero_ack_cannot_open_a_challenge(chain: Chain) -> None:
    """The aggregator signs an ack of 0 (our client refuses to make one, so it is signed by
    hand): it opens no challenge either, signed or not."""
    task = new_task(chain, budget=100 * TOKEN)
    commit(chain, task, 1, tree_of(chain, {A: 10 * TOKEN}))
    zero = {
        "task": task,
        "round": 1,
        "device": address(chain, D),
        "uploadDigest": bytes(32),
        "cumulativeAmount": 0,
    }
    domain = eip712_domain(chain.deployment.chain_id, chain.deployment.market)
    signature = chain.accounts[AGGREGATOR].sign_typed_data(domain, ACK_TYPES, zero).signature
    call = raw_market(chain).functions.challengeWithAck(task, 1, tuple(zero.values()), signature)

    with pytest.raises(market_errors.ZeroAmount):
        send_raw(chain, D, call)
    stored = chain.ledger(SPONSOR).round_state(task, 1)
    assert stored is not None
    assert stored.open_challenges == 0


def test_a_device_falls_back_to_a_smaller_ack_that_fits(chain: Chain) -> None:
    """Budget 40: round 1 (final) pays D 10; D holds acks of 20 (round 2) and 30 (round 3),
    neither committed. A Sybil's ack takes 20 first, leaving 10 unreserved: D's largest ack
    (20 more) does not fit, its round-2 ack (10 more) does, and `claim_all` takes it."""
    task = new_task(chain, budget=40 * TOKEN)
    round1 = tree_of(chain, {D: 10 * TOKEN})
    commit(chain, task, 1, round1)
    chain.advance(CHALLENGE_WINDOW + 1)
    chain.ledger(SPONSOR).close_task(task)
    chain.advance(CLOSE_GRACE + 1)
    sybil_ack = ack(chain, task, 3, SYBIL, 20 * TOKEN)
    assert chain.ledger(SYBIL).claim_acknowledged(sybil_ack, signed(chain, sybil_ack)) == 20 * TOKEN
    smaller, larger = ack(chain, task, 2, D, 20 * TOKEN), ack(chain, task, 3, D, 30 * TOKEN)
    d = address(chain, D)
    owed = leaf_and_acks(chain, task, round1, D, [larger, smaller])

    assert claim_all(chain.ledger(D), [owed]) == {task: 20 * TOKEN}
    assert chain.ledger(D).claimed(task, d) == 20 * TOKEN


def test_one_refused_task_does_not_stop_the_others(chain: Chain) -> None:
    """Task 1: D's ack cannot fit (a Sybil's took the room). Task 2: a final root pays D 5.
    With `failed`, `claim_all` reports task 1's refusal and what it did pay there (D's leaf),
    and still claims task 2."""
    first, second = new_task(chain, budget=30 * TOKEN), new_task(chain, budget=30 * TOKEN)
    round1, other = tree_of(chain, {D: 10 * TOKEN}), tree_of(chain, {D: 5 * TOKEN})
    commit(chain, first, 1, round1)
    commit(chain, second, 1, other)
    chain.advance(CHALLENGE_WINDOW + 1)
    chain.ledger(SPONSOR).close_task(first)
    chain.advance(CLOSE_GRACE + 1)
    sybil_ack = ack(chain, first, 2, SYBIL, 20 * TOKEN)
    chain.ledger(SYBIL).claim_acknowledged(sybil_ack, signed(chain, sybil_ack))
    d_ack = ack(chain, first, 2, D, 20 * TOKEN)
    rewards = [
        leaf_and_acks(chain, first, round1, D, [d_ack]),
        leaf_and_acks(chain, second, other, D, []),
    ]
    failed: dict[TaskId, FedmarketError] = {}

    paid = claim_all(chain.ledger(D), rewards, failed=failed)

    assert paid == {first: 10 * TOKEN, second: 5 * TOKEN}
    assert list(failed) == [first]
    assert isinstance(failed[first], market_errors.TaskUnderfunded)
    assert "holds 30 tokens" in str(failed[first])  # amounts in tokens, not base units


def test_a_close_grace_shorter_than_a_roots_settling_is_refused(chain: Chain) -> None:
    """The last root of a closing task may be committed at the end of its grace; with a grace
    shorter than the challenge and response windows it could still be open when the refund
    opens a grace later, before the acks it overlaps could be credited (red-team). Both the
    client and the contract refuse such a market."""
    deployer = chain.accounts[SPONSOR]
    windows = {"challenge_window": 3600, "response_window": 600}
    with pytest.raises(InvalidInput, match="must be at least challenge_window"):
        deploy(chain.w3, deployer, close_grace=600, **windows)
    artifact = load_artifact("DataMarket")
    token = chain.deployment.token
    with pytest.raises(ContractCustomError) as refused:
        deploy_contract(
            chain.w3, deployer, artifact.abi, artifact.bytecode, token, 1, 1, 600, 3600, 600
        )
    data = bytes.fromhex(str(refused.value.data).removeprefix("0x"))
    error = market_errors.RevertDecoder([artifact.abi]).decode(data)
    assert isinstance(error, market_errors.GraceTooShort)
    assert "shorter than the challenge and response windows together (4200 s)" in str(error)
    deployed = deploy(chain.w3, deployer, close_grace=4200, **windows)  # exactly enough
    assert deployed.market != chain.deployment.market


def test_a_sale_share_is_claimed_though_the_ack_no_longer_pays(chain: Chain) -> None:
    """D holds an ack (20) that nothing can pay any more (the refund took the rest); a sale of
    round 1 brings D a share. `claim_all` still claims the share (red-team: the failing ack
    used to block it for good)."""
    task = new_task(chain, budget=100 * TOKEN)
    round1 = tree_of(chain, {D: 10 * TOKEN})
    commit(chain, task, 1, round1)
    chain.advance(CHALLENGE_WINDOW + 1)
    sponsor, device, d = chain.ledger(SPONSOR), chain.ledger(D), address(chain, D)
    sponsor.close_task(task)
    chain.advance(2 * CLOSE_GRACE + 1)
    assert claim(chain, task, 1, round1, D) == 10 * TOKEN
    assert sponsor.refund_unspent(task) == 90 * TOKEN
    key = AssetKey.generate()  # round 1 sells for 20, half of it to its contributors: D
    listing = list_round(chain, task, 1, key, price=20 * TOKEN, bps=5000)
    give(chain, BUYER, 20 * TOKEN)
    purchase, _ = buy(chain, listing, 20 * TOKEN)
    chain.ledger(AGGREGATOR).deliver_key(purchase, delivery_of(chain, purchase, key))
    chain.advance(DISPUTE_WINDOW + 1)
    chain.ledger(AGGREGATOR).settle(purchase)
    revenue = 10 * TOKEN
    d_ack = ack(chain, task, 2, D, 20 * TOKEN)
    share = SaleShare(round=1, cumulative=10 * TOKEN, proof=round1.proof(d), due=revenue, claimed=0)
    owed = leaf_and_acks(chain, task, round1, D, [d_ack], claimed=10 * TOKEN, shares=(share,))
    failed: dict[TaskId, FedmarketError] = {}

    paid = claim_all(device, [owed], failed=failed)

    assert paid == {task: revenue}
    assert isinstance(failed[task], market_errors.TaskUnderfunded)
