package integration

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/caddy-upstream-oauth/upstream_oauth/integration/emulator"
)

// Hardening: what hostile clients, providers and upstreams can make the
// gateway do. Each test names the contract line it holds to.

// retirementBound is the most token requests a source may make in d under
// the spacing of retirements (cache.Options: 1 s after the first
// retirement, then 2, 4, 8 s ... up to 5 min): the first token, and one
// retirement at 0, 1, 3, 7, 15 s ... from the first refusal.
func retirementBound(d time.Duration) int64 {
	n := int64(1) // the token the first request got
	at, spacing := time.Duration(0), time.Second
	for at <= d {
		n++
		at += spacing
		spacing = min(2*spacing, 5*time.Minute)
	}
	return n
}

// hammerPaths runs clients goroutines that send requests to the gateway for d,
// each picking its path with pick(i) for its i-th request; it returns the
// statuses seen per path.
func hammerPaths(t *testing.T, g *gateway, clients int, d time.Duration, pick func(client, i int) string) map[string]map[int]int {
	t.Helper()
	var mu sync.Mutex
	seen := map[string]map[int]int{}
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := &http.Client{Timeout: 30 * time.Second}
			defer client.CloseIdleConnections()
			for i := 0; time.Now().Before(deadline); i++ {
				path := pick(c, i)
				status := getStatus(client, g.url(path))
				mu.Lock()
				if seen[path] == nil {
					seen[path] = map[int]int{}
				}
				seen[path][status]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return seen
}

// TestRenewOnRefusingUpstream: an upstream that refuses every token, with
// 10 clients sending requests for 10 s, costs the handful of token
// requests the spacing of retirements allows (before: one per request),
// and every client gets the upstream's own 401, not a 502.
func TestRenewOnRefusingUpstream(t *testing.T) {
	p := startProvider(t, emulator.ONEiO)
	refuseAll := startHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Www-Authenticate", `Bearer error="invalid_token"`)
		http.Error(w, "refused by the upstream", http.StatusUnauthorized)
	}))
	g := startGateway(t, fmt.Sprintf(`
	upstream_oauth oneio {
		token_url %s
		client_id client-oneio
		client_secret secret-oneio-Zq8
	}
	reverse_proxy %s
`, p.TokenURL(), refuseAll))
	start := time.Now()
	seen := hammerPaths(t, g, 10, 10*time.Second, func(int, int) string { return "/any" })
	elapsed := time.Since(start)
	bound := retirementBound(elapsed)
	t.Logf("10 clients, %v: statuses %v, token requests %d (the spacing's bound: %d)", elapsed.Round(time.Millisecond), seen["/any"], p.TokenRequests(), bound)
	if n := p.TokenRequests(); n > bound {
		t.Errorf("token requests: %d in %v; the contract: retirements spaced 1, 2, 4 s ..., at most %d", n, elapsed, bound)
	}
	for status, n := range seen["/any"] {
		if status != http.StatusUnauthorized {
			t.Errorf("%d requests answered %d; want the upstream's 401 passed through, never a 502", n, status)
		}
	}
}

// refusingBad is an upstream that answers 401 to /bad whatever the token,
// and hands every other path to b (which accepts valid tokens).
func refusingBad(t *testing.T, b *emulator.Backend) string {
	return startHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/bad" {
			http.Error(w, "this path refuses every token", http.StatusUnauthorized)
			return
		}
		b.ServeHTTP(w, r)
	}))
}

// TestRenewOnOnePathRefused: an upstream that refuses one path and accepts
// the others (a client alternating them must not reset the spacing) costs
// the same handful of token requests; /bad gets the upstream's 401 and
// /good 200, never a 502.
func TestRenewOnOnePathRefused(t *testing.T) {
	p := startProvider(t, emulator.OneNCE)
	b := startBackend(t, p)
	upstream := refusingBad(t, b)
	g := startGateway(t, fmt.Sprintf(`
	upstream_oauth 1nce {
		token_url %s
		username client-1nce
		password secret-1nce-Zq8
	}
	reverse_proxy %s
`, p.TokenURL(), upstream))
	start := time.Now()
	seen := hammerPaths(t, g, 10, 10*time.Second, func(c, i int) string {
		if (c+i)%2 == 0 {
			return "/bad"
		}
		return "/good"
	})
	elapsed := time.Since(start)
	bound := retirementBound(elapsed)
	t.Logf("10 clients alternating /bad and /good, %v: /bad %v, /good %v, token requests %d (bound %d)",
		elapsed.Round(time.Millisecond), seen["/bad"], seen["/good"], p.TokenRequests(), bound)
	if n := p.TokenRequests(); n > bound {
		t.Errorf("token requests: %d in %v, want at most %d: a 200 in between must not reset the spacing", n, elapsed, bound)
	}
	for status, n := range seen["/bad"] {
		if status != http.StatusUnauthorized {
			t.Errorf("/bad: %d answered %d, want the upstream's 401", n, status)
		}
	}
	for status, n := range seen["/good"] {
		if status != http.StatusOK {
			t.Errorf("/good: %d answered %d, want 200 with a valid token", n, status)
		}
	}
}

// TestRenewOnRefusingUpstreamTelenor: with Telenor, each retirement is a
// logout too: logouts keep to the same bound as token requests.
func TestRenewOnRefusingUpstreamTelenor(t *testing.T) {
	p := startProvider(t, emulator.Telenor)
	refuseAll := startHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "refused", http.StatusUnauthorized)
	}))
	g := startGateway(t, fmt.Sprintf(`
	upstream_oauth telenor {
		token_url %s
		logout_url %s
		client_id client-telenor
		client_secret secret-telenor-Zq8
		username user-telenor
		password password-telenor-Xk3
	}
	reverse_proxy %s
`, p.TokenURL(), p.LogoutURL(), refuseAll))
	start := time.Now()
	seen := hammerPaths(t, g, 10, 5*time.Second, func(int, int) string { return "/any" })
	elapsed := time.Since(start)
	bound := retirementBound(elapsed)
	eventually(5*time.Second, func() bool { return p.LogoutRequests() >= p.TokenRequests()-1 })
	t.Logf("telenor, 10 clients, %v: statuses %v, token requests %d, logouts %d (bound %d)",
		elapsed.Round(time.Millisecond), seen["/any"], p.TokenRequests(), p.LogoutRequests(), bound)
	if n := p.TokenRequests(); n > bound {
		t.Errorf("token requests: %d, want at most %d", n, bound)
	}
	if n := p.LogoutRequests(); n > bound-1 {
		t.Errorf("logouts: %d, want at most %d (one per retirement)", n, bound-1)
	}
	if n := seen["/any"][http.StatusUnauthorized]; n == 0 || len(seen["/any"]) != 1 {
		t.Errorf("statuses %v, want only the upstream's 401", seen["/any"])
	}
}

// quotaProvider fronts p with a provider that answers 429 (Retry-After 60)
// once it has issued n tokens: a provider's rate limit.
func quotaProvider(t *testing.T, p *emulator.Provider, n int64) (tokenURL string, served *atomic.Int64) {
	t.Helper()
	served = new(atomic.Int64)
	url := startHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if served.Add(1) > n {
			w.Header().Set("Retry-After", "60")
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusTooManyRequests)
			io.WriteString(w, `{"error":"slow_down","error_description":"token quota exceeded"}`)
			return
		}
		p.ServeHTTP(w, r)
	}))
	return url + p.Kind().TokenPath(), served
}

// TestRenewOnQuotaProvider: a provider that issues 10 tokens and then
// answers 429: ten requests to a path the upstream refuses no longer use up
// the quota, and the legitimate requests that follow all get 200 (before:
// every one a 502).
func TestRenewOnQuotaProvider(t *testing.T) {
	p := startProvider(t, emulator.ONEiO)
	b := startBackend(t, p)
	tokenURL, served := quotaProvider(t, p, 10)
	upstream := refusingBad(t, b)
	g := startGateway(t, fmt.Sprintf(`
	upstream_oauth oneio {
		token_url %s
		client_id client-oneio
		client_secret secret-oneio-Zq8
	}
	reverse_proxy %s
`, tokenURL, upstream))
	for range 10 {
		if status, _, _ := g.get("/bad"); status != http.StatusUnauthorized {
			t.Fatalf("/bad: %d, want the upstream's 401", status)
		}
	}
	for i := range 20 {
		if status, body, _ := g.get("/good"); status != http.StatusOK {
			t.Fatalf("legitimate request %d after 10 refused ones: %d %q (token requests %d); want 200", i, status, body, served.Load())
		}
	}
	t.Logf("10 refused requests, then 20 legitimate ones: all 200, %d token requests", served.Load())
}

// TestProviderRetryAfter: a provider's Retry-After on 429 is honoured: no
// token request goes out before it, and the 502s say when to come back.
func TestProviderRetryAfter(t *testing.T) {
	p := startProvider(t, emulator.ONEiO)
	b := startBackend(t, p)
	tokenURL, served := quotaProvider(t, p, 0)
	g := startGateway(t, fmt.Sprintf(`
	upstream_oauth oneio {
		token_url %s
		client_id client-oneio
		client_secret secret-oneio-Zq8
	}
	reverse_proxy %s
`, tokenURL, b.URL()))
	for i := range 5 {
		status, _, h := g.get("/")
		ra, _ := strconv.Atoi(h.Get("Retry-After"))
		if status != http.StatusBadGateway || ra < 55 || ra > 60 {
			t.Errorf("request %d: %d with Retry-After %q; want 502 with the provider's 60 s (less the time gone)", i, status, h.Get("Retry-After"))
		}
	}
	if n := served.Load(); n != 1 {
		t.Errorf("token requests: %d, want 1: none before the provider's Retry-After", n)
	}
	if !strings.Contains(g.logText(), "token quota exceeded") {
		t.Errorf("the provider's reason is not in the log")
	}
}

// TestErrorIn200BacksOff: a 200 whose body is an RFC 6749 error is logged
// in the provider's words and backs off as that error would (invalid_client:
// a credential error, 8 s and more).
func TestErrorIn200BacksOff(t *testing.T) {
	var n atomic.Int64
	provider := startHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"error":"invalid_client","error_description":"Client authentication failed"}`)
	}))
	b := startBackend(t)
	g := startGateway(t, fmt.Sprintf(`
	upstream_oauth {
		token_url %s/token
		client_id client-x
		client_secret secret-x-Qa1
	}
	reverse_proxy %s
`, provider, b.URL()))
	status, _, h := g.get("/")
	ra, _ := strconv.Atoi(h.Get("Retry-After"))
	if status != http.StatusBadGateway || ra < 8 {
		t.Errorf("status %d, Retry-After %q; want 502 and a credential error's backoff (8 s or more)", status, h.Get("Retry-After"))
	}
	for range 5 {
		g.get("/")
	}
	if got := n.Load(); got != 1 {
		t.Errorf("token requests: %d, want 1 (the rest fall in the backoff)", got)
	}
	if !eventually(3*time.Second, func() bool {
		return strings.Contains(g.logText(), "token endpoint answered 200 invalid_client: Client authentication failed")
	}) {
		t.Errorf("the log does not give the provider's words")
	}
}

// readFile is the content of path, "" when it cannot be read.
func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

// trailerUpstream records the Authorization header, the trailers and the
// X-Token header (and trailer) of each request it gets, after reading the
// body, and answers 200.
type trailerUpstream struct {
	mu   sync.Mutex
	seen []string
}

func (u *trailerUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	io.Copy(io.Discard, r.Body)
	u.mu.Lock()
	u.seen = append(u.seen, fmt.Sprintf("header Authorization=%q X-Token=%q trailer Authorization=%q X-Token=%q",
		r.Header.Values("Authorization"), r.Header.Values("X-Token"), r.Trailer.Values("Authorization"), r.Trailer.Values("X-Token")))
	u.mu.Unlock()
}

func (u *trailerUpstream) last() string {
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.seen) == 0 {
		return ""
	}
	return u.seen[len(u.seen)-1]
}

// chunkedWithTrailers sends a chunked POST whose trailers carry a client's
// own credentials: declared in a Trailer header or not.
func chunkedWithTrailers(t *testing.T, addr string, declare bool) int {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var req bytes.Buffer
	req.WriteString("POST /upload HTTP/1.1\r\nHost: " + addr + "\r\nTransfer-Encoding: chunked\r\n")
	if declare {
		req.WriteString("Trailer: Authorization, X-Token\r\n")
	}
	req.WriteString("\r\n5\r\nhello\r\n0\r\nAuthorization: Bearer client-own-trailer\r\nX-Token: client-own-x-token\r\n\r\n")
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write(req.Bytes()); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestClientTrailersNeverForwarded: a chunked request with an Authorization
// (or token header) trailer reaches the upstream with the gateway's header
// only, declared or not, with renew_on (the default) and with renew_on off.
func TestClientTrailersNeverForwarded(t *testing.T) {
	p := startProvider(t, emulator.ONEiO)
	up := new(trailerUpstream)
	upstream := startHandler(t, up)
	for _, c := range []struct {
		name, site string
		own        []string // the credentials the client must not get through
	}{
		{"default", fmt.Sprintf(`
	upstream_oauth oneio {
		token_url %s
		client_id client-oneio
		client_secret secret-oneio-Zq8
	}
	reverse_proxy %s
`, p.TokenURL(), upstream), []string{"client-own-trailer"}},
		{"renew_on off", fmt.Sprintf(`
	upstream_oauth oneio {
		token_url %s
		client_id client-oneio
		client_secret secret-oneio-Zq8
		renew_on off
	}
	reverse_proxy %s
`, p.TokenURL(), upstream), []string{"client-own-trailer"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			g := startGateway(t, c.site)
			for _, declare := range []bool{true, false} {
				if status := chunkedWithTrailers(t, g.addr, declare); status != http.StatusOK {
					t.Fatalf("status %d", status)
				}
				seen := up.last()
				for _, own := range c.own {
					if strings.Contains(seen, own) {
						t.Errorf("declared trailers %v: the upstream saw the client's own %q; the contract: a client's Authorization never reaches the upstream, neither as a header nor as a trailer", declare, own)
					}
				}
				if !strings.Contains(seen, `header Authorization=["Bearer `) {
					t.Errorf("declared trailers %v: the upstream did not get the gateway's token in Authorization", declare)
				}
			}
		})
	}
}

// TestCustomHeaderTrailerAndDebugLog: with `header X-Token`, the client's
// X-Token and Authorization trailers are dropped too. Caddy's logs redact
// only the credential headers they know (Authorization, Cookie, ...), so
// reverse_proxy's DEBUG "upstream roundtrip" line shows a token in X-Token:
// the README's security section gives the log filter that removes it,
// which this config uses, and without which the token is in the log (the
// second config, logging to a file of its own, shows that the filter is
// needed).
func TestCustomHeaderTrailerAndDebugLog(t *testing.T) {
	p := startProvider(t, emulator.ONEiO)
	up := new(trailerUpstream)
	upstream := startHandler(t, up)
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	filtered := filepath.Join(logDir, "custom-header-filtered.log")
	config := fmt.Sprintf(`{
	admin localhost:%d
	auto_https off
	log {
		output file %s
		level DEBUG
		format filter {
			wrap json
			fields {
				request>headers>X-Token delete
			}
		}
	}
}
http://%s {
	upstream_oauth oneio {
		token_url %s
		client_id client-oneio
		client_secret secret-oneio-Zq8
		header X-Token
	}
	reverse_proxy %s
}
`, adminPort, filtered, addr, p.TokenURL(), upstream)
	g := &gateway{t: t, tester: caddytest.NewTester(t), addr: addr, log: filtered}
	g.loadRaw(config)
	for _, declare := range []bool{true, false} {
		if status := chunkedWithTrailers(t, g.addr, declare); status != http.StatusOK {
			t.Fatalf("status %d", status)
		}
		seen := up.last()
		if strings.Contains(seen, "client-own") {
			t.Errorf("declared trailers %v: the upstream saw a client's own credential (X-Token or Authorization); the contract: the configured header and Authorization are deleted from trailers too", declare)
		}
		if !strings.Contains(seen, `header Authorization=[] X-Token=["`) {
			t.Errorf("declared trailers %v: the upstream did not get the gateway's token in X-Token alone", declare)
		}
	}
	if !eventually(3*time.Second, func() bool { return strings.Contains(readFile(filtered), "upstream roundtrip") }) {
		t.Fatalf("no upstream roundtrip line in the DEBUG log")
	}
	for _, tok := range p.Tokens() {
		if strings.Contains(readFile(filtered), tok) {
			t.Errorf("the token is in the DEBUG log despite the filter the README gives")
		}
	}

	// Without the filter (a log outside the leak-checked directory).
	unfiltered := filepath.Join(t.TempDir(), "custom-header-unfiltered.log")
	g.loadRaw(fmt.Sprintf(`{
	admin localhost:%d
	auto_https off
	log {
		output file %s
		level DEBUG
	}
}
http://%s {
	upstream_oauth oneio {
		token_url %s
		client_id client-oneio
		client_secret secret-oneio-Zq8
		header X-Token
	}
	reverse_proxy %s
}
`, adminPort, unfiltered, addr, p.TokenURL(), upstream))
	if status, _, _ := g.get("/"); status != http.StatusOK {
		t.Fatalf("status %d", status)
	}
	eventually(3*time.Second, func() bool { return strings.Contains(readFile(unfiltered), "upstream roundtrip") })
	shown := false
	for _, tok := range p.Tokens() {
		shown = shown || strings.Contains(readFile(unfiltered), tok)
	}
	if !shown {
		t.Errorf("without the filter the DEBUG log no longer shows the X-Token value: Caddy now redacts it, and the README's advice can go")
	}
	g.loadRaw(globalOptions(filtered) + "http://" + addr + " {\n\trespond ok\n}\n") // leave no source behind
}

// TestEchoedSecretsNeverShown: a provider that echoes the request in its
// error answer (the Basic header, the form body) puts none of the secrets
// it got, in any form they were sent in, into the WARN log, Caddy's error
// log, the token_failed event or the admin API's last_error: they are
// redacted from the provider's text before it goes anywhere.
func TestEchoedSecretsNeverShown(t *testing.T) {
	echo := startHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		json.NewEncoder(w).Encode(map[string]string{
			"error":             "invalid_request",
			"error_description": "you sent Authorization: " + r.Header.Get("Authorization") + " and body " + string(body),
		})
	}))
	b := startBackend(t)
	name := opsName("echo")
	const clientSecret, password = "secret-telenor-Zq8", "password-telenor-Xk3"
	g := startGateway(t, fmt.Sprintf(`
	upstream_oauth telenor {
		name %s
		token_url %s/oauth/v2/token
		logout_url %s/oauth/v2/logout
		client_id client-telenor
		client_secret secret-telenor-Zq8
		username user-telenor
		password password-telenor-Xk3
	}
	reverse_proxy %s
`, name, echo, echo, b.URL()))
	if status, _, _ := g.get("/"); status != http.StatusBadGateway {
		t.Fatalf("status %d, want 502", status)
	}
	forms := []string{clientSecret, password, url.QueryEscape(password),
		base64.StdEncoding.EncodeToString([]byte("client-telenor:" + clientSecret))}
	_, status := admin(t, http.MethodGet, "/upstream_oauth/sources/"+name)
	if !strings.Contains(status, "[REDACTED]") {
		t.Errorf("the admin API's last_error does not show the provider's echo redacted")
	}
	eventually(3*time.Second, func() bool { return strings.Contains(g.logText(), "you sent Authorization") })
	for _, f := range forms {
		if strings.Contains(status, f) {
			t.Errorf("the admin API's last_error carries a form of a secret the provider echoed")
		}
		if strings.Contains(g.logText(), f) {
			t.Errorf("the log (WARN line or Caddy's error log) carries a form of a secret the provider echoed")
		}
	}
	if !strings.Contains(g.logText(), "you sent Authorization: Basic [REDACTED]") {
		t.Errorf("the WARN line does not give the provider's words with the secret redacted")
	}
}

// TestReloadLogoutsSideBySide: a reload that removes two Telenor sources
// whose logout endpoint hangs returns without waiting for them, and the two
// logouts are in flight at once (before: one after the other, each up to
// its timeout, inside the reload).
func TestReloadLogoutsSideBySide(t *testing.T) {
	p := startProvider(t, emulator.Telenor)
	b := startBackend(t, p)
	var inFlight, most atomic.Int64
	release := make(chan struct{})
	logout := startHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer close(release)
	g := startGateway(t, fmt.Sprintf(`
	handle /one/* {
		upstream_oauth telenor {
			name logout-one
			token_url %[1]s
			logout_url %[2]s/logout
			client_id client-telenor
			client_secret secret-telenor-Zq8
			username user-telenor
			password password-telenor-Xk3
			timeout 30s
		}
		reverse_proxy %[3]s
	}
	handle /two/* {
		upstream_oauth telenor {
			name logout-two
			token_url %[1]s
			logout_url %[2]s/logout
			client_id client-telenor
			client_secret secret-telenor-Zq8
			username user-telenor
			password password-telenor-Xk3
			timeout 30s
		}
		reverse_proxy %[3]s
	}
`, p.TokenURL(), logout, b.URL()))
	for _, path := range []string{"/one/x", "/two/x"} {
		if status, _, _ := g.get(path); status != http.StatusOK {
			t.Fatalf("%s: %d", path, status)
		}
	}
	start := time.Now()
	g.load("\trespond \"no sources\"\n") // returns only once the old config is cleaned up
	t.Logf("the reload took %v with two logouts hanging (timeout 30s each)", time.Since(start).Round(time.Millisecond))
	if !eventually(10*time.Second, func() bool { return most.Load() == 2 }) {
		t.Errorf("logouts in flight at once: %d, want 2: the contract: logouts of many sources run side by side, and a reload waits for none", most.Load())
	}
}
