"""``llm-throttle``: serve, check-config, status, dispatch.

Exit codes: 0 success, 1 runtime failure (cannot reach the proxy), 2 bad configuration or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence

from .access_log import log_to_stream
from .config import Config, ConfigError, load_config, quick_config
from .version import package_version, python_version

EXIT_CONFIG = 2
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _config_from_args(args: argparse.Namespace) -> Config:
    if args.config:
        return load_config(args.config)
    if args.upstream:
        return quick_config(args.upstream, args.max_in_flight, args.listen or "127.0.0.1:8080",
                            api_key=args.upstream_key)
    raise ConfigError(["give --config FILE, or --upstream URL for the file-less quick mode"])


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # uvloop is optional on platforms without it
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def cmd_serve(args: argparse.Namespace) -> int:
    from .config import parse_listen
    from .limits.redis_errors import StoreMisconfigured
    from .runner import serve_forever

    try:
        config = _config_from_args(args)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    host, port = config.listen_host, config.listen_port
    if args.listen:
        try:
            host, port = parse_listen(args.listen)
        except ValueError as exc:
            print(f"--listen: {exc}", file=sys.stderr)
            return EXIT_CONFIG
    models = ", ".join(config.models)

    def ready(url: str) -> None:
        admin = ""
        if config.admin_listen:
            admin = f"  admin=http://{config.admin_listen[0]}:{config.admin_listen[1]}"
        print(f"llm-throttle listening on {url}  store={config.store.split('@')[-1]}"
              f"  models={models}{admin}", flush=True)

    loop = _new_loop()
    try:
        loop.run_until_complete(serve_forever(config, host, port, on_ready=ready,
                                              config_path=args.config))
    except OSError as exc:
        print(f"cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except StoreMisconfigured as exc:  # wrong credentials, a missing ACL permission
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    finally:
        loop.close()
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file)
    except ConfigError as exc:
        print(f"{args.file}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"{args.file}: OK  store={config.store.split('@')[-1]}  "
          f"upstreams={len(config.upstreams)}  models={len(config.models)}  "
          f"gpus={len(config.gpus)}  clients={len(config.clients)}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from .cli_errors import describe_failure, hide_password
    from .status import render_table
    from .status_view import render_watch

    url = args.url.rstrip("/")
    if not url.endswith("/throttle/status"):
        url += "/throttle/status"
    where = hide_password(args.redis) if args.redis else url

    async def fetch() -> dict:
        if args.redis:
            from .limits.redis import read_status_document

            return await read_status_document(args.redis, key_prefix=args.key_prefix)
        import aiohttp

        headers = {"Authorization": f"Bearer {args.admin_key}"} if args.admin_key else {}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session, \
                session.get(url, headers=headers) as response:
            response.raise_for_status()
            return await response.json()

    async def watch() -> int:
        """Redraw every --interval seconds (--count times, default until Ctrl-C); a failed
        read is shown in place and retried."""
        clear = "\x1b[H\x1b[2J" if sys.stdout.isatty() else ""
        shown = 0
        while args.count is None or shown < args.count:
            try:
                view = render_watch(await fetch())
            except Exception as exc:  # noqa: BLE001 (any failure is shown, retried next time)
                view = f"cannot read status: {describe_failure(exc, where)}"
            shown += 1
            print(f"{clear}{view}\n", flush=True)
            if args.count is None or shown < args.count:
                await asyncio.sleep(args.interval)
        return 0

    if args.watch:
        try:
            return asyncio.run(watch())
        except KeyboardInterrupt:
            return 0
    try:
        doc = asyncio.run(fetch())
    except Exception as exc:  # noqa: BLE001 (any failure to read the status is reported)
        print(f"cannot read status: {describe_failure(exc, where)}", file=sys.stderr)
        return 1
    print(json.dumps(doc, indent=2) if args.json else render_table(doc))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-throttle",
        description="A drop-in OpenAI-compatible proxy that caps load on self-hosted LLMs.",
    )
    parser.add_argument("--log-level", default="INFO", help=", ".join(LOG_LEVELS))
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s {package_version()} (Python {python_version()})")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", "-c", help="YAML configuration file")
    serve.add_argument("--upstream", help="quick mode: the one upstream's origin URL")
    serve.add_argument("--upstream-key", help="quick mode: API key injected upstream")
    serve.add_argument("--max-in-flight", type=int, help="quick mode: in-flight cap")
    serve.add_argument("--listen", help="host:port (overrides the file's listen)")
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check-config", help="validate a configuration file")
    check.add_argument("file")
    check.set_defaults(func=cmd_check_config)

    status = sub.add_parser("status", help="show in flight, caps and queues")
    status.add_argument("--url", default="http://127.0.0.1:8080",
                        help="a proxy's base URL (or its /throttle/status URL)")
    status.add_argument("--redis", help="read the shared Redis store directly, no proxy needed")
    status.add_argument("--key-prefix", default="llmthrottle")
    status.add_argument("--admin-key", help="admin key, when the proxy requires one")
    status.add_argument("--json", action="store_true", help="print the JSON document")
    status.add_argument("--watch", action="store_true",
                        help="live view: in flight vs cap as bars, queue, buckets, rates")
    status.add_argument("--interval", type=float, default=2.0, help="--watch refresh, seconds")
    status.add_argument("--count", type=int, help="--watch: stop after this many refreshes")
    status.set_defaults(func=cmd_status)

    try:  # the capacity sweep lives in the load-test kit, installed with the proxy
        from loadtest import sweep as capacity_sweep
    except ImportError:
        pass
    else:
        sweep = sub.add_parser("sweep", help="step concurrency against an engine, find its knee")
        capacity_sweep.configure_parser(sweep)
        sweep.set_defaults(func=capacity_sweep.cli_main)

    try:
        from .dispatcher.cli import add_dispatch_arguments, run_dispatch
    except ImportError:
        pass
    else:
        dispatch = sub.add_parser("dispatch", help="pace Hermes Kanban dispatch by the backlog")
        add_dispatch_arguments(dispatch)
        dispatch.set_defaults(func=run_dispatch)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.log_level.upper() not in LOG_LEVELS:
        print(f"llm-throttle: --log-level must be one of {', '.join(LOG_LEVELS)}, "
              f"got {args.log_level!r}", file=sys.stderr)
        return EXIT_CONFIG
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log_to_stream()  # the access log (when enabled in the config) writes bare lines
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
