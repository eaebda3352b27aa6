"""Planning: from the desired state, what the cloud holds and what the ledger knows, the
actions of one pass (`planner`, pure), what they cost (`costs`), which owned instances
nothing accounts for (`orphans`), and the guards that refuse a pass (`guards`)."""
