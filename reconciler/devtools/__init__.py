"""For trying reconciler out: the sandbox EC2 endpoint (`sandbox`) and the demo."""
