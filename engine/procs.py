"""Whether a process still runs: the one check behind lock files and status files that name their writer's pid."""

import os


def pid_alive(pid):
    """False only when no process `pid` exists on this machine. One that exists but belongs to another user (signal 0
    refused), or a pid that cannot be asked about, counts as alive: a lock is never taken from a live owner."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, ValueError, TypeError):
        return True
    return True
