"""Presenting for people and programs: plans, status and ledger rows (`render`), the
HTML report (`report`), the apply progress display (`progress`), text made safe for a
terminal (`terminal`), and money and time as people read them (`formatting`)."""
