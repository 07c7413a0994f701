"""The Flower app components our FAB names (``fedmarket/deploy/app/pyproject.toml``).

They run inside task processes that ``fedmarket server start`` and ``fedmarket device join``
fork, which hand them their role (task and aggregator key; data, cap and payout key).
"""

from __future__ import annotations

from fedmarket.deploy.device import make_deployed_client_app
from fedmarket.deploy.server import make_deployed_server_app

server_app = make_deployed_server_app()
client_app = make_deployed_client_app()
