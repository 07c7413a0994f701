"""Where the market contracts live on one chain, saved as JSON under the data directory."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from eth_utils.address import to_checksum_address

from fedmarket.exceptions import DataError
from fedmarket.files import atomic_write


@dataclass(frozen=True)
class Deployment:
    chain_id: int
    token: str
    market: str
    block: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "token", to_checksum_address(self.token))
        object.__setattr__(self, "market", to_checksum_address(self.market))

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(asdict(self), indent=2) + "\n"
        atomic_write(path, lambda out: out.write(text.encode()))

    @classmethod
    def load(cls, path: Path) -> Deployment:
        try:
            document = json.loads(path.read_text())
            return cls(**document)
        except FileNotFoundError:
            raise DataError(
                f"no deployment recorded at {path}; run `fedmarket chain deploy` first"
            ) from None
        except (ValueError, TypeError) as exc:
            raise DataError(f"{path} is not a deployment record ({exc})") from None
