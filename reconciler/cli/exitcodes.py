"""The exit codes of every command (DESIGN §6), defined here and only here."""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1  # any error, usage errors included: never 2
EXIT_CHANGES = 2  # `plan --detailed-exitcode`: apply would change something
EXIT_REFUSED = 3  # refused by a guard; nothing was changed
