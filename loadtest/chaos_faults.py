"""The faults of the chaos soak, on one ``redis-server`` (with a replica) behind one relay per
proxy host.

Faults are drawn as a shuffled cycle, not independently: every kind comes once per
``len(FAULTS)`` draws, so a 20-minute soak with a fault every 30 s meets each at least three
times. ``promote`` is a failover behind a stable address: the replica becomes the master while the
old one still takes the hosts' writes for a moment (``REPEAT_EVERY_S``: what it acknowledges
then is lost, as in a real failover), then the relays point at the new master (their open
connections reset) and the old master becomes its replica; the roles stay swapped after the
heal, so the next fault hits the new master.
"""

from __future__ import annotations

import enum
import random
from collections import Counter
from collections.abc import Iterator, Sequence

from .redis_relay import RedisRelay
from .redis_server import RedisServer, free_port


class Fault(enum.Enum):
    OOM = "oom"  # CONFIG SET maxmemory 1 (noeviction): -OOM replies
    READONLY = "readonly"  # REPLICAOF a dead master: -READONLY replies
    BLACK_HOLE_ALL = "black_hole_all"  # every relay accepts, delivers nothing
    BLACK_HOLE_ONE = "black_hole_one"
    SIGSTOP = "sigstop"  # SIGSTOP, SIGCONT at the heal
    KILL9_RESTART = "kill9_restart"  # SIGKILL, restarted empty at the heal
    RESET = "reset"  # an RST on every relayed connection, every 0.3 s
    CLIENT_KILL = "client_kill"  # CLIENT KILL TYPE normal, every 0.3 s
    LATENCY = "latency"  # 200 ms added each way on every relay
    PROMOTE = "promote"  # the replica is promoted, the old master demoted


#: added each way by the ``latency`` fault
LATENCY_S = 0.2
#: ``repeat`` runs this often during a fault; a promotion reaches the hosts at the first one,
#: this long after the replica stopped copying the old master
REPEAT_EVERY_S = 0.3


def fault_cycle(rng: random.Random, kinds: Sequence[Fault]) -> Iterator[Fault]:
    """Every kind once per ``len(kinds)`` draws, in a new random order each round."""
    while True:
        order = list(kinds)
        rng.shuffle(order)
        yield from order


class Faults:
    """Starts, repeats and heals one fault at a time; counts what was drawn."""

    def __init__(self, server: RedisServer, replica: RedisServer, relays: list[RedisRelay],
                 rng: random.Random, kinds: tuple[Fault, ...] = tuple(Fault)):
        self.server, self.replica, self.relays, self.rng = server, replica, relays, rng
        self._draws = fault_cycle(rng, kinds)
        self._switch_pending = False
        self.started: Counter[str] = Counter()

    def draw(self) -> Fault:
        return next(self._draws)

    def begin(self, fault: Fault) -> None:
        self.started[fault.value] += 1
        s, relays = self.server, self.relays
        if fault is Fault.OOM:
            s.command("CONFIG", "SET", "maxmemory", "1")
        elif fault is Fault.READONLY:
            s.command("REPLICAOF", "127.0.0.1", str(free_port()))
        elif fault is Fault.BLACK_HOLE_ALL:
            for r in relays:
                r.black_hole()
        elif fault is Fault.BLACK_HOLE_ONE:
            self.rng.choice(relays).black_hole()
        elif fault is Fault.SIGSTOP:
            s.pause()
        elif fault is Fault.KILL9_RESTART:
            s.kill()
        elif fault is Fault.LATENCY:
            for r in relays:
                r.latency_s = LATENCY_S
        elif fault is Fault.PROMOTE:
            self._promote()

    def repeat(self, fault: Fault) -> None:
        if self._switch_pending:
            self._switch()
        if fault is Fault.RESET:
            for r in self.relays:
                r.reset()
        elif fault is Fault.CLIENT_KILL:
            self.server.command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")

    def heal(self) -> None:
        if self._switch_pending:
            self._switch()
        s = self.server
        s.start()  # also resumes a paused one; a killed one comes back empty
        s.command("CONFIG", "SET", "maxmemory", "0")
        s.command("REPLICAOF", "NO", "ONE")
        self.replica.start()
        self.replica.command("REPLICAOF", "127.0.0.1", str(s.port))
        for r in self.relays:
            r.heal()
            r.latency_s = 0.0

    def _promote(self) -> None:
        """The replica stops copying and takes writes; the hosts still reach the old master."""
        self.replica.command("REPLICAOF", "NO", "ONE")
        self._switch_pending = True

    def _switch(self) -> None:
        """The failover reaches the hosts: relays to the new master, the old one demoted."""
        old, new = self.server, self.replica
        for r in self.relays:
            r.target = ("127.0.0.1", new.port)
            r.reset()
        old.command("REPLICAOF", "127.0.0.1", str(new.port))
        self.server, self.replica = new, old
        self._switch_pending = False
