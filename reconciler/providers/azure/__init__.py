"""Azure: the adapter, its connection and the resources a VM needs."""
