#!/bin/sh
# Boot script for the web service: runs once, at first boot, as root.
# It must not contain secrets: user data is readable from inside the instance.
set -eu

mkdir -p /srv/www
cat > /srv/www/index.html <<'HTML'
<!doctype html>
<title>demo web</title>
<p>Served by an immutable instance: to change me, change the desired state.</p>
HTML
echo ok > /srv/www/healthz

# Serve on 8080; python3 is present on the stock image.
cd /srv/www
nohup python3 -m http.server 8080 >/var/log/web.log 2>&1 &
