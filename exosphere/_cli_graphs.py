"""``exosphere graph apply|get|list|delete``: graph templates."""

from __future__ import annotations

import argparse

from exosphere._cli_base import EXIT_OK, Commands, Context, Parser, add_command, add_json
from exosphere._cli_input import load_graph, text_type
from exosphere._cli_render import dump_json, graph_list_table, graph_view

__all__ = ["register"]


async def _apply(ctx: Context, args: argparse.Namespace) -> int:
    graph = load_graph(args.file, args.namespace, args.name)
    assert graph.namespace is not None and graph.name is not None  # set by load_graph
    async with ctx.manager(graph.namespace) as sm:
        saved = await sm.upsert_graph(
            graph.name,
            graph.nodes,
            secrets=graph.secrets,
            retry_policy=graph.retry_policy,
            store_config=graph.store_config,
            triggers=graph.triggers,
        )
    ctx.out.print(
        f"applied graph [bold]{saved.name}[/] version [bold]{saved.version}[/] "
        f"in namespace {saved.namespace} ({len(saved.nodes)} nodes)",
        highlight=False,
    )
    return EXIT_OK


async def _get(ctx: Context, args: argparse.Namespace) -> int:
    async with ctx.manager(args.namespace) as sm:
        graph = await sm.get_graph(args.name)
    if args.json:
        dump_json(ctx.out, graph)
    else:
        ctx.out.print(graph_view(graph))
    return EXIT_OK


async def _list(ctx: Context, args: argparse.Namespace) -> int:
    async with ctx.manager(args.namespace) as sm:
        graphs = await sm.list_graphs()
    if args.json:
        dump_json(ctx.out, graphs)
    elif not graphs:
        ctx.err.print(f"no graphs in namespace {args.namespace}", highlight=False)
    else:
        ctx.out.print(graph_list_table(graphs))
    return EXIT_OK


async def _delete(ctx: Context, args: argparse.Namespace) -> int:
    async with ctx.manager(args.namespace) as sm:
        await sm.delete_graph(args.name, force=args.force)
    ctx.out.print(f"deleted graph {args.name} from namespace {args.namespace}", highlight=False)
    return EXIT_OK


def register(commands: Commands, common: Parser) -> None:
    graph = commands.add_parser(
        "graph", parents=[common], help="apply, read, list and delete graph templates"
    ).add_subparsers(dest="graph_command", metavar="COMMAND", required=True)
    sub = add_command(graph, "apply", _apply, "create or replace a graph template from a JSON or YAML file", common)
    sub.add_argument(
        "file",
        metavar="FILE",
        help="graph file ('-' for stdin) with namespace, name, nodes and optional secrets, retry_policy, "
        "store_config, triggers; a node's namespace defaults to the graph's; omitted secrets keep the stored ones",
    )
    sub.add_argument("--namespace", type=text_type, help="namespace, instead of the file's")
    sub.add_argument("--name", type=text_type, help="graph name, instead of the file's")
    sub = add_command(graph, "get", _get, "show a graph template", common)
    sub.add_argument("namespace", type=text_type, metavar="NAMESPACE")
    sub.add_argument("name", type=text_type, metavar="NAME")
    add_json(sub, "the graph")
    sub = add_command(graph, "list", _list, "list the graph templates of a namespace", common)
    sub.add_argument("namespace", type=text_type, metavar="NAMESPACE")
    add_json(sub, "the graphs")
    sub = add_command(graph, "delete", _delete, "delete a graph template", common)
    sub.add_argument("namespace", type=text_type, metavar="NAMESPACE")
    sub.add_argument("name", type=text_type, metavar="NAME")
    sub.add_argument("--force", action="store_true", help="also cancel its pending runs")
