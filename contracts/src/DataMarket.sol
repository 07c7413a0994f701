// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";

/// @title fedmarket's data market
/// @notice Sponsors escrow rewards for federated-learning tasks; each task's aggregator commits
/// rounds with a Merkle root of cumulative per-device rewards; devices claim any number of rounds
/// at once. Sellers list encrypted models; buyers pay in one transaction and get the model key
/// sealed to their X25519 key, or their money back after the delivery window.
/// @dev Per-round storage is O(1) whatever the cohort size: one commitment hash per round plus
/// the task's latest root and total. CIDs are bytes in events and in listing storage.
contract DataMarket is ReentrancyGuardTransient, EIP712 {
    using SafeERC20 for IERC20;

    struct Task {
        address sponsor;
        address aggregator;
        uint64 lastRound;
        bool closed;
        uint256 rewardPerUpdate;
        uint256 escrow; // everything ever deposited for contributors: budget + sales shares
        uint256 committed; // cumulative rewards of the latest round, never above escrow
        bytes32 rewardsRoot; // Merkle root of (account, cumulative amount) at the latest round
    }

    struct Listing {
        address seller;
        uint64 task; // 0: not tied to a task
        uint16 contributorsBps; // share of each sale added to the task's reward pool
        bool active;
        uint256 price;
        bytes32 keyCommitment; // sha256(asset key)
        bytes assetCid; // the encrypted asset
    }

    enum PurchaseState {
        None,
        Pending,
        Delivered,
        Refunded
    }

    struct Purchase {
        uint64 listing;
        uint64 deadline;
        PurchaseState state;
        address buyer;
        uint256 price;
        bytes32 buyerKey; // X25519 public key the sealed key is addressed to
    }

    /// @notice A device's signed statement of one contributed update (EIP-712).
    struct Receipt {
        uint256 task;
        uint64 round;
        address device;
        bytes modelCid; // the global model the update was trained from
        bytes32 uploadDigest; // sha256 of the masked upload
        uint64 weight; // examples behind the update (capped)
        uint64 epsilonMicros; // epsilon spent so far on this dataset, x 1e6
        uint64 deltaE18; // delta, x 1e18
    }

    bytes32 public constant RECEIPT_TYPEHASH = keccak256(
        "Receipt(uint256 task,uint64 round,address device,bytes modelCid,bytes32 uploadDigest,"
        "uint64 weight,uint64 epsilonMicros,uint64 deltaE18)"
    );
    uint16 public constant MAX_BPS = 10_000;

    IERC20 public immutable token;
    uint64 public immutable deliveryWindow;

    uint64 public taskCount;
    uint64 public listingCount;
    uint64 public purchaseCount;
    mapping(uint256 task => Task) public tasks;
    mapping(uint256 task => mapping(uint256 round => bytes32 commitment)) public roundCommitments;
    mapping(uint256 task => mapping(address account => uint256 amount)) public claimedBy;
    mapping(uint256 listing => Listing) public listings;
    mapping(uint256 purchase => Purchase) public purchases;
    mapping(address account => uint256 amount) public owed; // pull payments to sellers and sponsors

    event TaskCreated(
        uint256 indexed task,
        address indexed sponsor,
        address indexed aggregator,
        uint256 rewardPerUpdate,
        uint256 budget,
        bytes specCid
    );
    event TaskFunded(uint256 indexed task, address indexed from, uint256 amount, uint256 escrow);
    event RoundCommitted(
        uint256 indexed task,
        uint256 indexed round,
        bytes modelCid,
        bytes bundleCid,
        bytes32 rewardsRoot,
        uint256 cumulativeTotal
    );
    event Claimed(uint256 indexed task, address indexed account, uint256 amount, uint256 cumulativeAmount);
    event TaskClosed(uint256 indexed task, uint256 refund);
    event Listed(
        uint256 indexed listing,
        address indexed seller,
        uint256 indexed task,
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
        bytes32 buyerKey,
        uint64 deadline
    );
    event KeyDelivered(uint256 indexed purchase, bytes sealedKey, uint256 sellerShare, uint256 contributorsShare);
    event Refunded(uint256 indexed purchase, address indexed buyer, uint256 amount);
    event Withdrawn(address indexed account, uint256 amount);

    error ZeroAddress();
    error ZeroAmount();
    error UnknownTask(uint256 task);
    error TaskIsClosed(uint256 task);
    error NotSponsor(uint256 task, address caller);
    error NotAggregator(uint256 task, address caller);
    error RoundNotIncreasing(uint256 task, uint256 lastRound, uint256 round);
    error CumulativeDecreased(uint256 task, uint256 committed, uint256 cumulativeTotal);
    error ExceedsEscrow(uint256 task, uint256 escrow, uint256 cumulativeTotal);
    error InvalidProof(uint256 task, address account, uint256 cumulativeAmount);
    error NothingToClaim(uint256 task, address account, uint256 alreadyClaimed);
    error NotTaskOwner(uint256 task, address caller);
    error BpsTooHigh(uint16 bps);
    error UnknownListing(uint256 listing);
    error ListingInactive(uint256 listing);
    error NotSeller(uint256 listing, address caller);
    error UnknownPurchase(uint256 purchase);
    error NotPending(uint256 purchase, PurchaseState state);
    error NotBuyer(uint256 purchase, address caller);
    error DeliveryWindowOpen(uint256 purchase, uint64 deadline);
    error DeliveryWindowClosed(uint256 purchase, uint64 deadline);
    error EmptySealedKey(uint256 purchase);
    error PriceChanged(uint256 listing, uint256 price, uint256 maxPrice);

    constructor(IERC20 token_, uint64 deliveryWindow_) EIP712("fedmarket", "1") {
        if (address(token_) == address(0)) revert ZeroAddress();
        if (deliveryWindow_ == 0) revert ZeroAmount();
        token = token_;
        deliveryWindow = deliveryWindow_;
    }

    // ---------------------------------------------------------------- tasks and rewards

    /// @notice Open a task and escrow `budget` tokens (approved beforehand, or see createTaskWithPermit).
    function createTask(address aggregator, uint256 rewardPerUpdate, uint256 budget, bytes calldata specCid)
        external
        nonReentrant
        returns (uint256 task)
    {
        return _createTask(aggregator, rewardPerUpdate, budget, specCid);
    }

    /// @notice createTask with an EIP-2612 permit: approval and escrow in one transaction.
    function createTaskWithPermit(
        address aggregator,
        uint256 rewardPerUpdate,
        uint256 budget,
        bytes calldata specCid,
        uint256 permitDeadline,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external nonReentrant returns (uint256 task) {
        _permit(budget, permitDeadline, v, r, s);
        return _createTask(aggregator, rewardPerUpdate, budget, specCid);
    }

    /// @notice Add tokens to a task's escrow.
    function fundTask(uint256 task, uint256 amount) external nonReentrant {
        Task storage t = _openTask(task);
        if (amount == 0) revert ZeroAmount();
        t.escrow += amount;
        token.safeTransferFrom(msg.sender, address(this), amount);
        emit TaskFunded(task, msg.sender, amount, t.escrow);
    }

    /// @notice Commit a round: its model, receipts bundle and the root of cumulative rewards.
    /// @dev Only the task's aggregator; rounds strictly increase; totals never decrease and never
    /// pass the escrow. Stores one hash per round, so the cost does not grow with the cohort.
    function commitRound(
        uint256 task,
        uint256 round,
        bytes calldata modelCid,
        bytes calldata bundleCid,
        bytes32 rewardsRoot,
        uint256 cumulativeTotal
    ) external {
        Task storage t = _openTask(task);
        if (msg.sender != t.aggregator) revert NotAggregator(task, msg.sender);
        if (round <= t.lastRound) revert RoundNotIncreasing(task, t.lastRound, round);
        if (cumulativeTotal < t.committed) revert CumulativeDecreased(task, t.committed, cumulativeTotal);
        if (cumulativeTotal > t.escrow) revert ExceedsEscrow(task, t.escrow, cumulativeTotal);
        t.lastRound = SafeCast.toUint64(round);
        t.committed = cumulativeTotal;
        t.rewardsRoot = rewardsRoot;
        roundCommitments[task][round] = _roundCommitment(modelCid, bundleCid, rewardsRoot, cumulativeTotal);
        emit RoundCommitted(task, round, modelCid, bundleCid, rewardsRoot, cumulativeTotal);
    }

    /// @notice Pay `account` its cumulative reward minus what it already claimed. One claim
    /// covers any number of rounds. Anyone may submit it; the tokens go to `account`.
    function claim(uint256 task, address account, uint256 cumulativeAmount, bytes32[] calldata proof)
        external
        nonReentrant
        returns (uint256 amount)
    {
        // An unknown task has a zero root, which no proof reaches: no separate check needed.
        bytes32 leaf = keccak256(bytes.concat(keccak256(abi.encode(account, cumulativeAmount))));
        if (!MerkleProof.verifyCalldata(proof, tasks[task].rewardsRoot, leaf)) {
            revert InvalidProof(task, account, cumulativeAmount);
        }
        uint256 already = claimedBy[task][account];
        if (cumulativeAmount <= already) revert NothingToClaim(task, account, already);
        amount = cumulativeAmount - already;
        claimedBy[task][account] = cumulativeAmount;
        token.safeTransfer(account, amount);
        emit Claimed(task, account, amount, cumulativeAmount);
    }

    /// @notice Close a task (sponsor only): no more rounds; unspent escrow goes back to the sponsor.
    /// Committed rewards stay claimable.
    function closeTask(uint256 task) external nonReentrant {
        Task storage t = _openTask(task);
        if (msg.sender != t.sponsor) revert NotSponsor(task, msg.sender);
        t.closed = true;
        uint256 unspent = t.escrow - t.committed;
        t.escrow = t.committed;
        if (unspent > 0) token.safeTransfer(t.sponsor, unspent);
        emit TaskClosed(task, unspent);
    }

    /// @notice Whether `commitment` data matches what was committed for a round.
    function roundMatches(
        uint256 task,
        uint256 round,
        bytes calldata modelCid,
        bytes calldata bundleCid,
        bytes32 rewardsRoot,
        uint256 cumulativeTotal
    ) external view returns (bool) {
        bytes32 stored = roundCommitments[task][round];
        return stored != bytes32(0) && stored == _roundCommitment(modelCid, bundleCid, rewardsRoot, cumulativeTotal);
    }

    // ---------------------------------------------------------------- receipts

    /// @notice The address that signed `receipt` (EIP-712, domain "fedmarket" v1 on this contract).
    function receiptSigner(Receipt calldata receipt, bytes calldata signature) external view returns (address) {
        return ECDSA.recover(receiptDigest(receipt), signature);
    }

    function receiptDigest(Receipt calldata receipt) public view returns (bytes32) {
        return _hashTypedDataV4(
            keccak256(
                abi.encode(
                    RECEIPT_TYPEHASH,
                    receipt.task,
                    receipt.round,
                    receipt.device,
                    keccak256(receipt.modelCid),
                    receipt.uploadDigest,
                    receipt.weight,
                    receipt.epsilonMicros,
                    receipt.deltaE18
                )
            )
        );
    }

    // ---------------------------------------------------------------- listings and sales

    /// @notice List an encrypted asset. Tied to a task, only its sponsor or aggregator may list,
    /// and `contributorsBps` of every sale goes to the task's reward pool.
    function list(
        uint256 task,
        bytes calldata assetCid,
        uint256 price,
        bytes32 keyCommitment,
        bytes calldata metadataCid,
        uint16 contributorsBps
    ) external returns (uint256 listing) {
        if (price == 0) revert ZeroAmount();
        if (contributorsBps > MAX_BPS) revert BpsTooHigh(contributorsBps);
        if (task != 0) {
            Task storage t = tasks[task];
            if (t.sponsor == address(0)) revert UnknownTask(task);
            if (msg.sender != t.sponsor && msg.sender != t.aggregator) revert NotTaskOwner(task, msg.sender);
        } else if (contributorsBps != 0) {
            revert BpsTooHigh(contributorsBps);
        }
        listing = ++listingCount;
        listings[listing] = Listing({
            seller: msg.sender,
            task: uint64(task),
            contributorsBps: contributorsBps,
            active: true,
            price: price,
            keyCommitment: keyCommitment,
            assetCid: assetCid
        });
        emit Listed(listing, msg.sender, task, assetCid, price, keyCommitment, metadataCid, contributorsBps);
    }

    /// @notice Stop selling a listing; purchases already made are unaffected.
    function delist(uint256 listing) external {
        Listing storage l = _listing(listing);
        if (msg.sender != l.seller) revert NotSeller(listing, msg.sender);
        l.active = false;
        emit Delisted(listing);
    }

    /// @notice Buy with a prior approval. `maxPrice` guards against a price change in flight.
    function buy(uint256 listing, bytes32 buyerKey, uint256 maxPrice) external nonReentrant returns (uint256) {
        return _buy(listing, buyerKey, maxPrice);
    }

    /// @notice Buy in one transaction: EIP-2612 permit, payment into escrow, purchase recorded.
    function buyWithPermit(
        uint256 listing,
        bytes32 buyerKey,
        uint256 maxPrice,
        uint256 permitDeadline,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external nonReentrant returns (uint256) {
        _permit(maxPrice, permitDeadline, v, r, s);
        return _buy(listing, buyerKey, maxPrice);
    }

    /// @notice Deliver the asset key sealed to the buyer's key; releases the payment: the seller's
    /// share becomes withdrawable and the contributors' share joins the task's reward pool.
    function deliverKey(uint256 purchase, bytes calldata sealedKey) external nonReentrant {
        Purchase storage p = _pending(purchase);
        Listing storage l = listings[p.listing];
        if (msg.sender != l.seller) revert NotSeller(p.listing, msg.sender);
        if (block.timestamp > p.deadline) revert DeliveryWindowClosed(purchase, p.deadline);
        if (sealedKey.length == 0) revert EmptySealedKey(purchase);
        p.state = PurchaseState.Delivered;
        uint256 contributors = (p.price * l.contributorsBps) / MAX_BPS;
        uint256 seller = p.price - contributors;
        if (contributors > 0) {
            Task storage t = tasks[l.task];
            if (t.closed) {
                owed[t.sponsor] += contributors; // a closed task takes no more rewards
            } else {
                t.escrow += contributors;
                emit TaskFunded(l.task, address(this), contributors, t.escrow);
            }
        }
        owed[l.seller] += seller;
        emit KeyDelivered(purchase, sealedKey, seller, contributors);
    }

    /// @notice The buyer's money back when no key came within the delivery window.
    function refund(uint256 purchase) external nonReentrant {
        Purchase storage p = _pending(purchase);
        if (msg.sender != p.buyer) revert NotBuyer(purchase, msg.sender);
        if (block.timestamp <= p.deadline) revert DeliveryWindowOpen(purchase, p.deadline);
        p.state = PurchaseState.Refunded;
        token.safeTransfer(p.buyer, p.price);
        emit Refunded(purchase, p.buyer, p.price);
    }

    /// @notice Withdraw what the market owes the caller (seller proceeds, late contributor shares).
    function withdraw() external nonReentrant returns (uint256 amount) {
        amount = owed[msg.sender];
        if (amount == 0) revert ZeroAmount();
        owed[msg.sender] = 0;
        token.safeTransfer(msg.sender, amount);
        emit Withdrawn(msg.sender, amount);
    }

    function listingAssetCid(uint256 listing) external view returns (bytes memory) {
        return _listing(listing).assetCid;
    }

    // ---------------------------------------------------------------- internals

    function _createTask(address aggregator, uint256 rewardPerUpdate, uint256 budget, bytes calldata specCid)
        private
        returns (uint256 task)
    {
        if (aggregator == address(0)) revert ZeroAddress();
        if (budget == 0 || rewardPerUpdate == 0) revert ZeroAmount();
        task = ++taskCount;
        Task storage t = tasks[task];
        t.sponsor = msg.sender;
        t.aggregator = aggregator;
        t.rewardPerUpdate = rewardPerUpdate;
        t.escrow = budget;
        token.safeTransferFrom(msg.sender, address(this), budget);
        emit TaskCreated(task, msg.sender, aggregator, rewardPerUpdate, budget, specCid);
    }

    function _buy(uint256 listing, bytes32 buyerKey, uint256 maxPrice) private returns (uint256 purchase) {
        Listing storage l = _listing(listing);
        if (!l.active) revert ListingInactive(listing);
        if (l.price > maxPrice) revert PriceChanged(listing, l.price, maxPrice);
        purchase = ++purchaseCount;
        uint64 deadline = uint64(block.timestamp) + deliveryWindow;
        purchases[purchase] = Purchase({
            listing: uint64(listing),
            deadline: deadline,
            state: PurchaseState.Pending,
            buyer: msg.sender,
            price: l.price,
            buyerKey: buyerKey
        });
        token.safeTransferFrom(msg.sender, address(this), l.price);
        emit Purchased(purchase, listing, msg.sender, l.price, buyerKey, deadline);
    }

    /// @dev A front-run permit must not block the payment: fall back to the existing allowance.
    function _permit(uint256 amount, uint256 permitDeadline, uint8 v, bytes32 r, bytes32 s) private {
        try IERC20Permit(address(token)).permit(msg.sender, address(this), amount, permitDeadline, v, r, s) {}
            catch {}
    }

    function _roundCommitment(
        bytes calldata modelCid,
        bytes calldata bundleCid,
        bytes32 rewardsRoot,
        uint256 cumulativeTotal
    ) private pure returns (bytes32) {
        return keccak256(abi.encode(keccak256(modelCid), keccak256(bundleCid), rewardsRoot, cumulativeTotal));
    }

    function _openTask(uint256 task) private view returns (Task storage t) {
        t = tasks[task];
        if (t.sponsor == address(0)) revert UnknownTask(task);
        if (t.closed) revert TaskIsClosed(task);
    }

    function _listing(uint256 listing) private view returns (Listing storage l) {
        l = listings[listing];
        if (l.seller == address(0)) revert UnknownListing(listing);
    }

    function _pending(uint256 purchase) private view returns (Purchase storage p) {
        p = purchases[purchase];
        if (p.state == PurchaseState.None) revert UnknownPurchase(purchase);
        if (p.state != PurchaseState.Pending) revert NotPending(purchase, p.state);
    }
}
