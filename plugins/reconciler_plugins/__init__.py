"""reconciler's built-in plugins, registered through the same entry points as any other.

Health checks (`http`, `tcp`, `command`), traffic switches (`command`, `libcloud-lb`)
and notifiers (`webhook`, `command`). See `reconciler.extensions.api` for the API.
"""
