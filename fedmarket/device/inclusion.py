"""Whether each committed round that paid this device summed its upload, by the transcript.

A secure round's receipts bundle carries its SecAgg+ transcript (committed on chain with the
bundle by the aggregator): the survivors, the digest of each survivor's masked upload and each
survivor's signature over all of them. The device's receipt names the digest of the upload it
sent; :func:`transcript_problems` says where a transcript is missing, does not verify, or does
not list that upload under the device's own node key and signature.
"""

from __future__ import annotations

from dataclasses import dataclass

from eth_utils.address import to_checksum_address

from fedmarket.exceptions import DataError
from fedmarket.ledger.base import Ledger
from fedmarket.market.bundle import ReceiptsBundle
from fedmarket.market.lineage import verified_prefix
from fedmarket.secagg.transcript import Transcript
from fedmarket.store.base import ContentStore


@dataclass(frozen=True)
class InclusionCheck:
    checked: int  # paid rounds whose transcript was checked
    missing: int  # paid rounds that published none (not SecAgg+ rounds, or an old bundle)
    problems: list[str]  # transcripts that do not verify or do not hold the device's upload


def transcript_problems(
    chain: Ledger, store: ContentStore, account: str, node_key: bytes
) -> InclusionCheck:
    """Check every verified committed round with a receipt of ``account`` against its
    transcript; ``node_key`` is the device's Ed25519 node key (32 bytes)."""
    account = to_checksum_address(account)
    checked, missing, problems = 0, 0, []
    for task in sorted({c.task for c in chain.round_commits()}):
        lineage, _ = verified_prefix(
            chain, store, task, chain_id=chain.chain_id, market=chain.market_address
        )
        for verified in lineage.rounds if lineage else ():
            bundle = ReceiptsBundle.from_bytes(store.get_bytes(verified.bundle_cid))
            mine = [s.receipt for s in bundle.receipts if s.receipt.device == account]
            if not mine:
                continue
            where = f"task {bundle.task} round {bundle.round}"
            if bundle.transcript is None:
                missing += 1  # a plain round, or a bundle from before transcripts
                continue
            if set(bundle.transcript) == {"aborted"}:
                continue  # no sum was made: nothing to be left out of (and it paid me)
            checked += 1
            try:
                transcript = Transcript.from_json(bundle.transcript)
            except DataError as exc:
                problems.append(f"{where}: {exc}")
                continue
            if broken := transcript.problems():
                problems.append(f"{where}: the transcript does not verify: {broken[0]}")
            elif not any(transcript.includes(node_key, r.upload_digest) for r in mine):
                problems.append(
                    f"{where}: my upload 0x{mine[0].upload_digest.hex()[:16]}… is not in the "
                    "transcript's sum under my node key and signature"
                )
    return InclusionCheck(checked, missing, problems)
