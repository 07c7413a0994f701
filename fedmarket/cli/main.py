"""The ``fedmarket`` command. Errors are translated here, once, into one line and an exit code."""

from __future__ import annotations

import sys

import typer

from fedmarket.cli import audit, chain, crypto, device, keys, market, server, store
from fedmarket.cli.demo import demo
from fedmarket.cli.verify import verify
from fedmarket.exceptions import FedmarketError

app = typer.Typer(
    name="fedmarket",
    help="Federated learning with differential privacy and an encrypted data market.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals may hold keys and passphrases
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Federated learning with differential privacy and an encrypted data market."""


app.command(name="demo")(demo)
app.command(name="verify")(verify)
app.add_typer(device.app, name="device")
app.add_typer(server.app, name="server")
app.add_typer(market.app, name="market")
app.add_typer(store.app, name="store")
app.add_typer(crypto.app, name="crypto")
app.add_typer(chain.app, name="chain")
app.add_typer(keys.app, name="keys")
app.add_typer(audit.app, name="audit")


def run() -> None:
    """Console entry point: run the app, turning fedmarket errors into one clear line."""
    try:
        app(standalone_mode=False)
    except FedmarketError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # click usage errors carry their own exit code
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
