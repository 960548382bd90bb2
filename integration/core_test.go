package integration

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddy-upstream-oauth/upstream_oauth/integration/emulator"
)

// TestProvidersEndToEnd sends requests through the gateway to the backend
// for each provider: the emulator checks every detail of the token request,
// the backend accepts only a currently valid token.
func TestProvidersEndToEnd(t *testing.T) {
	for _, kind := range []emulator.Kind{emulator.OneNCE, emulator.ONEiO, emulator.Telenor} {
		t.Run(string(kind), func(t *testing.T) {
			p := startProvider(t, kind)
			b := startBackend(t, p)
			g := startGateway(t, proxied(p, b))
			for i := range 20 {
				status, body, _ := g.get("/v1/sims")
				if status != http.StatusOK || !strings.HasPrefix(body, "ok "+string(kind)) {
					t.Fatalf("request %d: %d %q", i, status, body)
				}
			}
			if n := p.TokenRequests(); n != 1 {
				t.Errorf("token requests: got %d, want 1", n)
			}
			if b.Accepted() != 20 || b.Rejected() != 0 {
				t.Errorf("backend accepted %d, rejected %d; want 20, 0", b.Accepted(), b.Rejected())
			}
			t.Logf("%s: 20 requests, %d token request(s)", kind, p.TokenRequests())
		})
	}
}

// TestManyRequestsOneTokenRequest: sequential requests share one token.
func TestManyRequestsOneTokenRequest(t *testing.T) {
	p := startProvider(t, emulator.ONEiO)
	b := startBackend(t, p)
	g := startGateway(t, proxied(p, b))
	for i := range 500 {
		if status, body, _ := g.get("/"); status != http.StatusOK {
			t.Fatalf("request %d: %d %q", i, status, body)
		}
	}
	if n := p.TokenRequests(); n != 1 {
		t.Errorf("500 requests made %d token requests, want 1", n)
	}
	t.Logf("500 requests → %d token request(s)", p.TokenRequests())
}

// TestConcurrentColdRequests: 200 requests arriving at once on a cold
// source, with a slow provider, make one token request between them.
func TestConcurrentColdRequests(t *testing.T) {
	p := startProvider(t, emulator.OneNCE)
	p.SetSlowDelay(300 * time.Millisecond)
	p.SetMode(emulator.Slow)
	b := startBackend(t, p)
	g := startGateway(t, proxied(p, b))
	counts := g.concurrently(200, "/cold")
	if counts[http.StatusOK] != 200 {
		t.Errorf("statuses: %v, want 200×200", counts)
	}
	if n := p.TokenRequests(); n != 1 {
		t.Errorf("200 concurrent cold requests made %d token requests, want 1", n)
	}
	t.Logf("200 concurrent cold requests → %d token request(s), statuses %v", p.TokenRequests(), counts)
}

// TestBackgroundRenewal: tokens that live 2s are renewed in the background
// before they expire; no request fails and every one the backend sees
// carries a valid token.
func TestBackgroundRenewal(t *testing.T) {
	p := startProvider(t, emulator.Telenor)
	p.SetTTL(2 * time.Second)
	b := startBackend(t, p)
	g := startGateway(t, proxied(p, b, "refresh_ahead 50%"))
	deadline := time.Now().Add(7 * time.Second)
	n := 0
	for time.Now().Before(deadline) {
		status, body, _ := g.get("/renew")
		if status != http.StatusOK {
			t.Fatalf("request %d failed: %d %q", n, status, body)
		}
		n++
		time.Sleep(20 * time.Millisecond)
	}
	if b.Rejected() != 0 {
		t.Errorf("backend rejected %d requests", b.Rejected())
	}
	// 7s of 2s tokens renewed at half-life: at least 3 token requests, and
	// not one per request.
	if got := p.TokenRequests(); got < 3 || got > 10 {
		t.Errorf("token requests over 7s: %d, want 3..10", got)
	}
	t.Logf("%d requests over 7s with 2s tokens → %d token requests, 0 failed", n, p.TokenRequests())
}

// TestClientAuthorizationNeverForwarded: whatever the client sends in
// Authorization, the backend sees only the gateway's token.
func TestClientAuthorizationNeverForwarded(t *testing.T) {
	p := startProvider(t, emulator.ONEiO)
	b := startBackend(t, p)
	g := startGateway(t, proxied(p, b))
	clientValues := []string{"Bearer client-own-token-1", "Basic dXNlcjpwYXNzLWNsaWVudC0y", "bearer client-own-token-3", "Token client-own-token-4"}
	for _, v := range clientValues {
		h := http.Header{"Authorization": {v, "Bearer client-second-value-5"}}
		if status, body, _ := g.do(http.MethodGet, "/", h, nil); status != http.StatusOK {
			t.Fatalf("with client Authorization %q: %d %q", v, status, body)
		}
	}
	seen := b.SeenAuthorization()
	if len(seen) != len(clientValues) {
		t.Fatalf("backend saw %d Authorization values, want %d", len(seen), len(clientValues))
	}
	for i, s := range seen {
		if strings.Contains(s, "client-") || strings.Contains(s, "dXNlcjpwYXNzLWNsaWVudC0y") {
			t.Errorf("request %d: the client's own Authorization reached the backend", i)
		}
		if !strings.HasPrefix(s, "Bearer ") || !p.Valid(strings.TrimPrefix(s, "Bearer ")) {
			t.Errorf("request %d: the backend did not see the gateway's valid bearer token", i)
		}
	}
	if b.Rejected() != 0 {
		t.Errorf("backend rejected %d requests", b.Rejected())
	}
}

// TestReload: a reload that leaves the source's settings unchanged makes no
// token request (whether the config text is identical or other routes
// changed); a reload that changes them gets a new token.
func TestReload(t *testing.T) {
	p := startProvider(t, emulator.OneNCE)
	b := startBackend(t, p)
	site := proxied(p, b)
	g := startGateway(t, site)
	if status, _, _ := g.get("/"); status != http.StatusOK {
		t.Fatalf("status %d", status)
	}
	if n := p.TokenRequests(); n != 1 {
		t.Fatalf("token requests after first request: %d", n)
	}

	// Another route changes: a real reload, same token settings.
	g.load("\trespond /health 200\n" + site)
	if status, _, _ := g.get("/"); status != http.StatusOK {
		t.Fatalf("status %d after reload", status)
	}
	if status, _, _ := g.get("/health"); status != http.StatusOK {
		t.Fatalf("the reloaded config is not active: /health %d", status)
	}
	if n := p.TokenRequests(); n != 1 {
		t.Errorf("an unchanged source's reload made %d token requests in all, want 1", n)
	}

	// The same handler twice in one config shares the source too.
	g.load("\thandle /a/* {\n" + site + "\t}\n\thandle {\n" + site + "\t}\n")
	for _, path := range []string{"/a/x", "/b"} {
		if status, _, _ := g.get(path); status != http.StatusOK {
			t.Fatalf("%s: status %d", path, status)
		}
	}
	if n := p.TokenRequests(); n != 1 {
		t.Errorf("two handlers with the same settings made %d token requests in all, want 1", n)
	}

	// A changed setting makes a new source: one new token request.
	g.load(proxied(p, b, "name renamed"))
	if status, _, _ := g.get("/"); status != http.StatusOK {
		t.Fatalf("status %d after changed reload", status)
	}
	if n := p.TokenRequests(); n != 2 {
		t.Errorf("after a reload that changed the settings: %d token requests in all, want 2", n)
	}
	t.Logf("reloads: unchanged → 0 new token requests, changed → 1 new (total %d)", p.TokenRequests())
}

// TestProviderErrorsGive502: when the provider refuses or is down, the
// client gets 502 (with Retry-After while backing off) and nothing reaches
// the backend.
func TestProviderErrorsGive502(t *testing.T) {
	for _, tc := range []struct {
		kind emulator.Kind
		mode emulator.Mode
		log  string
	}{
		{emulator.OneNCE, emulator.RejectCredentials, "BadCredentials"},
		{emulator.ONEiO, emulator.RejectCredentials, "invalid_client"},
		{emulator.Telenor, emulator.RejectCredentials, "20"},
		{emulator.ONEiO, emulator.Down, "token endpoint answered 503"},
		{emulator.OneNCE, emulator.Garbage, "not a JSON object"},
	} {
		t.Run(string(tc.kind)+"/"+tc.mode.String(), func(t *testing.T) {
			p := startProvider(t, tc.kind)
			p.SetMode(tc.mode)
			b := startBackend(t, p)
			g := startGateway(t, proxied(p, b))
			status, _, _ := g.get("/first")
			if status != http.StatusBadGateway {
				t.Errorf("first request: status %d, want 502", status)
			}
			status, _, h := g.get("/second")
			if status != http.StatusBadGateway {
				t.Errorf("second request: status %d, want 502", status)
			}
			if ra := h.Get("Retry-After"); ra == "" {
				t.Errorf("502 while backing off has no Retry-After")
			}
			if n := b.Accepted() + b.Rejected(); n != 0 {
				t.Errorf("%d requests reached the backend without a token", n)
			}
			if n := p.TokenRequests(); n != 1 {
				t.Errorf("token requests: %d, want 1 (the second request falls in the backoff)", n)
			}
			if !eventually(2*time.Second, func() bool { return strings.Contains(g.logText(), tc.log) }) {
				t.Errorf("log does not give the provider's reason %q", tc.log)
			}
		})
	}
}

// TestLogoutOnUnload: a Telenor source that leaves the config logs its
// token out.
func TestLogoutOnUnload(t *testing.T) {
	p, _, g := startWarm(t, emulator.Telenor)
	g.load("\trespond 204\n")
	if !eventually(5*time.Second, func() bool { return p.Logouts() == 1 }) {
		t.Errorf("logouts after the source left the config: %d, want 1", p.Logouts())
	}
}
