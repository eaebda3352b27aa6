"""Running as a service: the daemon loop (`daemon`), its git source (`gitsource`), what
systemd hears (`systemd`), the metrics exporter (`metrics`) and the one-writer lock
on the state directory (`statelock`)."""
