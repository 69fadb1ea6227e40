"""The ``images`` command of the ``meshlab`` CLI (wired in by ``meshlab.cli``):

meshlab images build [--kind NAME] [--tool docker|podman]
"""

from __future__ import annotations

import argparse
from typing import Any


def register_cli(subparsers: Any) -> None:
    """Add ``images`` to the CLI's subparsers (``argparse._SubParsersAction``)."""
    parser = subparsers.add_parser(
        "images", help="build the services' container images for a real cluster"
    )
    actions = parser.add_subparsers(dest="images_action", metavar="ACTION")
    build = actions.add_parser(
        "build",
        help="build istio-meshlab/service-a:0.1.0 and istio-meshlab/service-b-v1:0.1.0",
        description="Build the services' images with docker or podman, tagged as the "
        "manifests in deployments/ expect; with --kind, load them into that kind cluster.",
    )
    build.add_argument("--kind", metavar="NAME", help="load the images into kind cluster NAME")
    build.add_argument("--tool", choices=["docker", "podman"], default="docker",
                       help="container engine to build with (default docker)")  # fmt: skip
    build.set_defaults(func=cmd_images_build)
    parser.set_defaults(func=lambda args: _usage(parser))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def cmd_images_build(args: argparse.Namespace) -> int:
    from meshlab.kubernetes.images import build

    names = build(kind_cluster=args.kind, tool=args.tool)
    where = f" and loaded into kind cluster {args.kind}" if args.kind else ""
    print(f"Built {', '.join(names)}{where}.")
    return 0
