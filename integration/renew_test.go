package integration

import (
	"bytes"
	"net/http"
	"strconv"
	"sync"
	"testing"

	"github.com/caddy-upstream-oauth/upstream_oauth/integration/emulator"
)

// TestRenewOnRevokedToken: the provider revokes the token; the next request
// is refused upstream with 401, the token is retired, a new one obtained and
// the request replayed: the client sees 200.
func TestRenewOnRevokedToken(t *testing.T) {
	p, b, g := startWarm(t, emulator.ONEiO)
	p.RevokeAll()
	body := bytes.Repeat([]byte("x"), 1000)
	status, _, h := g.do(http.MethodPost, "/after-revoke", nil, body)
	if status != http.StatusOK {
		t.Fatalf("after revocation: status %d, want 200 (replayed with a new token)", status)
	}
	if got := h.Get(emulator.BodyLengthHeader); got != strconv.Itoa(len(body)) {
		t.Errorf("replayed request's body reached the backend with %s bytes, want %d", got, len(body))
	}
	if h.Get("WWW-Authenticate") != "" {
		t.Errorf("the refused attempt's headers leaked into the replayed answer")
	}
	if n := p.TokenRequests(); n != 2 {
		t.Errorf("token requests: %d, want 2", n)
	}
	if r := b.Rejected(); r != 1 {
		t.Errorf("backend refusals: %d, want 1 (the attempt with the revoked token)", r)
	}
}

// TestRenewOnConcurrentRefusals: many requests refused at once with the
// same revoked token cause one renewal, and all are replayed.
func TestRenewOnConcurrentRefusals(t *testing.T) {
	p, _, g := startWarm(t, emulator.OneNCE)
	p.RevokeAll()
	counts := g.concurrently(50, "/burst")
	if counts[http.StatusOK] != 50 {
		t.Errorf("statuses after revocation: %v, want 50×200", counts)
	}
	if n := p.TokenRequests(); n != 2 {
		t.Errorf("token requests: %d, want 2 (one renewal for all refusals)", n)
	}
	t.Logf("50 concurrent requests refused with a revoked token → %d renewal(s), statuses %v", p.TokenRequests()-1, counts)
}

// TestRenewOnLargeBodyPassesThrough: a request whose body is too large to
// keep (over 64 KiB) is not replayed: the upstream's 401 passes through,
// the token is still retired, and the next request succeeds.
func TestRenewOnLargeBodyPassesThrough(t *testing.T) {
	p, _, g := startWarm(t, emulator.ONEiO)
	p.RevokeAll()
	big := bytes.Repeat([]byte("y"), 64<<10+1)
	status, _, h := g.do(http.MethodPost, "/upload", nil, big)
	if status != http.StatusUnauthorized {
		t.Fatalf("large body after revocation: status %d, want the upstream's 401", status)
	}
	if got := h.Get(emulator.BodyLengthHeader); got != strconv.Itoa(len(big)) {
		t.Errorf("large body reached the backend with %s bytes, want %d", got, len(big))
	}
	if status, _, _ := g.do(http.MethodPost, "/upload", nil, big); status != http.StatusOK {
		t.Errorf("next large request: status %d, want 200 with the renewed token", status)
	}
	if n := p.TokenRequests(); n != 2 {
		t.Errorf("token requests: %d, want 2", n)
	}
	// Exactly 64 KiB is kept and replayed. (A source of its own: this
	// one's retirement just now holds back the next one, which the
	// contract spaces.)
	p, _, g = startWarm(t, emulator.ONEiO)
	p.RevokeAll()
	edge := big[:64<<10]
	if status, _, h := g.do(http.MethodPost, "/upload", nil, edge); status != http.StatusOK || h.Get(emulator.BodyLengthHeader) != strconv.Itoa(len(edge)) {
		t.Errorf("64 KiB body after revocation: status %d, body %s bytes; want 200 with all of it", status, h.Get(emulator.BodyLengthHeader))
	}
}

// TestRenewOnStatuses: only the configured statuses retire the token; the
// default is 401 alone.
func TestRenewOnStatuses(t *testing.T) {
	p := startProvider(t, emulator.ONEiO)
	var mu sync.Mutex
	statusToSend := http.StatusForbidden
	upstream := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		st := statusToSend
		mu.Unlock()
		w.WriteHeader(st)
	})
	srv := startHandler(t, upstream)
	g := startGateway(t, block(p)+"\treverse_proxy "+srv+"\n")
	if status, _, _ := g.get("/"); status != http.StatusForbidden {
		t.Fatalf("status %d, want the upstream's 403 passed through", status)
	}
	if n := p.TokenRequests(); n != 1 {
		t.Errorf("a 403 with the default renew_on made %d token requests, want 1", n)
	}
	g.load(block(p, "renew_on 403") + "\treverse_proxy " + srv + "\n")
	status, _, _ := g.get("/")
	if status != http.StatusForbidden {
		t.Fatalf("status %d, want 403 after the replay too", status)
	}
	// renew_on does not shape the token, so the source (and its token)
	// survived the reload; the 403 retired that token: one renewal, and the
	// replay's 403 passes through without another.
	if n := p.TokenRequests(); n != 2 {
		t.Errorf("with renew_on 403: %d token requests in all, want 2", n)
	}
}

// TestRenewOnLogsOut: a Telenor token retired because the upstream refused
// it is logged out at logout_url.
func TestRenewOnLogsOut(t *testing.T) {
	p := startProvider(t, emulator.Telenor)
	var mu sync.Mutex
	refuse := true
	b := startBackend(t, p)
	upstream := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		r1 := refuse
		refuse = false
		mu.Unlock()
		if r1 {
			w.WriteHeader(http.StatusUnauthorized) // refused, though the provider still holds it valid
			return
		}
		b.ServeHTTP(w, r)
	})
	srv := startHandler(t, upstream)
	g := startGateway(t, block(p)+"\treverse_proxy "+srv+"\n")
	if status, _, _ := g.get("/"); status != http.StatusOK {
		t.Fatalf("status %d, want 200 after the replay", status)
	}
	if !eventually(5e9, func() bool { return p.Logouts() == 1 }) {
		t.Errorf("logouts after retirement: %d, want 1", p.Logouts())
	}
}
