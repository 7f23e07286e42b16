"""`ringlock certs DIR`: a private CA, node and client certificates, and a secret."""

from __future__ import annotations

import click

from ringlock.errors import ConfigError


@click.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--nodes", type=click.IntRange(1, 64), default=3, show_default=True,
              help="Node certificates to make (node-1.pem ... node-N.pem).")
@click.option("--hosts", default="127.0.0.1,localhost,::1", show_default=True,
              help="Host names and IP addresses the node certificates are valid for.")
@click.option("--force", is_flag=True, help="Replace a CA already in DIRECTORY.")
def certs(directory: str, nodes: int, hosts: str, force: bool) -> None:
    """Make a private CA, node certificates, a client certificate and a cluster secret
    (for tests and private clusters; keys and the secret are mode 0600)."""
    from ringlock.certs import make_certs

    try:
        made = make_certs(directory, nodes=nodes, overwrite=force,
                          hosts=tuple(h.strip() for h in hosts.split(",") if h.strip()))
    except ConfigError as error:
        raise click.UsageError(str(error)) from error
    click.echo(f"CA         {made.ca}  (its key: {made.ca_key}; keep it private)")
    for node, (cert, key) in sorted(made.nodes.items()):
        click.echo(f"node {node:<5} {cert}  {key}")
    click.echo(f"client     {made.client[0]}  {made.client[1]}")
    click.echo(f"secret     {made.secret}")
    node_cert, node_key = made.nodes[1]
    click.echo(f"\nA node:   ringlock serve ... --secret-file {made.secret} \\\n"
               f"            --tls-cert {node_cert} --tls-key {node_key} --tls-ca {made.ca}\n"
               f"A client: export RINGLOCK_SECRET_FILE={made.secret} "
               f"RINGLOCK_TLS_CA={made.ca}")
