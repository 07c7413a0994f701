"""PNG plots of a demo report (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_report(report: dict[str, Any], out: Path) -> list[Path]:
    """accuracy.png (per round), epsilon.png (per device per round) and, for paid runs,
    rewards.png (cumulative rewards per device); returns the paths."""
    rounds = [r["round"] for r in report["rounds"]]
    paths = [out / "accuracy.png", out / "epsilon.png"]

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(
        [0, *rounds],
        [report["initial_accuracy"]] + [r["accuracy"] for r in report["rounds"]],
        marker="o",
    )
    ax.set(xlabel="round", ylabel="held-out accuracy", title="Global model accuracy", ylim=(0, 1))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    devices = list(report["rounds"][0]["epsilon_per_device"]) if report["rounds"] else []
    for device in devices:
        values = [r["epsilon_per_device"][device] for r in report["rounds"]]
        ax.plot([0, *rounds], [0.0, *values], marker=".", label=device)
    caps = {d["epsilon_cap"] for d in report["devices"]}
    for cap in caps:
        ax.axhline(cap, color="red", linestyle="--", linewidth=1, label=f"cap {cap:g}")
    ax.set(
        xlabel="round",
        ylabel=f"epsilon (delta={report['delta']:g})",
        title="Privacy spent per device (from each device's ledger)",
    )
    ax.grid(alpha=0.3)
    if len(devices) <= 12:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(paths[1], dpi=120)
    plt.close(fig)

    history = report.get("reward_history")
    if history:
        paths.append(out / "rewards.png")
        fig, ax = plt.subplots(figsize=(6, 4))
        for device, totals in history["devices"].items():
            ax.plot([0, *history["rounds"]], [0.0, *totals], marker=".", label=device)
        ax.set(
            xlabel="round",
            ylabel="tokens",
            title="Cumulative rewards per device (committed on chain)",
        )
        ax.grid(alpha=0.3)
        if len(history["devices"]) <= 12:
            ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(paths[2], dpi=120)
        plt.close(fig)
    return paths
