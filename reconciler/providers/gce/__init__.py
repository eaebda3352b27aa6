"""Google Compute Engine: the adapter, its connection (token, requests) and its label mapping."""
