"""`patchrank serve`: run the scoring service until interrupted (or deploy it and detach).

Consumes an existing Redis stream (filled by `patchrank enqueue` or any producer) with
the Serve app of deploy/serve_app.py; prints the backlog and counters periodically.
For a cluster deployment from YAML use `serve deploy deploy/serve_config.yaml` instead.
"""

from __future__ import annotations

import argparse
import time

from patchrank.pipeline.commands.options import number, output_folder


def register(sub: argparse._SubParsersAction) -> None:
    from patchrank.pipeline.commands.screen import add_service_args

    p = sub.add_parser("serve", help="run the scoring service on an existing Redis stream until Ctrl-C")
    p.add_argument("--checkpoint", required=True, help="checkpoint path or s3://bucket/key")
    p.add_argument("--out", required=True, help="Parquet result dataset: directory or s3://bucket/prefix")
    p.add_argument(
        "--roots", nargs="+", required=True, help="folders or s3://bucket/prefix roots the service may read scans from"
    )
    p.add_argument(
        "--every", type=number(float, 0, open_low=True), default=10.0, help="status line every N seconds (default 10)"
    )
    p.add_argument(
        "--detach", action="store_true", help="deploy to the cluster at --address and exit (the app keeps running)"
    )
    p.add_argument(
        "--app-name",
        default="patchrank",
        help="Serve application name (default patchrank); refused if an app of that name already runs",
    )
    add_service_args(p, private_redis=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from patchrank.model.checkpoint import load_checkpoint
    from patchrank.pipeline.commands.screen import app_args, redis_password
    from patchrank.pipeline.service.screening import (
        check_redis,
        consumer_ready,
        deploy,
        name_taken,
        scorer_info,
        services,
        undeploy,
    )
    from patchrank.pipeline.service.settings import check_redis_url, redact_url
    from patchrank.pipeline.service.streams import StreamClient

    if not args.redis_url:
        raise ValueError("--redis-url (or $PATCHRANK_REDIS_URL) is required: the service consumes an existing stream")
    if args.detach and not args.address:
        raise ValueError("--detach needs --address (a Ray cluster that outlives this command)")
    check_redis_url(args.redis_url)
    pw = redis_password(args)
    check_redis(args.redis_url, **({"password": pw.get_secret_value()} if pw else {}))  # before Ray starts
    load_checkpoint(args.checkpoint)  # a bad checkpoint: one line now, not a failed deployment
    if not args.address:  # on a cluster the nodes write --out, not this machine
        output_folder(args.out, "--out")
    name = args.app_name
    with services(args.redis_url, args.address, args.num_cpus) as url:
        if name_taken(name):
            raise ValueError(
                f"a Serve app named {name!r} already runs on this Ray cluster; pass --app-name NAME "
                f"(or stop it: serve delete {name})"
            )
        app = app_args(args, redis_url=url, checkpoint=args.checkpoint, out=args.out, roots=args.roots)
        deploy(app, name)
        try:
            consumer_ready(name)
        except ValueError:
            undeploy(name)
            raise
        info = scorer_info(name)
        print(
            f"serving {redact_url(url)} stream {app.service.keys.stream} with model {info.model_version}; "
            f"results in {app.service.output_dir} (Serve app {name})"
        )
        if args.detach:
            print(f"deployed; stop with `serve shutdown` or `serve delete {name}`")
            return 0
        client = StreamClient.from_url(url, app.service.keys, **app.service.redis_kwargs())
        try:
            while True:
                b = client.backlog()
                print(
                    f"{time.strftime('%H:%M:%S')} backlog {b.total} (lag {b.lag}, pending {b.pending}), "
                    f"consumers {b.consumers}, stream length {b.length}",
                    flush=True,
                )
                time.sleep(args.every)
        except KeyboardInterrupt:
            print("stopping: unacknowledged entries stay pending and are reclaimed by the next consumer")
        finally:
            client.close()
            undeploy(name)
    return 0
