"""The range of every number and duration in the desired state.

Owns: one table of bounds, so each value the runtime does arithmetic with (clock
times, timedeltas, counts multiplied into API calls) is one it can hold, and an
operator's typo (`3000000d`, `count: 100000`) is an error at `validate`, not a crash
at the first plan. Must not: know where a value came from or format messages.
"""

from __future__ import annotations

from typing import Final

MINUTE: Final = 60.0
HOUR: Final = 3600.0
DAY: Final = 86400.0

# Service keys.
MAX_COUNT_HARD: Final = 10_000  # one service's instances, whatever policy.max_count says
MAX_KEEP_PREVIOUS: Final = 30 * DAY
MAX_PRICE_PER_HOUR: Final = 10_000.0  # dollars; the largest instance types cost ~$100
MAX_BATCH: Final = 10_000
MAX_SWITCH_DELAY: Final = 30 * DAY  # `switch: after D`
MAX_VOLUME_GIB: Final = 16_384  # EC2's largest gp3/io2 volume
# Health checks.
MAX_HEALTH_TIMEOUT: Final = DAY
MAX_HEALTH_INTERVAL: Final = HOUR
MAX_HEALTH_WARMUP: Final = DAY
MAX_HEALTHY_AFTER: Final = 1_000
# Policy.
MAX_PARALLEL: Final = 256
MAX_BOOT_TIMEOUT: Final = DAY
MAX_COUNT_POLICY: Final = MAX_COUNT_HARD
MAX_THRASH_LIMIT: Final = 10_000
MAX_THRASH_WINDOW: Final = 30 * DAY
# All instances of all services together; a default that a typo cannot pass.
DEFAULT_MAX_TOTAL_INSTANCES: Final = 1_000
MAX_TOTAL_INSTANCES: Final = 100_000
# Providers.
MAX_PROVIDER_TIMEOUT: Final = 10 * MINUTE  # one API request
MAX_BILLING_MINIMUM: Final = DAY
