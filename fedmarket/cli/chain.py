"""``fedmarket chain``: a local anvil chain and the market's deployment on any chain."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from web3 import Web3

from fedmarket.cli.keys import key_store, passphrase
from fedmarket.config import fedmarket_home
from fedmarket.exceptions import InvalidInput
from fedmarket.ledger import Deployment, deploy
from fedmarket.ledger.chain import DEFAULT_PORT, DEV_CHAIN_ID, LocalChain, dev_accounts, rpc

app = typer.Typer(help="Local chain (anvil) and contract deployment.", no_args_is_help=True)

PortOption = Annotated[int, typer.Option(help="Local chain port on 127.0.0.1.")]
RpcOption = Annotated[
    str | None, typer.Option(help="Any EVM JSON-RPC URL (default: the local chain).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]


def chain_folder() -> Path:
    return fedmarket_home() / "chain"


def deployment_path(chain_id: int) -> Path:
    return chain_folder() / "deployments" / f"{chain_id}.json"


@app.command()
def up(port: PortOption = DEFAULT_PORT, as_json: JsonOption = False) -> None:
    """Start anvil in the background; its state persists under $FEDMARKET_HOME/chain."""
    status = LocalChain(chain_folder(), port=port).up()
    payload = {"rpc_url": status.rpc_url, "chain_id": status.chain_id, "pid": status.pid}
    typer.echo(json.dumps(payload) if as_json else f"anvil on {status.rpc_url} (pid {status.pid})")


@app.command()
def down(port: PortOption = DEFAULT_PORT) -> None:
    """Stop the local anvil (it saves its state first)."""
    stopped = LocalChain(chain_folder(), port=port).down()
    typer.echo("stopped" if stopped else "not running")


@app.command()
def status(port: PortOption = DEFAULT_PORT, as_json: JsonOption = False) -> None:
    """Is the local chain running; its chain id, block and recorded deployment."""
    current = LocalChain(chain_folder(), port=port).status()
    deployed = deployment_path(DEV_CHAIN_ID)
    payload = {
        "running": current.running,
        "rpc_url": current.rpc_url,
        "chain_id": current.chain_id,
        "block": current.block,
        "deployment": json.loads(deployed.read_text()) if deployed.exists() else None,
    }
    if as_json:
        typer.echo(json.dumps(payload))
    elif current.running:
        typer.echo(f"running on {current.rpc_url}: chain {current.chain_id}, block {current.block}")
    else:
        typer.echo(f"not running ({current.rpc_url})")


@app.command(name="deploy")
def deploy_command(
    rpc_url: RpcOption = None,
    key: Annotated[
        str | None,
        typer.Option(
            help="Deployer key name (`fedmarket keys`); default on the local chain: "
            "anvil's first development account."
        ),
    ] = None,
    port: PortOption = DEFAULT_PORT,
    as_json: JsonOption = False,
) -> None:
    """Deploy FedToken and DataMarket; record their addresses under $FEDMARKET_HOME/chain."""
    url = rpc_url or LocalChain(chain_folder(), port=port).rpc_url
    chain_id = int(str(rpc(url, "eth_chainId")), 16)
    if key is not None:
        deployer = key_store().load(key, passphrase(confirm=False))
    elif chain_id == DEV_CHAIN_ID:
        deployer = dev_accounts(1)[0]
    else:
        raise InvalidInput(f"chain {chain_id} is not a local dev chain: pass --key NAME")
    w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": 60}))
    deployment: Deployment = deploy(w3, deployer)
    deployment.save(deployment_path(chain_id))
    payload = {"chain_id": chain_id, "token": deployment.token, "market": deployment.market}
    typer.echo(
        json.dumps(payload) if as_json else f"token {deployment.token}\nmarket {deployment.market}"
    )
