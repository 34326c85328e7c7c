"""Whether a process still runs: the one check behind lock files and status files that name their writer's pid."""

from engine.compat import pid_alive

__all__ = ["pid_alive"]
