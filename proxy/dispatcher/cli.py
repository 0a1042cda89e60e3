"""``llm-throttle dispatch``: flags, wiring, and the process lifetime of the companion.

:func:`add_dispatch_arguments` and :func:`run_dispatch` are what ``proxy/cli.py`` mounts as the
``dispatch`` subcommand; ``python -m proxy.dispatcher`` runs the same thing standalone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import sys
from pathlib import Path

from aiohttp import web

from .backlog import BacklogError, BacklogSource, HttpStatusBacklog, RedisStatusBacklog
from .endpoints import status_app
from .helper import helper_for
from .hermes import HermesCLI
from .hermes_model import BoardProbe, MaxSemantics
from .lock import (
    GATEWAY_LOCK,
    BoardLocks,
    FileLock,
    NullLock,
    file_lock_factory,
    gateway_dispatch_warnings,
    redis_lock_factory,
)
from .loop import Dispatcher
from .policy import Watermarks
from .pushed import PushedBacklog, events_url_for
from .ratio import RatioSettings
from .settings import DispatchSettings
from .sqlite_probe import SQLiteProbe, kanban_root

log = logging.getLogger("llm_throttle.dispatch")

DEFAULT_STATUS_URL = "http://127.0.0.1:8080/throttle/status"
DEFAULT_LISTEN = "127.0.0.1:8090"


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def _ratio(text: str) -> float:
    value = float(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _regex(text: str) -> re.Pattern[str]:
    try:
        return re.compile(text)
    except re.error as exc:
        raise argparse.ArgumentTypeError(f"bad regular expression {text!r}: {exc}") from exc


def add_dispatch_arguments(parser: argparse.ArgumentParser) -> None:
    """Every flag of ``llm-throttle dispatch`` (documented in docs/dispatcher.md)."""
    src = parser.add_argument_group("backlog source")
    src.add_argument("--status-url", metavar="URL",
                     help=f"the proxy's JSON status (default: {DEFAULT_STATUS_URL}, or the "
                     "Redis store when --redis is given)")
    src.add_argument("--status-key", default=os.environ.get("LLM_THROTTLE_ADMIN_KEY"),
                     metavar="KEY", help="bearer key for the status URL "
                     "(default: $LLM_THROTTLE_ADMIN_KEY)")
    src.add_argument("--models", type=_csv, default=(), metavar="A,B",
                     help="models the boards' workers use; backlog = their queued requests "
                     "(default: the proxy's whole queue depth)")
    src.add_argument("--events", default="auto", metavar="auto|off|URL",
                     help="follow the proxy's GET /throttle/events stream, so a freed slot is "
                     "seen within 0.1 s and reads cost no request; auto: next to --status-url; "
                     "without a stream (an older proxy) the status is polled "
                     "(default: %(default)s)")
    src.add_argument("--redis", metavar="URL",
                     help="the Redis store shared by the proxies: the backlog is read from it "
                     "(unless --status-url is given) and the board locks live there, so "
                     "companions on several hosts exclude each other")
    src.add_argument("--redis-key-prefix", default="llmthrottle", metavar="PREFIX",
                     help="the proxies' redis.key_prefix (default: %(default)s)")

    pol = parser.add_argument_group("policy")
    pol.add_argument("--boards", default="all", metavar="all|A,B",
                     help="boards to dispatch (default: all, new boards included)")
    pol.add_argument("--max-running", type=_positive_int, metavar="N",
                     help="optional ceiling on running tasks summed over the boards; "
                     "without it the target is the models' cap x tasks per slot")
    pol.add_argument("--tasks-per-slot", type=_ratio, default=2.0, metavar="X",
                     help="running tasks per busy GPU slot to assume until it is learned "
                     "from the running tasks (default: %(default)s)")
    pol.add_argument("--max-tasks-per-slot", type=_ratio, default=3.0, metavar="X",
                     help="upper bound of the learned ratio (default: %(default)s)")
    pol.add_argument("--high-watermark", type=_positive_int, default=8, metavar="N",
                     help="hold when the backlog reaches N (default: %(default)s)")
    pol.add_argument("--low-watermark", type=_non_negative_int, default=2, metavar="N",
                     help="resume when the backlog falls below N (default: %(default)s)")
    pol.add_argument("--interval", type=_seconds, default=10.0, metavar="S",
                     help="seconds between full ticks when nothing happens; a freed slot is "
                     "filled sooner, see --react-interval (default: %(default)s)")
    pol.add_argument("--react-interval", type=_non_negative_float, default=0.5, metavar="S",
                     help="read the proxy (and, with --probe sqlite, the boards) every S "
                     "seconds between ticks and tick at once when a worker would start; 0 "
                     "turns it off (default: %(default)s)")
    pol.add_argument("--ramp-after", type=_non_negative_float, default=30.0, metavar="S",
                     help="after an outage of the proxy, or a hold of S seconds, resume "
                     "slowly: 1, 2, 4, ... spawns per second (default: %(default)s)")
    pol.add_argument("--maintenance-interval", type=_seconds, default=60.0, metavar="S",
                     help="a board not dispatched for S seconds gets a `dispatch --max 0` "
                     "pass, holding or not (default: %(default)s)")

    her = parser.add_argument_group("hermes")
    her.add_argument("--hermes", default=os.environ.get("HERMES_BIN") or "hermes",
                     metavar="PATH", help="the hermes executable (default: $HERMES_BIN or "
                     "`hermes` on PATH)")
    her.add_argument("--hermes-home", metavar="DIR",
                     help="HERMES_HOME for the hermes calls (default: inherited)")
    her.add_argument("--hermes-timeout", type=_seconds, default=60.0, metavar="S",
                     help="kill a hermes call after S seconds (default: %(default)s)")
    her.add_argument("--probe", choices=("cli", "sqlite"), default="sqlite",
                     help="count tasks by reading the board databases read-only (sqlite: "
                     "cheap, so free slots are seen between ticks; also gives the oldest "
                     "ready task's age) or with `hermes kanban boards list --json` (cli) "
                     "(default: %(default)s)")
    her.add_argument("--max-semantics", choices=("auto", "running", "spawns"), default="auto",
                     help="what `dispatch --max N` means: caps running tasks (Hermes >= "
                     "0.13.0) or spawns per pass (older); auto asks `hermes --version`")
    her.add_argument("--dispatch-helper", choices=("auto", "off"), default="auto",
                     help="run the dispatch passes in one long-lived helper inside Hermes's own "
                     "Python (milliseconds, no process per pass) when the hermes executable is "
                     "a Python script; off: one `hermes kanban dispatch` call per pass "
                     "(default: %(default)s)")
    her.add_argument("--ignore-stderr", type=_regex, action="append", default=[],
                     metavar="REGEX", help="stderr lines of hermes that do not mean failure "
                     "(repeatable; by default any stderr text fails the call)")

    lck = parser.add_argument_group("locking")
    lck.add_argument("--lock-dir", metavar="DIR",
                     help="where the per-board lock files live "
                     "(default: <kanban root>/kanban/llm-throttle-dispatch)")
    lck.add_argument("--lock-prefix", metavar="KEY",
                     help="Redis key prefix of board locks (default: "
                     "{<redis key prefix>}:dispatch-lock)")
    lck.add_argument("--lock-ttl", type=_seconds, default=60.0, metavar="S",
                     help="Redis lock TTL; renewed every third of it (default: %(default)s)")
    lck.add_argument("--hold-gateway-lock", action="store_true",
                     help="also hold Hermes' own dispatcher lock so a gateway started later "
                     "does not dispatch (use with --boards all: it stops the gateway "
                     "dispatching every board)")

    run = parser.add_argument_group("running")
    run.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                     help="serve /metrics, /status and /healthz here; 'off' to disable "
                     "(default: %(default)s)")
    run.add_argument("--unhealthy-after", type=_positive_int, default=3, metavar="N",
                     help="/healthz answers 503 after N failed reads of the proxy in a row "
                     "(default: %(default)s)")
    run.add_argument("--once", action="store_true", help="run one tick and exit (status 1 if "
                     "the tick failed)")
    run.add_argument("--dry-run", action="store_true",
                     help="decide and print, never call `hermes kanban dispatch`")


def _listen_address(text: str) -> tuple[str, int] | None:
    if text.lower() in {"off", "none", ""}:
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise SystemExit(f"--listen: expected HOST:PORT or 'off', got {text!r}")
    return host or "127.0.0.1", int(port)


def _hermes_env(args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ)
    if args.hermes_home:
        env["HERMES_HOME"] = str(Path(args.hermes_home).expanduser())
    # Workers are started by `hermes` resolving itself via $HERMES_BIN, then PATH: pin it to
    # the executable we call so workers run the same Hermes we measured.
    resolved = shutil.which(args.hermes)
    if resolved and "HERMES_BIN" not in env:
        env["HERMES_BIN"] = os.path.abspath(resolved)
    return env


def settings_from_args(args: argparse.Namespace) -> DispatchSettings:
    try:
        marks = Watermarks(high=args.high_watermark, low=args.low_watermark)
    except ValueError as exc:
        raise SystemExit(f"llm-throttle dispatch: {exc}") from None
    semantics = None if args.max_semantics == "auto" else MaxSemantics(args.max_semantics)
    boards = None if args.boards.strip().lower() == "all" else _csv(args.boards)
    try:
        ratio = RatioSettings(prior=args.tasks_per_slot,
                              high=max(args.max_tasks_per_slot, args.tasks_per_slot))
    except ValueError as exc:
        raise SystemExit(f"llm-throttle dispatch: {exc}") from None
    return DispatchSettings(
        max_running=args.max_running,
        marks=marks,
        interval_s=args.interval,
        maintenance_interval_s=args.maintenance_interval,
        boards=boards,
        dry_run=args.dry_run,
        semantics=semantics,
        react_s=args.react_interval,
        unhealthy_after=args.unhealthy_after,
        ramp_after_s=args.ramp_after,
        ratio=ratio,
    )


async def check_models(backlog: BacklogSource, models: tuple[str, ...],
                       max_running: int | None) -> str | None:
    """At start: a --models name the proxy does not serve, or nothing to aim at, is an error
    (the message); an unreachable proxy is not (the ticks say so until it answers)."""
    try:
        first = await backlog.read()
    except BacklogError as exc:
        log.warning("cannot read the proxy at start (%s); not spawning until it answers", exc)
        return None
    if first.missing:
        served = ", ".join(sorted(set(first.routes.values()))) or "none of the others"
        return (f"--models {','.join(first.missing)}: the proxy serves no such model and has "
                f"no '*' route (matched: {served})")
    for name, route in first.routes.items():
        if route != name:
            log.info("--models %s is served by the proxy's %r route: counting its queue",
                     name, route)
    if first.cap is None and max_running is None:
        return ("the watched models have no max_in_flight in the proxy and --max-running is "
                "not given: there is nothing to aim at")
    return None


async def _main(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    env = _hermes_env(args)
    root = kanban_root(args.hermes_home, env)
    helper = None
    if args.dispatch_helper == "auto" and not args.dry_run:
        helper = helper_for(args.hermes, env, args.hermes_timeout, None)
    hermes = HermesCLI(args.hermes, timeout_s=args.hermes_timeout, env=env,
                       ignore_stderr=args.ignore_stderr, helper=helper)
    probe: BoardProbe = SQLiteProbe(root) if args.probe == "sqlite" else hermes
    backlog: BacklogSource
    if args.redis and not args.status_url:
        backlog = RedisStatusBacklog(args.redis, args.models, key_prefix=args.redis_key_prefix)
    else:
        status_url = args.status_url or DEFAULT_STATUS_URL
        backlog = HttpStatusBacklog(status_url, args.models, api_key=args.status_key)
        if args.events.lower() != "off":
            url = events_url_for(status_url) if args.events.lower() == "auto" else args.events
            backlog = PushedBacklog(url, args.models, backlog, api_key=args.status_key)

    redis_client = None
    if args.dry_run:
        locks = BoardLocks(lambda slug: NullLock())
    elif args.redis:
        import redis.asyncio as aioredis

        redis_client = aioredis.from_url(args.redis)
        prefix = args.lock_prefix or f"{{{args.redis_key_prefix}}}:dispatch-lock"
        locks = BoardLocks(redis_lock_factory(redis_client, prefix, args.lock_ttl))
    else:
        lock_dir = Path(args.lock_dir) if args.lock_dir else root / "kanban" / \
            "llm-throttle-dispatch"
        locks = BoardLocks(file_lock_factory(lock_dir))

    gateway_lock: FileLock | None = None
    if args.hold_gateway_lock and not args.dry_run:
        gateway_lock = FileLock(root / GATEWAY_LOCK, write_owner=False)
        if not await gateway_lock.acquire():
            log.error("a Hermes gateway already holds %s and is dispatching; stop it or set "
                      "kanban.dispatch_in_gateway: false", gateway_lock.path)
            return 2

    problem = await check_models(backlog, tuple(args.models), settings.max_running)
    if problem is not None:
        log.error("%s", problem)
        await backlog.close()
        if gateway_lock is not None:
            await gateway_lock.release()
        if redis_client is not None:
            await redis_client.aclose()
        return 2
    dispatcher = Dispatcher(settings, hermes=hermes, probe=probe, backlog=backlog, locks=locks)
    for message in gateway_dispatch_warnings(root, holding_gateway_lock=gateway_lock is not None):
        dispatcher.add_warning(message)
    await dispatcher.start()

    runner: web.AppRunner | None = None
    renewal: asyncio.Task[None] | None = None
    try:
        if args.once:
            report = await dispatcher.tick()
            if args.dry_run:
                print(report.log_line())
                for slug, board in sorted(report.boards.items()):
                    if board.max_arg is not None:
                        cmd = hermes.command_line(["kanban", "--board", slug, "dispatch",
                                                   "--max", str(board.max_arg), "--json"])
                        print(f"would run: {cmd}")
            return 0 if report.ok else 1
        address = _listen_address(args.listen)
        if address is not None:
            runner = web.AppRunner(status_app(dispatcher), access_log=None)
            await runner.setup()
            await web.TCPSite(runner, *address).start()
            log.info("status on http://%s:%d/status, metrics on /metrics", *address)
        if redis_client is not None:
            renewal = asyncio.create_task(locks.renew_forever(args.lock_ttl / 3))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await dispatcher.run(stop)
        return 0
    finally:
        if renewal is not None:
            renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewal
        await locks.release_all()
        await hermes.close()
        if gateway_lock is not None:
            await gateway_lock.release()
        if runner is not None:
            await runner.cleanup()
        await backlog.close()
        if redis_client is not None:
            await redis_client.aclose()


def run_dispatch(args: argparse.Namespace) -> int:
    """Run the companion until SIGINT/SIGTERM (or one tick with ``--once``)."""
    # `llm-throttle --log-level` belongs to the top-level parser, which configures logging
    # first; this only takes effect when run standalone.
    logging.basicConfig(
        level=str(getattr(args, "log_level", "INFO")).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return asyncio.run(_main(args))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="llm-throttle dispatch",
        description="Spawn Hermes Kanban workers only as fast as the GPUs behind the proxy "
        "can take them.",
    )
    parser.add_argument("--log-level", default="INFO",
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    add_dispatch_arguments(parser)
    return run_dispatch(parser.parse_args(argv))
