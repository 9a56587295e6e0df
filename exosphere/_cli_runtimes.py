"""``exosphere nodes list`` and ``exosphere runtimes list``: what is registered and who is connected."""

from __future__ import annotations

import argparse

from rich.text import Text

from exosphere._cli_base import ANY_NAMESPACE, EXIT_OK, Commands, Context, Parser, add_command, add_json
from exosphere._cli_input import text_type
from exosphere._cli_render import dump_json, runtime_list_table

__all__ = ["register"]


async def _nodes_list(ctx: Context, args: argparse.Namespace) -> int:
    async with ctx.manager(args.namespace) as sm:
        nodes = sorted(await sm.list_nodes())
        online = {name for r in await sm.list_runtimes() if not r.draining for name in r.node_names}
    if args.json:
        dump_json(ctx.out, [{"name": n, "online": n in online} for n in nodes])
    elif not nodes:
        ctx.err.print(f"no nodes registered in namespace {args.namespace}", highlight=False)
    else:
        width = max(len(n) for n in nodes)
        for name in nodes:
            mark = Text("online", style="green") if name in online else Text("offline (no runtime)", style="red")
            ctx.out.print(Text.assemble(name.ljust(width + 2), mark), highlight=False, soft_wrap=True)
    return EXIT_OK


async def _runtimes_list(ctx: Context, args: argparse.Namespace) -> int:
    namespace = args.namespace or ANY_NAMESPACE
    async with ctx.manager(namespace) as sm:
        runtimes = await sm.list_runtimes(all_namespaces=not args.namespace)
    if args.json:
        dump_json(ctx.out, runtimes)
    elif not runtimes:
        where = f"in namespace {args.namespace}" if args.namespace else "in any namespace"
        ctx.err.print(f"no runtime connected {where}", highlight=False)
    else:
        ctx.out.print(runtime_list_table(runtimes))
    return EXIT_OK


def register(commands: Commands, common: Parser) -> None:
    nodes = commands.add_parser("nodes", parents=[common], help="list registered nodes").add_subparsers(
        dest="nodes_command", metavar="COMMAND", required=True
    )
    sub = add_command(nodes, "list", _nodes_list, "list the nodes registered in a namespace", common)
    sub.add_argument("namespace", type=text_type, metavar="NAMESPACE")
    add_json(sub, "the nodes, each with whether a connected runtime hosts it")

    runtimes = commands.add_parser("runtimes", parents=[common], help="list connected runtimes").add_subparsers(
        dest="runtimes_command", metavar="COMMAND", required=True
    )
    sub = add_command(
        runtimes, "list", _runtimes_list, "list the runtimes connected now, their nodes and credit", common
    )
    sub.add_argument("namespace", type=text_type, metavar="NAMESPACE", nargs="?", help="only this namespace")
    add_json(sub, "the runtimes")
