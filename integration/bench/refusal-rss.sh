#!/usr/bin/env bash
# Peak memory of a Caddy with upstream_oauth while 8 clients at once get a
# 401 with a 50 MB body from the upstream (the refusal-body bound): prints
# the Caddy process's VmHWM before and after. The upstream and the token
# endpoint are small Python servers on loopback (python3 is needed).
#
#   integration/bench/refusal-rss.sh <caddy binary built with the module>
set -u
CADDY=${1:?usage: refusal-rss.sh <caddy binary>}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/upstream-oauth-rss.XXXXXX")
cat >"$WORK/upstream.py" <<'PY'
import http.server, socketserver, sys, json
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):  # the upstream: a 401 with a 50 MB body
        size = 50 * 1024 * 1024
        self.send_response(401); self.send_header("Content-Length", str(size)); self.end_headers()
        chunk = b"x" * 65536
        for _ in range(size // len(chunk)): self.wfile.write(chunk)
    def do_POST(self):  # the token endpoint
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        b = json.dumps({"access_token": "rss-token", "token_type": "bearer", "expires_in": 3600}).encode()
        self.send_response(200); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(b))); self.end_headers(); self.wfile.write(b)
    def log_message(self, *a): pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
S(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UPORT=$(port) GPORT=$(port)
python3 "$WORK/upstream.py" "$UPORT" & UP=$!
cat >"$WORK/Caddyfile" <<EOC
{
	admin off
	auto_https off
	log {
		level ERROR
	}
}
http://127.0.0.1:$GPORT {
	upstream_oauth {
		token_url http://127.0.0.1:$UPORT/token
		client_id rss
		client_secret rss-secret
	}
	reverse_proxy 127.0.0.1:$UPORT
}
EOC
"$CADDY" run --config "$WORK/Caddyfile" >"$WORK/caddy.log" 2>&1 & C=$!
trap 'kill $C $UP 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$GPORT/warm" && break; sleep 0.2; done
hwm() { awk '/VmHWM/ { printf "%.0f MiB", $2 / 1024 }' "/proc/$C/status"; }
echo "VmHWM before: $(hwm)"
pids=
for i in $(seq 8); do
	curl -s -o /dev/null -w "%{http_code} %{size_download}\n" "http://127.0.0.1:$GPORT/big$i" & pids="$pids $!"
done
wait $pids
echo "VmHWM after 8 concurrent 401s with 50 MB bodies: $(hwm)"
