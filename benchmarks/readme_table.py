"""Regenerate the README's benchmark tables from benchmarks/results/*.json.

Run: ``python -m benchmarks.readme_table``. Replaces the text between
``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` markers.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from benchmarks.common import RESULTS

README = Path(__file__).resolve().parents[1] / "README.md"


def dp_overhead(doc: dict) -> str:
    lines = [
        "| model | Opacus mode | DP step / plain step | plain ms | DP ms "
        "| per-sample grads | clip+noise+step |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in doc["rows"]:
        lines.append(
            f"| {r['model']} | {r['mode']} | {r['ratio']:.2f}x | {r['nonprivate_ms']:.3f} | "
            f"{r['private_ms']:.3f} | {r['per_sample_grad_share']:.0%} | "
            f"{r['clip_noise_step_share']:.0%} |"
        )
    return "\n".join(lines)


def dp_randomness(doc: dict) -> str:
    lines = [
        "| draw | size | seeded torch ms | Opacus secure (4x torch) ms | OS CSPRNG ms "
        "| OS ÷ seeded |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in doc["rows"]:
        secure = "-" if r["secure_seeded_ms"] is None else f"{r['secure_seeded_ms']:.3f}"
        lines.append(
            f"| {r['kind']}: {r['what']} | {r['size']:,} | {r['seeded_ms']:.3f} | {secure} | "
            f"{r['os_ms']:.3f} | {r['os_over_seeded']:.1f}x |"
        )
    return "\n".join(lines)


def dp_utility(doc: dict) -> str:
    lines = [
        "| epsilon cap | noise multiplier | final accuracy | max epsilon spent | declined |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in doc["rows"]:
        eps = r["epsilon_max"]
        lines.append(
            f"| {r['epsilon_cap']} | {r['noise_multiplier']:.2f} | {r['final_accuracy']:.3f} | "
            f"{'-' if eps in (None, float('inf')) else f'{eps:.2f}'} | {r['declined']} |"
        )
    return "\n".join(lines)


def privacy_audit(doc: dict) -> str:
    lines = [
        f"| round (device {doc['device']}, demo settings) | trials a side | AUC "
        f"| ε lower bound ({doc['confidence']:.0%}) | accounted ε (this round, δ = "
        f"{doc['delta']:g}) | statistic | wall time |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for r in doc["rows"]:
        s = r["settings"]
        what = (
            f"DP-SGD: \N{GREEK SMALL LETTER SIGMA} {s['noise_multiplier']:g}, "
            f"q {s['sample_rate']:.3g}, {s['steps']} steps, clip {s['max_grad_norm']:g}"
            if s["private"]
            else "no DP (plain SGD)"
        )
        accounted = r["accounted_epsilon"]
        lines.append(
            f"| {what} | {r['trials']:,} | {r['auc']:.3f} | {r['epsilon_lower_bound']:.2f} | "
            f"{'∞' if accounted is None else f'{accounted:.2f}'} | {r['statistic']} | "
            f"{r['seconds']:.0f} s |"
        )
    return "\n".join(lines)


def secagg(doc: dict) -> str:
    lines = [
        "| n | params | k / t | mask ns/param (stock) | mask speedup | upload B/param (stock) "
        "| server unmask s (stock) | round with / without |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in doc["rows"]:
        overhead = r.get("round_overhead")
        lines.append(
            f"| {r['n']} | {r['params']:,} | {r['neighbours']} / {r['threshold']} | "
            f"{r['mask_ns_per_param']:.1f} ({r['stock_mask_ns_per_param']:.1f}) | "
            f"{r['mask_speedup']:.1f}x | {r['upload_bytes_per_param']:.2f} "
            f"({r['stock_upload_bytes_per_param']:.2f}) | {r['unmask_s']:.3f} "
            f"({r['stock_unmask_s']:.3f}) | "
            + ("-" if overhead is None else f"{overhead:.2f}x ({r['round_s']:.1f} s)")
            + " |"
        )
    stages = ("setup", "roster", "share_keys", "check_shares", "consistency", "unmask")
    lines += [
        "",
        "| n | params | ms per device: " + " / ".join(stages) + " | server ms: same stages |",
        "|---:|---:|---:|---:|",
    ]
    for r in doc["rows"]:
        if "device_setup_ms" not in r:
            continue
        device = " / ".join(f"{r[f'device_{s}_ms']:.1f}" for s in stages)
        server = " / ".join(f"{r[f'server_{s}_ms']:.0f}" for s in stages)
        lines.append(f"| {r['n']} | {r['params']:,} | {device} | {server} |")
    lines += [
        "",
        "| devices per round | k / t | dropped | all devices + server, one process | per device |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in doc["scale"]:
        lines.append(
            f"| {r['n']:,} | {r['neighbours']} / {r['threshold']} | {r['dropped']} | "
            f"{r['round_s_all_devices_one_process']:.1f} s | {r['per_device_ms']:.1f} ms |"
        )
    return "\n".join(lines)


def store(doc: dict) -> str:
    lines = [
        "| measure | ours MiB/s | baseline MiB/s | ratio | goal |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in doc["rows"]:
        baseline = r.get("baseline_mib_s")
        ratio = r.get("ratio")
        goal = r.get("goal")
        lines.append(
            f"| {r['measure']} | {r['ours_mib_s']:.0f} | "
            f"{'-' if baseline is None else f'{baseline:.0f}'} | "
            f"{'-' if ratio is None else f'{ratio:.2f}'} | "
            f"{'report' if goal is None else f'>= {goal}'} |"
        )
    return "\n".join(lines)


def gas(doc: dict) -> str:
    rows = doc["rows"]
    lines = [
        "| devices per round | commitRound gas | gas per update | naive gas per update "
        "| naive ÷ ours | goal |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in (r for r in rows if r["kind"] == "per_update"):
        goal = f"<= {r['goal']:,}" if r["goal"] else "-"
        lines.append(
            f"| {r['devices']:,} | {r['commit_gas']:,} | {r['gas_per_update']:,.0f} | "
            f"{r['naive_gas_per_update']:,.0f} | {r['naive_over_ours']:.0f}x | {goal} |"
        )
    lines += [
        "",
        "| rounds claimed at once | cohort | first claim: proof length | gas "
        "| later claim: proof length | gas | goal |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in (r for r in rows if r["kind"] == "claim"):
        lines.append(
            f"| {r['rounds']} | {r['cohort']} | {r['first_proof_length']} | "
            f"{r['first_claim_gas']:,} | {r['later_proof_length']} | {r['later_claim_gas']:,} "
            f"| <= {r['goal']:,} |"
        )
    lines += ["", "| operation | gas | note |", "|---|---:|---|"]
    for r in (r for r in rows if r["kind"] == "operation"):
        lines.append(f"| {r['operation']} | {r['gas']:,} | {r['note']} |")
    return "\n".join(lines)


def round_overhead(doc: dict) -> str:
    parts = ("dp_sgd", "secagg", "receipts", "store", "chain_commit", "publish_other")
    lines = [
        "| devices | plain FedAvg round | full private round | full ÷ plain | goal "
        "| plain Flower | DP-SGD | SecAgg+ | receipts | store | chain commit | other |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in doc["rows"]:
        shares = r["shares"]
        lines.append(
            f"| {r['devices']} | {r['plain_round_s']:.2f} s | {r['full_round_s']:.2f} s | "
            f"{r['full_round_ratio']:.2f}x | <= {doc['goal_full_round_ratio']}x | "
            f"{shares['plain_flower_round']:.0%} | "
            + " | ".join(f"{shares[p]:.0%}" for p in parts)
            + " |"
        )
    return "\n".join(lines)


def deploy(doc: dict) -> str:
    lines = [
        "| ClientApp processes | devices | rounds | s/round deployed | s/round simulation "
        "| deploy_vs_sim |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in doc["rows"]:
        lines.append(
            f"| {r['mode']} | {r['devices']} | {r['rounds']} | {r['seconds_per_round']:.2f} | "
            f"{r['simulation_seconds_per_round']:.2f} | {r['deploy_vs_sim']:.2f}x |"
        )
    lines += [
        "",
        f"Warm ÷ cold start: {1 / doc['warm_speedup']:.2f} (cold is "
        f"{doc['warm_speedup']:.1f}x slower per round).",
    ]
    return "\n".join(lines)


def _escape(table: str) -> str:
    return table.replace("\\", "\\\\")


TABLES = {
    "dp_overhead": dp_overhead,
    "dp_randomness": dp_randomness,
    "dp_utility": dp_utility,
    "privacy_audit": privacy_audit,
    "secagg": secagg,
    "store": store,
    "gas": gas,
    "round_overhead": round_overhead,
    "deploy": deploy,
}


def main() -> None:
    text = README.read_text()
    for name, render in TABLES.items():
        path = RESULTS / f"{name}.json"
        if not path.exists():
            continue
        table = render(json.loads(path.read_text()))
        pattern = re.compile(rf"(<!-- bench:{name} -->\n).*?(<!-- /bench:{name} -->)", re.S)
        text, count = pattern.subn(rf"\g<1>{_escape(table)}\n\g<2>", text)
        if count != 1:
            raise SystemExit(f"README.md has no <!-- bench:{name} --> block")
    README.write_text(text)
    print(f"updated {README}")


if __name__ == "__main__":
    main()
