// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {Math} from "@openzeppelin/contracts/utils/math/Math.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {RewardSumTree} from "./RewardSumTree.sol";

/// @title fedmarket's data market, v2
/// @notice Sponsors escrow rewards for federated-learning tasks; each task's aggregator commits
/// rounds (a hiding commitment to the model, the ciphertext's CID, the receipts bundle and a
/// Merkle-sum root of cumulative per-device rewards); devices claim any number of rounds at once.
/// A task's sponsor or aggregator sells a committed round's model, encrypted; buyers pay in one
/// transaction, get the key by ECDH on alt_bn128, and can prove a wrong key on chain.
///
/// Guarantees, each enforced here (README "What each party must trust"):
/// 1. Escrow isolation. A task pays out (reward claims, acknowledged claims) at most its own
///    escrow; sale shares pay out at most what that round's sales brought in; a purchase's price
///    goes only to its buyer (refund) or to its seller and that round's contributors (settle).
///    No call moves another task's, round's, purchase's or account's funds.
/// 2. Entitlements are never erased. A root is a Merkle-sum tree whose leaves add up to exactly
///    its committed total (at most the escrow), so one root never promises more than the task
///    holds. Claims are cumulative per account, and a claim may use any final root, so a later
///    root cannot erase what an earlier one paid. A root is final `challengeWindow` seconds
///    after its commit: until then, anyone holding an account's leaf in an earlier root (or an
///    acknowledgement of the aggregator for that round or before) worth more than this root
///    gives the account challenges the root for that account, and the aggregator (or anyone)
///    must show, within `responseWindow`, a leaf of this root paying the account at least that
///    much. An unanswered challenge voids the root and freezes the task's commits. Hence all
///    final roots agree that no account's amount ever falls, and together they pay at most the
///    latest one's total - as long as one honest party (every device's software does this)
///    compares each root of the task with the earlier ones within the window.
/// 3. Inclusion you can prove. For every accepted upload the aggregator signs an Ack(task,
///    round, device, upload digest, cumulative amount); a root of that round or later that pays
///    the device less is challenged with it, as above. Once the task commits no more (its close
///    grace is over, or a root was voided), an ack is also paid directly from the escrow no root
///    reserves (rounds the aggregator acknowledged but never committed, or whose root was
///    voided); the part of it that the device's leaf in the committed root already reserves is
///    counted once (`creditAck`, by anyone, once that root is final). The sponsor's refund waits
///    one more close grace after commits stop, and after any void, so that acks are paid first.
/// 4. No close front-running. Closing starts a grace period (`closeGrace`) in which the
///    aggregator may still commit and devices may still claim (no ack is paid directly then, so
///    none can stop the last commit); the unspent escrow goes back to the sponsor only a second
///    grace later, and never below what was committed or paid.
/// 5. Fair sales. Proceeds wait out a dispute window; a buyer whose key does not hash to the
///    listing's key commitment reveals its one-time secret and the contract recomputes the key
///    and refunds. A buyer cannot win a dispute for a key that matches.
/// 6. Sale revenue reaches contributors: a sale's contributors' share (at least the share the
///    sponsor fixed when creating the task) accrues to the listed round and is claimable pro
///    rata to the cumulative rewards that round committed; it is never refunded to the sponsor.
/// 7. Listings name (task, round) of a final round, and only that task's sponsor or aggregator
///    may list it.
/// What the contract cannot check, and parties must trust: that an aggregator's root pays what
/// its receipts bundle says (anyone can recompute it off chain); that acknowledgements it signs
/// for rounds it then never commits (or whose root is voided) add up to no more than the escrow
/// left: such acks are paid first come, first served; and that an asset's ciphertext opens with
/// its committed key (the buyer checks after delivery).
/// @dev Per-round storage is O(1) whatever the cohort size (four words). CIDs are bytes in
/// events; a model is only ever committed by a salted hash and published as ciphertext.
contract DataMarket is ReentrancyGuardTransient, EIP712 {
    using SafeERC20 for IERC20;

    struct Task {
        address sponsor;
        uint64 lastRound;
        address aggregator;
        uint64 closesAt; // 0 while open; commits stop and the unspent refund opens at this time
        uint16 contributorsBps; // least share of every sale of the task's models paid to devices
        uint128 escrow; // the sponsor's deposits still held for this task
        uint128 paid; // rewards paid out (tree and acknowledged claims)
        uint128 rewardPerUpdate;
        uint128 committed; // cumulative rewards at the latest round
    }

    struct Round {
        // What a claim reads, in one word: the first 23 bytes of keccak256(abi.encode(rewardsRoot,
        // cumulativeTotal)) (a collision costs 2**92 work) beside the root's challenge state.
        bytes23 rewardsKey;
        uint40 committedAt; // challenges are open until committedAt + challengeWindow
        uint24 openChallenges;
        bool voided; // an unanswered challenge showed the root takes back an entitlement
        bytes32 rewardsRoot; // Merkle-sum root of (account, cumulative amount) at this round
        bytes32 modelCommitment; // sha256("fedmarket/model/v1" || salt || model), hiding
        uint128 cumulativeTotal; // the root's sum
        uint64 priorRound; // the task's round committed before this one (0: none)
    }

    /// @notice An account's claim that a root pays it less than `amount`, open until `deadline`;
    /// once answered, `amount` is what the answer showed, and only more reopens it.
    struct Challenge {
        uint128 amount;
        uint64 deadline;
        bool open;
    }

    struct Listing {
        address seller;
        uint64 task;
        uint16 contributorsBps; // share of each sale paid to the round's contributors
        bool active;
        uint64 round;
        uint256 price;
        bytes32 keyCommitment; // sha256(asset key)
        bytes assetCid; // the encrypted asset
    }

    enum PurchaseState {
        None,
        Pending, // paid, waiting for the key until `deadline`
        Delivered, // key posted; the buyer may dispute until `deadline`
        Settled, // proceeds released to the seller and contributors
        Refunded
    }

    struct Purchase {
        uint64 listing;
        uint64 deadline;
        PurchaseState state;
        address buyer;
        uint256 price;
        bytes32 buyerKey; // keccak256 of the buyer's one-time alt_bn128 G1 public key (x, y)
        bytes32 delivery; // keccak256(ephemeral key x, y, masked key) once delivered
    }

    /// @notice A device's signed statement of one contributed update (EIP-712).
    struct Receipt {
        uint256 task;
        uint64 round;
        address device;
        bytes32 trainedFrom; // commitment of the global model the update was trained from
        bytes32 uploadDigest; // sha256 of the masked upload
        uint64 weight; // the update's weight in the sum: 1 (no example count leaves a device)
        uint64 epsilonMicros; // epsilon spent so far on this dataset, x 1e6
        uint64 deltaE18; // delta, x 1e18
    }

    /// @notice The aggregator's signed acknowledgement of an accepted upload (EIP-712): once a
    /// round at or after `round` is committed, `device` is owed at least `cumulativeAmount`.
    struct Ack {
        uint256 task;
        uint64 round;
        address device;
        bytes32 uploadDigest;
        uint256 cumulativeAmount;
    }

    bytes32 public constant RECEIPT_TYPEHASH = keccak256(
        "Receipt(uint256 task,uint64 round,address device,bytes32 trainedFrom,bytes32 uploadDigest,"
        "uint64 weight,uint64 epsilonMicros,uint64 deltaE18)"
    );
    bytes32 public constant ACK_TYPEHASH =
        keccak256("Ack(uint256 task,uint64 round,address device,bytes32 uploadDigest,uint256 cumulativeAmount)");
    uint16 public constant MAX_BPS = 10_000;
    // alt_bn128 (EIP-196): field modulus and group order; G1's generator is (1, 2).
    uint256 internal constant FIELD = 21888242871839275222246405745257275088696311157297823662689037894645226208583;
    uint256 internal constant ORDER = 21888242871839275222246405745257275088548364400416034343698204186575808495617;

    IERC20 public immutable token;
    uint64 public immutable deliveryWindow; // seconds a seller has to post the key
    uint64 public immutable disputeWindow; // seconds a buyer has to prove a wrong key
    uint64 public immutable closeGrace; // seconds between a sponsor's close and its refund
    uint64 public immutable challengeWindow; // seconds after a commit in which its root is challenged
    uint64 public immutable responseWindow; // seconds an aggregator has to answer a challenge

    uint64 public taskCount;
    uint64 public listingCount;
    uint64 public purchaseCount;
    mapping(uint256 task => Task) public tasks;
    mapping(uint256 task => mapping(uint256 round => Round)) public rounds;
    mapping(uint256 task => mapping(uint256 round => mapping(address account => Challenge))) public challenges;
    mapping(uint256 task => uint64 time) public frozenAt; // the latest void: no more commits
    mapping(uint256 task => mapping(address account => uint256 amount)) public claimedBy;
    // Paid on acknowledgements: kept back at refund beside what the roots commit, since an ack
    // may pay a device that no final root counts.
    mapping(uint256 task => uint256 amount) public paidOnAcks;
    // Each account's part of paidOnAcks: its ack payments beyond its leaf in the committed root.
    mapping(uint256 task => mapping(address account => uint256 amount)) public ackCounted;
    mapping(uint256 task => mapping(uint256 round => uint256 amount)) public salesRevenue;
    mapping(uint256 task => mapping(uint256 round => uint256 amount)) public salesPaid;
    mapping(uint256 task => mapping(uint256 round => mapping(address account => uint256 amount))) public
        saleClaimedBy;
    mapping(uint256 listing => Listing) public listings;
    mapping(uint256 purchase => Purchase) public purchases;
    mapping(address account => uint256 amount) public owed; // settled seller proceeds

    event TaskCreated(
        uint256 indexed task,
        address indexed sponsor,
        address indexed aggregator,
        uint256 rewardPerUpdate,
        uint256 budget,
        uint16 contributorsBps,
        bytes specCid
    );
    event TaskFunded(uint256 indexed task, address indexed from, uint256 amount, uint256 escrow);
    event RoundCommitted(
        uint256 indexed task,
        uint256 indexed round,
        bytes32 modelCommitment,
        bytes modelCid,
        bytes bundleCid,
        bytes32 rewardsRoot,
        uint256 cumulativeTotal
    );
    event Claimed(uint256 indexed task, address indexed account, uint256 amount); // claimedBy has the total
    event ChallengeOpened(
        uint256 indexed task, uint256 indexed round, address indexed account, uint256 amount, uint64 deadline
    );
    event ChallengeAnswered(uint256 indexed task, uint256 indexed round, address indexed account);
    event RoundVoided(uint256 indexed task, uint256 indexed round, address indexed account);
    event AckClaimed(uint256 indexed task, uint256 indexed round, address indexed account, bytes32 uploadDigest);
    event AckCredited(uint256 indexed task, address indexed account, uint256 amount);
    event SaleShareClaimed(uint256 indexed task, uint256 indexed round, address indexed account, uint256 amount);
    event TaskClosing(uint256 indexed task, uint64 closesAt);
    event TaskClosed(uint256 indexed task, uint256 refund);
    event Listed(
        uint256 indexed listing,
        address indexed seller,
        uint256 indexed task,
        uint256 round,
        bytes32 modelCommitment,
        bytes assetCid,
        uint256 price,
        bytes32 keyCommitment,
        bytes metadataCid,
        uint16 contributorsBps
    );
    event Delisted(uint256 indexed listing);
    event Purchased(
        uint256 indexed purchase,
        uint256 indexed listing,
        address indexed buyer,
        uint256 price,
        uint256 buyerKeyX,
        uint256 buyerKeyY,
        uint64 deadline
    );
    event KeyDelivered(
        uint256 indexed purchase, uint256 ephemeralX, uint256 ephemeralY, bytes32 maskedKey, uint64 disputeDeadline
    );
    event Disputed(uint256 indexed purchase, address indexed buyer, uint256 amount);
    event Settled(uint256 indexed purchase, uint256 sellerShare, uint256 contributorsShare);
    event Refunded(uint256 indexed purchase, address indexed buyer, uint256 amount);
    event Withdrawn(address indexed account, uint256 amount);

    error ZeroAddress();
    error ZeroAmount();
    error GraceTooShort(uint64 closeGrace, uint64 minimum);
    error UnknownTask(uint256 task);
    error TaskIsClosed(uint256 task, uint64 closesAt);
    error TaskNotClosed(uint256 task, uint64 opensAt);
    error NotSponsor(uint256 task, address caller);
    error NotAggregator(uint256 task, address caller);
    error RoundNotIncreasing(uint256 task, uint256 lastRound, uint256 round);
    error CumulativeDecreased(uint256 task, uint256 committed, uint256 cumulativeTotal);
    error ExceedsEscrow(uint256 task, uint256 escrow, uint256 cumulativeTotal);
    error ZeroCommitment(uint256 task, uint256 round);
    error UnknownRound(uint256 task, uint256 round);
    error InvalidProof(uint256 task, address account, uint256 cumulativeAmount);
    error NothingToClaim(uint256 task, address account, uint256 alreadyClaimed);
    error TaskUnderfunded(uint256 task, uint256 escrow, uint256 wouldPay);
    error NotAcknowledgedByAggregator(uint256 task, address signer);
    error AcksNotPayable(uint256 task, uint64 closesAt);
    error NothingToCredit(uint256 task, address account, uint256 counted);
    error RoundNotFinal(uint256 task, uint256 round, uint64 finalAt);
    error RoundIsVoided(uint256 task, uint256 round);
    error TaskFrozen(uint256 task);
    error ChallengeWindowClosed(uint256 task, uint256 round, uint64 closedAt);
    error EvidenceNotEarlier(uint256 task, uint256 round, uint256 evidenceRound);
    error NotChallenged(uint256 task, uint256 round, address account);
    error ResponseWindowOpen(uint256 task, uint256 round, address account, uint64 deadline);
    error ResponseWindowClosed(uint256 task, uint256 round, address account, uint64 deadline);
    error AlreadyAnswered(uint256 task, uint256 round, address account, uint256 shown);
    error AnswerTooLow(uint256 task, uint256 round, address account, uint256 amount, uint256 challenged);
    error ZeroRound(uint256 task);
    error NothingToRefund(uint256 task);
    error NotTaskOwner(uint256 task, address caller);
    error BpsTooHigh(uint16 bps);
    error ShareBelowTask(uint256 task, uint16 bps, uint16 minimum);
    error NoContributors(uint256 task, uint256 round);
    error UnknownListing(uint256 listing);
    error ListingInactive(uint256 listing);
    error NotSeller(uint256 listing, address caller);
    error UnknownPurchase(uint256 purchase);
    error WrongPurchaseState(uint256 purchase, PurchaseState state);
    error NotBuyer(uint256 purchase, address caller);
    error DeliveryWindowOpen(uint256 purchase, uint64 deadline);
    error DeliveryWindowClosed(uint256 purchase, uint64 deadline);
    error DisputeWindowOpen(uint256 purchase, uint64 deadline);
    error DisputeWindowClosed(uint256 purchase, uint64 deadline);
    error InvalidCurvePoint(uint256 x, uint256 y);
    error InvalidSecret(uint256 purchase);
    error DeliveryMismatch(uint256 purchase);
    error KeyMatchesCommitment(uint256 purchase);
    error PriceChanged(uint256 listing, uint256 price, uint256 maxPrice);

    constructor(
        IERC20 token_,
        uint64 deliveryWindow_,
        uint64 disputeWindow_,
        uint64 closeGrace_,
        uint64 challengeWindow_,
        uint64 responseWindow_
    ) EIP712("fedmarket", "2") {
        if (address(token_) == address(0)) revert ZeroAddress();
        if (
            deliveryWindow_ == 0 || disputeWindow_ == 0 || closeGrace_ == 0 || challengeWindow_ == 0
                || responseWindow_ == 0
        ) revert ZeroAmount();
        // A root committed at the end of the close grace must be final (or voided) before the
        // refund opens, a grace later, so that acks can be credited against it first.
        if (closeGrace_ < challengeWindow_ + responseWindow_) {
            revert GraceTooShort(closeGrace_, challengeWindow_ + responseWindow_);
        }
        token = token_;
        deliveryWindow = deliveryWindow_;
        disputeWindow = disputeWindow_;
        closeGrace = closeGrace_;
        challengeWindow = challengeWindow_;
        responseWindow = responseWindow_;
    }

    // ---------------------------------------------------------------- tasks and rewards

    /// @notice Open a task and escrow `budget` tokens (approved beforehand, or see
    /// createTaskWithPermit). `contributorsBps` is the least share of every sale of the task's
    /// models that goes to its devices, fixed now so devices know it before they contribute.
    function createTask(
        address aggregator,
        uint256 rewardPerUpdate,
        uint256 budget,
        uint16 contributorsBps,
        bytes calldata specCid
    ) external nonReentrant returns (uint256 task) {
        return _createTask(aggregator, rewardPerUpdate, budget, contributorsBps, specCid);
    }

    /// @notice createTask with an EIP-2612 permit: approval and escrow in one transaction.
    function createTaskWithPermit(
        address aggregator,
        uint256 rewardPerUpdate,
        uint256 budget,
        uint16 contributorsBps,
        bytes calldata specCid,
        uint256 permitDeadline,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external nonReentrant returns (uint256 task) {
        _permit(budget, permitDeadline, v, r, s);
        return _createTask(aggregator, rewardPerUpdate, budget, contributorsBps, specCid);
    }

    /// @notice Add tokens to an open task's escrow.
    function fundTask(uint256 task, uint256 amount) external nonReentrant {
        Task storage t = _openTask(task);
        if (amount == 0) revert ZeroAmount();
        t.escrow = SafeCast.toUint128(t.escrow + amount);
        token.safeTransferFrom(msg.sender, address(this), amount);
        emit TaskFunded(task, msg.sender, amount, t.escrow);
    }

    /// @notice Commit a round: a hiding commitment to its model, the model's ciphertext CID, the
    /// receipts bundle and the Merkle-sum root of cumulative rewards, whose leaves add up to
    /// `cumulativeTotal`. It pays once final (`roundFinal`).
    /// @dev Only the task's aggregator, until the close grace ends and unless a root of the task
    /// was voided; rounds strictly increase; totals never decrease and never pass the escrow.
    /// Four words per round, whatever the cohort.
    function commitRound(
        uint256 task,
        uint256 round,
        bytes32 modelCommitment,
        bytes calldata modelCid,
        bytes calldata bundleCid,
        bytes32 rewardsRoot,
        uint256 cumulativeTotal
    ) external {
        Task storage t = _openTask(task);
        if (msg.sender != t.aggregator) revert NotAggregator(task, msg.sender);
        if (frozenAt[task] != 0) revert TaskFrozen(task);
        if (round <= t.lastRound) revert RoundNotIncreasing(task, t.lastRound, round);
        if (cumulativeTotal < t.committed) revert CumulativeDecreased(task, t.committed, cumulativeTotal);
        // Escrow an acknowledgement took is not there for a root to promise again.
        uint256 available = t.escrow - paidOnAcks[task];
        if (cumulativeTotal > available) revert ExceedsEscrow(task, available, cumulativeTotal);
        if (modelCommitment == bytes32(0)) revert ZeroCommitment(task, round);
        rounds[task][round] = Round({
            rewardsKey: _rewardsKey(rewardsRoot, cumulativeTotal),
            committedAt: uint40(block.timestamp),
            openChallenges: 0,
            voided: false,
            rewardsRoot: rewardsRoot,
            modelCommitment: modelCommitment,
            cumulativeTotal: uint128(cumulativeTotal), // <= escrow, which fits
            priorRound: t.lastRound
        });
        t.lastRound = SafeCast.toUint64(round);
        t.committed = uint128(cumulativeTotal);
        emit RoundCommitted(task, round, modelCommitment, modelCid, bundleCid, rewardsRoot, cumulativeTotal);
    }

    /// @notice Pay `account` its cumulative reward as committed at `round` (any final round)
    /// minus what it already claimed. One claim covers any number of rounds. Anyone may submit
    /// it; the tokens go to `account`. `proof` is the leaf's packed Merkle-sum path
    /// (RewardSumTree, 48 bytes a node).
    function claim(
        uint256 task,
        address account,
        uint256 round,
        uint256 cumulativeAmount,
        bytes calldata proof
    ) external returns (uint256 amount) {
        // No lock of its own (a claim is every device's hot path): _pay writes claimedBy and
        // paid before it transfers, so a claim re-entered from itself finds nothing left, and
        // one entered from inside another payout is refused here.
        if (_reentrancyGuardEntered()) revert ReentrancyGuardReentrantCall();
        _requireFinal(task, round, _leafRound(task, round, account, cumulativeAmount, proof));
        amount = _pay(task, account, cumulativeAmount);
    }

    /// @notice Challenge `round`'s root for paying `account` less than `cumulativeAmount`, the
    /// account's leaf in the earlier committed root of `evidenceRound` (its Merkle-sum `proof`).
    /// Anyone may, so colluding accounts that stay silent cannot hide a decrease. Open until
    /// `challengeWindow` after the root's commit; then anyone has `responseWindow` to `answer`,
    /// or anyone may `voidRound`.
    function challenge(
        uint256 task,
        uint256 round,
        uint256 evidenceRound,
        address account,
        uint256 cumulativeAmount,
        bytes calldata proof
    ) external {
        if (evidenceRound >= round) revert EvidenceNotEarlier(task, round, evidenceRound);
        Round storage evidence = _leafRound(task, evidenceRound, account, cumulativeAmount, proof);
        if (evidence.voided) revert RoundIsVoided(task, evidenceRound);
        _openChallenge(task, round, account, cumulativeAmount);
    }

    /// @notice Challenge `round`'s root for paying `ack.device` less than the aggregator
    /// acknowledged for `ack.round` <= `round`. Anyone holding the ack may.
    function challengeWithAck(uint256 task, uint256 round, Ack calldata ack, bytes calldata signature) external {
        if (ack.task != task) revert UnknownTask(ack.task);
        if (ack.round > round || ack.round == 0) revert EvidenceNotEarlier(task, round, ack.round);
        _checkAck(ack, signature);
        _openChallenge(task, round, ack.device, ack.cumulativeAmount);
    }

    /// @notice Answer a challenge with the challenger's leaf in `round`'s root, paying it at least
    /// what the challenge named. Anyone holding the tree may answer.
    function answer(
        uint256 task,
        address account,
        uint256 round,
        uint256 cumulativeAmount,
        bytes calldata proof
    ) external {
        Challenge storage c = challenges[task][round][account];
        if (!c.open) revert NotChallenged(task, round, account);
        if (block.timestamp > c.deadline) revert ResponseWindowClosed(task, round, account, c.deadline);
        if (cumulativeAmount < c.amount) revert AnswerTooLow(task, round, account, cumulativeAmount, c.amount);
        Round storage r = _leafRound(task, round, account, cumulativeAmount, proof);
        c.open = false;
        c.amount = uint128(cumulativeAmount); // >= c.amount; a leaf of a root is <= its total
        --r.openChallenges;
        emit ChallengeAnswered(task, round, account);
    }

    /// @notice Void `round`'s root once a challenge of `account` went unanswered past its
    /// deadline: the root never pays, the task commits no more rounds, and its acknowledgements
    /// become payable from the escrow no final root reserves. Anyone may call it.
    function voidRound(uint256 task, uint256 round, address account) external {
        Challenge storage c = challenges[task][round][account];
        if (!c.open) revert NotChallenged(task, round, account);
        if (block.timestamp <= c.deadline) revert ResponseWindowOpen(task, round, account, c.deadline);
        Round storage r = rounds[task][round];
        if (r.voided) revert RoundIsVoided(task, round);
        r.voided = true;
        frozenAt[task] = uint64(block.timestamp);
        // The committed total is that of the latest round not voided (totals never decrease);
        // the walk only crosses voided rounds, and a frozen task commits no more.
        Task storage t = tasks[task];
        uint256 top = t.lastRound;
        while (top != 0 && rounds[task][top].voided) top = rounds[task][top].priorRound;
        t.committed = top == 0 ? 0 : rounds[task][top].cumulativeTotal;
        emit RoundVoided(task, round, account);
    }

    /// @notice Whether `round`'s root pays claims: committed, its challenge window over, no
    /// challenge open and not voided.
    function roundFinal(uint256 task, uint256 round) external view returns (bool) {
        Round storage r = rounds[task][round];
        return r.committedAt != 0 && !r.voided && r.openChallenges == 0
            && block.timestamp >= uint256(r.committedAt) + challengeWindow;
    }

    /// @notice Pay what the aggregator acknowledged to `ack.device`, minus what the device already
    /// claimed, once the task commits no more (its close grace is over, or a root was voided):
    /// this pays acknowledged rounds the aggregator never committed, or whose root was voided
    /// for leaving the device out. It pays only from the escrow that no committed root
    /// reserves. A device claims its leaf in the committed root first (`claim`), so that only
    /// what the ack adds is counted; otherwise `creditAck` counts the overlap once.
    function claimAcknowledged(Ack calldata ack, bytes calldata signature)
        external
        nonReentrant
        returns (uint256 amount)
    {
        Task storage t = _checkAck(ack, signature);
        bool committing = t.closesAt == 0 || block.timestamp < t.closesAt;
        if (committing && frozenAt[ack.task] == 0) revert AcksNotPayable(ack.task, t.closesAt);
        amount = _pay(ack.task, ack.device, ack.cumulativeAmount);
        // Acks are paid only from what no root reserves: committed + paidOnAcks <= escrow.
        uint256 onAcks = paidOnAcks[ack.task] + amount;
        if (t.committed + onAcks > t.escrow) revert TaskUnderfunded(ack.task, t.escrow - t.committed, onAcks);
        paidOnAcks[ack.task] = onAcks;
        ackCounted[ack.task][ack.device] += amount;
        emit AckClaimed(ack.task, ack.round, ack.device, ack.uploadDigest);
    }

    /// @notice Count `account`'s leaf in the task's committed root (the latest not voided) against
    /// what its acknowledgements were paid: that part is already reserved by the committed total,
    /// so it leaves paidOnAcks, and other devices' acks can be paid from it. For an ack claimed
    /// before (or instead of) the device's root claim. Anyone may call it once the root is
    /// final; acks are paid only once the task commits no more, so it stays the committed root.
    function creditAck(uint256 task, address account, uint256 leafAmount, bytes calldata proof)
        external
        returns (uint256 amount)
    {
        uint256 round = tasks[task].lastRound;
        while (round != 0 && rounds[task][round].voided) round = rounds[task][round].priorRound;
        _requireFinal(task, round, _leafRound(task, round, account, leafAmount, proof));
        uint256 counted = ackCounted[task][account];
        uint256 claimed = claimedBy[task][account];
        uint256 beyondLeaf = claimed > leafAmount ? claimed - leafAmount : 0;
        if (beyondLeaf >= counted) revert NothingToCredit(task, account, counted);
        amount = counted - beyondLeaf;
        ackCounted[task][account] = beyondLeaf;
        paidOnAcks[task] -= amount; // counted is part of it
        emit AckCredited(task, account, amount);
    }

    /// @notice Pay `account` its share of the contributors' revenue from sales of `round`'s
    /// model: revenue x (its cumulative reward at that round) / (that round's cumulative total),
    /// minus what it already took. Anyone may submit it; the tokens go to `account`.
    function claimSaleShare(
        uint256 task,
        address account,
        uint256 round,
        uint256 cumulativeAmount,
        bytes calldata proof
    ) external nonReentrant returns (uint256 amount) {
        Round storage r = _leafRound(task, round, account, cumulativeAmount, proof);
        _requireFinal(task, round, r);
        uint256 revenue = salesRevenue[task][round];
        if (revenue == 0) revert NothingToClaim(task, account, 0);
        uint256 due = Math.mulDiv(revenue, cumulativeAmount, r.cumulativeTotal);
        uint256 already = saleClaimedBy[task][round][account];
        if (due <= already) revert NothingToClaim(task, account, already);
        amount = due - already;
        uint256 paidOut = salesPaid[task][round] + amount;
        // Leaves add up to the total, so this holds; it stays as a second line of defence.
        if (paidOut > revenue) revert TaskUnderfunded(task, revenue, paidOut);
        salesPaid[task][round] = paidOut;
        saleClaimedBy[task][round][account] = due;
        token.safeTransfer(account, amount);
        emit SaleShareClaimed(task, round, account, amount);
    }

    /// @notice Start closing a task (sponsor only). The aggregator may still commit, and devices
    /// claim, for `closeGrace` seconds; then acks are paid directly for one more `closeGrace`,
    /// after which `refundUnspent` returns what nobody is owed.
    function closeTask(uint256 task) external {
        Task storage t = _openTask(task);
        if (msg.sender != t.sponsor) revert NotSponsor(task, msg.sender);
        if (t.closesAt != 0) revert TaskIsClosed(task, t.closesAt); // a second close must not extend it
        t.closesAt = uint64(block.timestamp) + closeGrace;
        emit TaskClosing(task, t.closesAt);
    }

    /// @notice A close grace after commits stop (and after any void), return to the sponsor the
    /// escrow above what may still be owed: the committed total (its roots may not be fully
    /// claimed yet) plus what was paid on acknowledgements (those may pay devices no root
    /// counts), or what was paid, if more. Anyone may call it; the tokens go to the sponsor.
    function refundUnspent(uint256 task) external nonReentrant returns (uint256 amount) {
        Task storage t = tasks[task];
        if (t.sponsor == address(0)) revert UnknownTask(task);
        if (t.closesAt == 0) revert TaskNotClosed(task, 0);
        // Once commits stop, and after a void, acks are paid directly for a close grace: they
        // come first.
        uint64 opens = uint64(Math.max(t.closesAt, frozenAt[task])) + closeGrace;
        if (block.timestamp < opens) revert TaskNotClosed(task, opens);
        uint256 reserved = Math.max(t.committed + paidOnAcks[task], t.paid);
        if (t.escrow <= reserved) revert NothingToRefund(task);
        amount = t.escrow - reserved;
        t.escrow = uint128(reserved); // below escrow, so it fits
        token.safeTransfer(t.sponsor, amount);
        emit TaskClosed(task, amount);
    }

    /// @notice Whether `round` of `task` was committed with exactly these values.
    function roundMatches(
        uint256 task,
        uint256 round,
        bytes32 modelCommitment,
        bytes32 rewardsRoot,
        uint256 cumulativeTotal
    ) external view returns (bool) {
        Round storage r = rounds[task][round];
        return r.modelCommitment != bytes32(0) && r.modelCommitment == modelCommitment
            && r.rewardsRoot == rewardsRoot && r.cumulativeTotal == cumulativeTotal;
    }

    // ---------------------------------------------------------------- receipts and acknowledgements

    /// @notice The address that signed `receipt` (EIP-712, domain "fedmarket" v2 on this contract).
    function receiptSigner(Receipt calldata receipt, bytes calldata signature) external view returns (address) {
        return ECDSA.recover(receiptDigest(receipt), signature);
    }

    function receiptDigest(Receipt calldata receipt) public view returns (bytes32) {
        return _hashTypedDataV4(keccak256(abi.encode(RECEIPT_TYPEHASH, receipt)));
    }

    function ackDigest(Ack calldata ack) public view returns (bytes32) {
        return _hashTypedDataV4(keccak256(abi.encode(ACK_TYPEHASH, ack)));
    }

    // ---------------------------------------------------------------- listings and sales

    /// @notice List the encrypted model of a final round. Only the task's sponsor or aggregator
    /// may; `contributorsBps` of every sale goes to that round's contributors.
    function list(
        uint256 task,
        uint256 round,
        bytes calldata assetCid,
        uint256 price,
        bytes32 keyCommitment,
        bytes calldata metadataCid,
        uint16 contributorsBps
    ) external returns (uint256 listing) {
        if (price == 0) revert ZeroAmount();
        if (contributorsBps > MAX_BPS) revert BpsTooHigh(contributorsBps);
        Task storage t = tasks[task];
        if (t.sponsor == address(0)) revert UnknownTask(task);
        if (msg.sender != t.sponsor && msg.sender != t.aggregator) revert NotTaskOwner(task, msg.sender);
        if (contributorsBps < t.contributorsBps) revert ShareBelowTask(task, contributorsBps, t.contributorsBps);
        Round storage r = rounds[task][round];
        if (r.modelCommitment == bytes32(0)) revert UnknownRound(task, round);
        _requireFinal(task, round, r);
        if (contributorsBps > 0 && r.cumulativeTotal == 0) revert NoContributors(task, round);
        listing = ++listingCount;
        listings[listing] = Listing({
            seller: msg.sender,
            task: uint64(task),
            contributorsBps: contributorsBps,
            active: true,
            round: uint64(round),
            price: price,
            keyCommitment: keyCommitment,
            assetCid: assetCid
        });
        emit Listed(
            listing,
            msg.sender,
            task,
            round,
            r.modelCommitment,
            assetCid,
            price,
            keyCommitment,
            metadataCid,
            contributorsBps
        );
    }

    /// @notice Stop selling a listing; purchases already made are unaffected.
    function delist(uint256 listing) external {
        Listing storage l = _listing(listing);
        if (msg.sender != l.seller) revert NotSeller(listing, msg.sender);
        l.active = false;
        emit Delisted(listing);
    }

    /// @notice Buy with a prior approval. `buyerKey` is a one-time alt_bn128 G1 public key;
    /// `maxPrice` guards against a price change in flight.
    function buy(uint256 listing, uint256[2] calldata buyerKey, uint256 maxPrice)
        external
        nonReentrant
        returns (uint256)
    {
        return _buy(listing, buyerKey, maxPrice);
    }

    /// @notice Buy in one transaction: EIP-2612 permit, payment into escrow, purchase recorded.
    function buyWithPermit(
        uint256 listing,
        uint256[2] calldata buyerKey,
        uint256 maxPrice,
        uint256 permitDeadline,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external nonReentrant returns (uint256) {
        _permit(maxPrice, permitDeadline, v, r, s);
        return _buy(listing, buyerKey, maxPrice);
    }

    /// @notice Deliver the asset key: `maskedKey` = key XOR keccak256(chain id, market, purchase,
    /// e·B) for the buyer's key B and an ephemeral key E = e·G. Opens the dispute window.
    function deliverKey(uint256 purchase, uint256[2] calldata ephemeralKey, bytes32 maskedKey) external {
        Purchase storage p = _purchaseIn(purchase, PurchaseState.Pending);
        Listing storage l = listings[p.listing];
        if (msg.sender != l.seller) revert NotSeller(p.listing, msg.sender);
        if (block.timestamp > p.deadline) revert DeliveryWindowClosed(purchase, p.deadline);
        _checkPoint(ephemeralKey[0], ephemeralKey[1]);
        p.state = PurchaseState.Delivered;
        p.deadline = uint64(block.timestamp) + disputeWindow;
        p.delivery = keccak256(abi.encode(ephemeralKey[0], ephemeralKey[1], maskedKey));
        emit KeyDelivered(purchase, ephemeralKey[0], ephemeralKey[1], maskedKey, p.deadline);
    }

    /// @notice Prove the delivered key wrong and take the payment back. The buyer reveals its
    /// one-time secret b; the contract checks b·G is the key it bought with, recomputes the key
    /// from the delivery and refunds only if it does not hash to the listing's key commitment.
    function dispute(uint256 purchase, uint256 buyerSecret, uint256[2] calldata ephemeralKey, bytes32 maskedKey)
        external
        nonReentrant
    {
        Purchase storage p = _purchaseIn(purchase, PurchaseState.Delivered);
        if (msg.sender != p.buyer) revert NotBuyer(purchase, msg.sender);
        if (block.timestamp > p.deadline) revert DisputeWindowClosed(purchase, p.deadline);
        if (keccak256(abi.encode(ephemeralKey[0], ephemeralKey[1], maskedKey)) != p.delivery) {
            revert DeliveryMismatch(purchase);
        }
        if (buyerSecret == 0 || buyerSecret >= ORDER) revert InvalidSecret(purchase);
        (uint256 bx, uint256 by) = _ecMul(1, 2, buyerSecret);
        if (keccak256(abi.encode(bx, by)) != p.buyerKey) revert InvalidSecret(purchase);
        (uint256 sx, uint256 sy) = _ecMul(ephemeralKey[0], ephemeralKey[1], buyerSecret);
        bytes32 key = maskedKey ^ keyMask(purchase, sx, sy);
        if (sha256(abi.encodePacked(key)) == listings[p.listing].keyCommitment) revert KeyMatchesCommitment(purchase);
        p.state = PurchaseState.Refunded;
        token.safeTransfer(p.buyer, p.price);
        emit Disputed(purchase, p.buyer, p.price);
    }

    /// @notice After an undisputed dispute window, release a delivered purchase's price: the
    /// seller's share becomes withdrawable and the contributors' share accrues to the listed
    /// round. Anyone may call it.
    function settle(uint256 purchase) external {
        Purchase storage p = _purchaseIn(purchase, PurchaseState.Delivered);
        if (block.timestamp <= p.deadline) revert DisputeWindowOpen(purchase, p.deadline);
        p.state = PurchaseState.Settled;
        Listing storage l = listings[p.listing];
        uint256 contributors = (p.price * l.contributorsBps) / MAX_BPS;
        uint256 seller = p.price - contributors;
        salesRevenue[l.task][l.round] += contributors;
        owed[l.seller] += seller;
        emit Settled(purchase, seller, contributors);
    }

    /// @notice The buyer's money back when no key came within the delivery window.
    function refund(uint256 purchase) external nonReentrant {
        Purchase storage p = _purchaseIn(purchase, PurchaseState.Pending);
        if (msg.sender != p.buyer) revert NotBuyer(purchase, msg.sender);
        if (block.timestamp <= p.deadline) revert DeliveryWindowOpen(purchase, p.deadline);
        p.state = PurchaseState.Refunded;
        token.safeTransfer(p.buyer, p.price);
        emit Refunded(purchase, p.buyer, p.price);
    }

    /// @notice Withdraw the caller's settled seller proceeds.
    function withdraw() external nonReentrant returns (uint256 amount) {
        amount = owed[msg.sender];
        if (amount == 0) revert ZeroAmount();
        owed[msg.sender] = 0;
        token.safeTransfer(msg.sender, amount);
        emit Withdrawn(msg.sender, amount);
    }

    /// @notice The mask a delivered key is XORed with, for the shared point (sx, sy).
    function keyMask(uint256 purchase, uint256 sx, uint256 sy) public view returns (bytes32) {
        return keccak256(abi.encode(block.chainid, address(this), purchase, sx, sy));
    }

    function listingAssetCid(uint256 listing) external view returns (bytes memory) {
        return _listing(listing).assetCid;
    }

    // ---------------------------------------------------------------- internals

    function _createTask(
        address aggregator,
        uint256 rewardPerUpdate,
        uint256 budget,
        uint16 contributorsBps,
        bytes calldata specCid
    ) private returns (uint256 task) {
        if (aggregator == address(0)) revert ZeroAddress();
        if (budget == 0 || rewardPerUpdate == 0) revert ZeroAmount();
        if (contributorsBps > MAX_BPS) revert BpsTooHigh(contributorsBps);
        task = ++taskCount;
        Task storage t = tasks[task];
        t.sponsor = msg.sender;
        t.aggregator = aggregator;
        t.contributorsBps = contributorsBps;
        t.rewardPerUpdate = SafeCast.toUint128(rewardPerUpdate);
        t.escrow = SafeCast.toUint128(budget);
        token.safeTransferFrom(msg.sender, address(this), budget);
        emit TaskCreated(task, msg.sender, aggregator, rewardPerUpdate, budget, contributorsBps, specCid);
    }

    /// @dev The committed round whose root holds the leaf (account, cumulativeAmount) with
    /// `proof`, or a revert.
    function _leafRound(
        uint256 task,
        uint256 round,
        address account,
        uint256 cumulativeAmount,
        bytes calldata proof
    ) private view returns (Round storage r) {
        r = rounds[task][round];
        if (r.committedAt == 0) revert UnknownRound(task, round);
        (bytes32 root, uint256 sum) = RewardSumTree.rootOf(account, cumulativeAmount, proof);
        if (_rewardsKey(root, sum) != r.rewardsKey) revert InvalidProof(task, account, cumulativeAmount);
    }

    function _rewardsKey(bytes32 root, uint256 total) private pure returns (bytes23) {
        bytes32 key;
        assembly ("memory-safe") {
            mstore(0x00, root) // keccak256(abi.encode(root, total)) in scratch space
            mstore(0x20, total)
            key := keccak256(0x00, 0x40)
        }
        return bytes23(key);
    }

    function _requireFinal(uint256 task, uint256 round, Round storage r) private view {
        if (r.voided) revert RoundIsVoided(task, round);
        uint64 finalAt = uint64(r.committedAt) + challengeWindow;
        if (block.timestamp < finalAt || r.openChallenges != 0) revert RoundNotFinal(task, round, finalAt);
    }

    function _openChallenge(uint256 task, uint256 round, address account, uint256 amount) private {
        Round storage r = rounds[task][round];
        if (r.committedAt == 0) revert UnknownRound(task, round);
        if (r.voided) revert RoundIsVoided(task, round);
        uint64 closedAt = uint64(r.committedAt) + challengeWindow;
        if (block.timestamp >= closedAt) revert ChallengeWindowClosed(task, round, closedAt);
        if (amount == 0) revert ZeroAmount(); // owed nothing: nothing to challenge
        Challenge storage c = challenges[task][round][account];
        uint128 wanted = SafeCast.toUint128(amount);
        if (!c.open) {
            // An answered challenge reopens only for more than the answer showed, so an account
            // cannot make the aggregator answer the same question twice.
            if (c.deadline != 0 && wanted <= c.amount) revert AlreadyAnswered(task, round, account, c.amount);
            c.open = true;
            c.deadline = uint64(block.timestamp) + responseWindow;
            ++r.openChallenges;
        }
        if (wanted > c.amount) c.amount = wanted;
        emit ChallengeOpened(task, round, account, c.amount, c.deadline);
    }

    function _checkAck(Ack calldata ack, bytes calldata signature) private view returns (Task storage t) {
        t = tasks[ack.task];
        if (t.sponsor == address(0)) revert UnknownTask(ack.task);
        if (ack.round == 0) revert ZeroRound(ack.task);
        address signer = ECDSA.recover(ackDigest(ack), signature);
        if (signer != t.aggregator) revert NotAcknowledgedByAggregator(ack.task, signer);
    }

    /// @dev Pay `account` up to `cumulativeAmount` in `task`, within the task's own escrow.
    function _pay(uint256 task, address account, uint256 cumulativeAmount) private returns (uint256 amount) {
        mapping(address => uint256) storage claimed = claimedBy[task];
        uint256 already = claimed[account];
        if (cumulativeAmount <= already) revert NothingToClaim(task, account, already);
        unchecked {
            amount = cumulativeAmount - already; // > 0: checked just above
        }
        Task storage t = tasks[task];
        uint256 paid = t.paid + amount;
        if (paid > t.escrow) revert TaskUnderfunded(task, t.escrow, paid);
        t.paid = uint128(paid); // <= escrow, which fits
        claimed[account] = cumulativeAmount;
        token.safeTransfer(account, amount);
        emit Claimed(task, account, amount);
    }

    function _buy(uint256 listing, uint256[2] calldata buyerKey, uint256 maxPrice) private returns (uint256 purchase) {
        Listing storage l = _listing(listing);
        if (!l.active) revert ListingInactive(listing);
        if (l.price > maxPrice) revert PriceChanged(listing, l.price, maxPrice);
        _checkPoint(buyerKey[0], buyerKey[1]);
        purchase = ++purchaseCount;
        uint64 deadline = uint64(block.timestamp) + deliveryWindow;
        purchases[purchase] = Purchase({
            listing: uint64(listing),
            deadline: deadline,
            state: PurchaseState.Pending,
            buyer: msg.sender,
            price: l.price,
            buyerKey: keccak256(abi.encode(buyerKey[0], buyerKey[1])),
            delivery: bytes32(0)
        });
        token.safeTransferFrom(msg.sender, address(this), l.price);
        emit Purchased(purchase, listing, msg.sender, l.price, buyerKey[0], buyerKey[1], deadline);
    }

    /// @dev A front-run permit must not block the payment: fall back to the existing allowance.
    function _permit(uint256 amount, uint256 permitDeadline, uint8 v, bytes32 r, bytes32 s) private {
        try IERC20Permit(address(token)).permit(msg.sender, address(this), amount, permitDeadline, v, r, s) {}
            catch {}
    }

    /// @dev Reject anything but a point of alt_bn128's G1 other than infinity (the cofactor is 1,
    /// so every such point is in the prime-order group).
    function _checkPoint(uint256 x, uint256 y) private pure {
        if (x >= FIELD || y >= FIELD || (x == 0 && y == 0)) revert InvalidCurvePoint(x, y);
        if (mulmod(y, y, FIELD) != addmod(mulmod(mulmod(x, x, FIELD), x, FIELD), 3, FIELD)) {
            revert InvalidCurvePoint(x, y);
        }
    }

    /// @dev Scalar multiplication on alt_bn128 G1 with the EIP-196 precompile (address 0x07).
    function _ecMul(uint256 x, uint256 y, uint256 scalar) private view returns (uint256, uint256) {
        (bool ok, bytes memory out) = address(0x07).staticcall(abi.encode(x, y, scalar));
        if (!ok || out.length != 64) revert InvalidCurvePoint(x, y);
        return abi.decode(out, (uint256, uint256));
    }

    function _openTask(uint256 task) private view returns (Task storage t) {
        t = tasks[task];
        if (t.sponsor == address(0)) revert UnknownTask(task);
        if (t.closesAt != 0 && block.timestamp >= t.closesAt) revert TaskIsClosed(task, t.closesAt);
    }

    function _listing(uint256 listing) private view returns (Listing storage l) {
        l = listings[listing];
        if (l.seller == address(0)) revert UnknownListing(listing);
    }

    function _purchaseIn(uint256 purchase, PurchaseState wanted) private view returns (Purchase storage p) {
        p = purchases[purchase];
        if (p.state == PurchaseState.None) revert UnknownPurchase(purchase);
        if (p.state != wanted) revert WrongPurchaseState(purchase, p.state);
    }
}
