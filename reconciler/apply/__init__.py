"""Applying a plan: the Applier (`applier`) and its parts — what one apply shares
(`run`), create batches (`launching`), the boot wait (`waiter`), the health gate and
traffic switch (`gates`), activation and compensation (`activation`), destroys
(`teardown`), ledger-only actions (`bookkeeping`), rolling updates (`rolling`) and the
per-provider bounds (`parallel`)."""
