"""OpenStack: the adapter, its connection (Keystone, catalog) and Nova's calls."""
