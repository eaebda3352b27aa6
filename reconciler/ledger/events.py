"""The catalogue of event kinds: what `ledger events --kind` accepts and documents.

Owns: every kind the ledger may hold, with one line on what it records. Must not:
grow by accident; `record_event` refuses a kind that is not here, so a typo is a bug
found by the tests, never a silent new kind.
"""

from __future__ import annotations

from typing import Final

EVENT_KINDS: Final[dict[str, str]] = {
    # instances
    "instance_created": "an instance was launched and recorded (its generation, image, size)",
    "instance_destroyed": "an instance we terminated ended (with why)",
    "instance_gone": "an instance ended without us: terminated or lost outside reconciler",
    "instance_replaced": "a missing or tampered instance was replaced in its slot",
    "instance_state_unknown": "the cloud reports a state the adapter does not know",
    "instance_tags_unreadable": "an owned instance whose identity tags cannot be read",
    # generations
    "generation_state": "a generation changed state (from, to, why): the history",
    "generation_activated": "a new generation took the traffic",
    "generation_demoted": "recovery found two active generations and kept one",
    "generation_ready": "a new generation is healthy and waits for its switch (manual or after D)",
    "switched": "`reconciler switch` moved traffic to a generation waiting ready (who)",
    "aborted": "`reconciler abort` destroyed a generation waiting ready (who, how many)",
    "promoted": "`reconciler promote` committed an image from one environment to another",
    "rollout_failed": "a rollout failed (launch, boot, health gate or switch), with why",
    # data volumes (`volume:`)
    "volume_created": "a service's data volume was created (volume, size, type, zone)",
    "volume_attached": "a data volume was attached to an instance (volume, device)",
    "volume_detached": "a data volume was detached from the instance named",
    "snapshot_created": "a data volume was snapshotted before a hand-over (snapshot, size)",
    "instance_stopped": "an instance was stopped to release its data volume",
    "instance_started": "an instance was started with its data volume (hand-over or back)",
    "volume_deleted": "`reconciler volume delete` deleted a data volume (who)",
    # services and environments
    "environment_removed": "an environment file was deleted: its services are dismantled",
    "service_down": "a desired service has no running instance and none is being started",
    "service_up": "a service that was down runs again (or is no longer desired)",
    "frozen": "a guard froze a service (thrash), with why",
    "unfrozen": "`reconciler unfreeze` lifted a freeze",
    "rollback": "`reconciler rollback` moved traffic back to a standby generation",
    "pinned": "a service was pinned to a generation (by rollback)",
    "released": "a pin was lifted (`reconciler release`, or the spec changed)",
    "retried": "`reconciler retry` allowed a failed spec again",
    # runs and the desired state
    "guard_tripped": "a run was refused by a guard; nothing changed",
    "invalid_commit": "a commit's desired state is invalid and was not applied",
    "history_rewritten": "the branch no longer descends from the last applied commit",
    "untrusted_commit": "a commit without a trusted signature was not applied (commit, why)",
    "commit_trusted": "`reconciler trust` accepted a commit by hand (who, when, why)",
    "operations_recovered": "operations left open by an interrupted pass were resolved",
    "ledger_rebuilt": "`ledger rebuild` restored the ledger from the cloud's tags",
    # two hosts (`--coordination`)
    "leader_changed": "this member took the leader lease (member, epoch, previous leader)",
    "ledger_restored": "a new leader restored the ledger from the replica (or found none)",
}
