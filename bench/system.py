"""`yuqing up` with every MongoDB command of the services counted, for `make bench`.

Registers a PyMongo command listener in `shared.service.COMMAND_LISTENERS` (the opt-in
hook the services' clients are built with), then runs the `yuqing up` command in this
process. On SIGUSR1 it writes the counts so far to `$YUQING_BENCH_COUNTS` as JSON
(`{"snapshot": n, "commands": {"<database>.<command>": count}}`), atomically.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections import Counter
from pathlib import Path
from types import FrameType

from pymongo.monitoring import (
    CommandFailedEvent,
    CommandListener,
    CommandStartedEvent,
    CommandSucceededEvent,
)

from services.cli import main
from shared import service


class CountingListener(CommandListener):
    """Counts commands by database, collection and name, as the driver sends them
    (`<database>:<collection>.<command>`; the collection is empty for a database command)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        # The database each open transaction began in (by session and transaction number):
        # commitTransaction and abortTransaction go to `admin`, which says nothing of whose.
        self._began: dict[tuple[bytes, int], str] = {}
        self._sent: dict[int, str] = {}  # request id -> key, until it is answered
        self._lock = threading.Lock()

    def started(self, event: CommandStartedEvent) -> None:
        command = event.command
        name = event.command_name
        target = command.get(name)
        # A getMore names its cursor's collection apart; a database command names none.
        collection = target if isinstance(target, str) else command.get("collection", "")
        key = f"{event.database_name}:{collection}.{name}"
        txn = (
            (bytes(command["lsid"]["id"]), int(command["txnNumber"]))
            if ("txnNumber" in command and "lsid" in command)
            else None
        )
        with self._lock:
            if txn is not None and command.get("startTransaction"):
                self._began[txn] = event.database_name
            if txn is not None and name in {"commitTransaction", "abortTransaction"}:
                key = f"{self._began.pop(txn, 'admin')}:.{name}"
            self.counts[key] += 1
            self._sent[event.request_id] = key

    def succeeded(self, event: CommandSucceededEvent) -> None:
        with self._lock:
            self._sent.pop(event.request_id, None)

    def failed(self, event: CommandFailedEvent) -> None:
        code = event.failure.get("codeName") or event.failure.get("code") or "?"
        with self._lock:
            key = self._sent.pop(event.request_id, f"{event.database_name}.{event.command_name}")
            self.errors[f"{key}.{code}"] += 1

    def snapshot(self) -> tuple[dict[str, int], dict[str, int]]:
        with self._lock:
            return dict(self.counts), dict(self.errors)


def run() -> int:
    target = Path(os.environ["YUQING_BENCH_COUNTS"])
    listener = CountingListener()
    service.COMMAND_LISTENERS.append(listener)
    snapshots = 0

    def dump(signum: int, frame: FrameType | None) -> None:
        nonlocal snapshots
        snapshots += 1
        commands, failed = listener.snapshot()
        body = {"snapshot": snapshots, "commands": commands, "failed": failed}
        partial = target.with_suffix(".tmp")
        partial.write_text(json.dumps(body))
        partial.replace(target)

    signal.signal(signal.SIGUSR1, dump)
    return main(["up"])


if __name__ == "__main__":
    sys.exit(run())
