package integration

import (
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-upstream-oauth/upstream_oauth/integration/emulator"
)

// The backoff schedule of cache.Source with its defaults, which the
// Caddyfile does not change: the n-th failure in a row waits between base
// and min(backoffMax, base·2ⁿ⁻¹); a credential error starts from 8×base.
const (
	backoffBase = time.Second
	backoffMax  = 5 * time.Minute
)

// backoffCeiling is the longest wait after the n-th failure in a row.
func backoffCeiling(base time.Duration, n int) time.Duration {
	c := base
	for i := 1; i < n && c < backoffMax; i++ {
		c *= 2
	}
	return min(c, max(backoffMax, base))
}

// recordedProvider serves p on a new server that notes when each token
// request arrives; it returns the token URL and the arrival times.
func recordedProvider(t *testing.T, p *emulator.Provider) (string, func() []time.Time) {
	t.Helper()
	var mu sync.Mutex
	var times []time.Time
	url := startHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == p.Kind().TokenPath() {
			mu.Lock()
			times = append(times, time.Now())
			mu.Unlock()
		}
		p.ServeHTTP(w, r)
	}))
	return url + p.Kind().TokenPath(), func() []time.Time {
		mu.Lock()
		defer mu.Unlock()
		return append([]time.Time(nil), times...)
	}
}

// loadResult is what clients hammering a gateway saw.
type loadResult struct {
	requests      int
	statuses      map[int]int
	transportErrs int
	noRetryAfter  int // 502s without a valid Retry-After
	retryAfterMax int // the longest Retry-After, in seconds
	leakedHeaders int // 502s with the upstream's WWW-Authenticate
}

// hammer sends GETs through g from clients goroutines, each pausing pause
// between requests, until d has passed.
func hammer(g *gateway, clients int, d, pause time.Duration) loadResult {
	res := loadResult{statuses: map[int]int{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	client := &http.Client{
		Timeout:   15 * time.Second,
		Transport: &http.Transport{MaxIdleConnsPerHost: clients},
	}
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(d)
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				resp, err := client.Get(g.url("/load"))
				mu.Lock()
				res.requests++
				if err != nil {
					res.transportErrs++
					mu.Unlock()
					continue
				}
				mu.Unlock()
				_, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				mu.Lock()
				if err != nil {
					res.transportErrs++
				}
				res.statuses[resp.StatusCode]++
				if resp.StatusCode == http.StatusBadGateway {
					ra, err := strconv.Atoi(resp.Header.Get("Retry-After"))
					if err != nil || ra < 1 {
						res.noRetryAfter++
					}
					res.retryAfterMax = max(res.retryAfterMax, ra)
					if resp.Header.Get("WWW-Authenticate") != "" {
						res.leakedHeaders++
					}
				}
				mu.Unlock()
				time.Sleep(pause)
			}
		}()
	}
	wg.Wait()
	return res
}

// checkBackoffSchedule checks the token requests at times against the
// schedule: every gap is at least base (the jitter's floor), the gap after
// the n-th failure at most its ceiling (plus slack for a loaded machine),
// and their number at most what base-long gaps allow in the window.
func checkBackoffSchedule(t *testing.T, times []time.Time, base time.Duration, start, end time.Time) {
	t.Helper()
	const tolerance = 100 * time.Millisecond // arrival times vs. send times
	const slack = time.Second                // a late timer on a busy machine
	if len(times) == 0 {
		t.Fatalf("no token request at all")
	}
	for i := 1; i < len(times); i++ {
		gap := times[i].Sub(times[i-1])
		if gap < base-tolerance {
			t.Errorf("token requests %d and %d only %v apart: the backoff floor is %v", i, i+1, gap, base)
		}
		if ceil := backoffCeiling(base, i); gap > ceil+slack {
			t.Errorf("after failure %d the retry came %v later, ceiling %v", i, gap, ceil)
		}
	}
	if last := times[len(times)-1]; end.Sub(last) > backoffCeiling(base, len(times))+slack {
		t.Errorf("no retry in the %v after failure %d (ceiling %v)", end.Sub(last), len(times), backoffCeiling(base, len(times)))
	}
	bound := 1 + int(end.Sub(times[0])/base)
	if len(times) > bound {
		t.Errorf("%d token requests in %v: the schedule allows at most %d", len(times), end.Sub(start).Round(time.Millisecond), bound)
	}
}

// TestBackoffProviderDown: the provider is down while 20 clients hammer the
// gateway for 6s. Token requests follow the backoff schedule (base 1s,
// doubling ceiling, jitter): load never speeds them up; every 502 carries
// Retry-After; nothing reaches the backend.
func TestBackoffProviderDown(t *testing.T) {
	p := startProvider(t, emulator.ONEiO)
	p.SetMode(emulator.Down)
	tokenURL, times := recordedProvider(t, p)
	b := startBackend(t, p)
	g := startGateway(t, oneioBlock(tokenURL)+"\treverse_proxy "+b.URL()+"\n")

	const window = 6 * time.Second
	start := time.Now()
	res := hammer(g, 20, window, 5*time.Millisecond)
	end := time.Now()
	got := times()
	var inWindow []time.Time
	for _, at := range got {
		if !at.After(end) {
			inWindow = append(inWindow, at)
		}
	}
	checkBackoffSchedule(t, inWindow, backoffBase, start, end)
	// With the floor of 1s the schedule allows 7 in 6s; the ceilings
	// (1s, 2s, 4s, 8s) make at least 3 certain.
	if len(inWindow) < 3 {
		t.Errorf("%d token requests in %v, the schedule makes at least 3", len(inWindow), window)
	}
	if res.transportErrs != 0 || res.statuses[http.StatusBadGateway] != res.requests {
		t.Errorf("statuses %v, %d transport errors: want only 502", res.statuses, res.transportErrs)
	}
	if res.noRetryAfter != 0 {
		t.Errorf("%d of %d 502s without a Retry-After", res.noRetryAfter, res.statuses[http.StatusBadGateway])
	}
	if n := b.Accepted() + b.Rejected(); n != 0 || len(b.SeenAuthorization()) != 0 {
		t.Errorf("%d requests reached the backend", n)
	}
	gaps := make([]string, 0, len(inWindow))
	for i := 1; i < len(inWindow); i++ {
		gaps = append(gaps, inWindow[i].Sub(inWindow[i-1]).Round(time.Millisecond).String())
	}
	t.Logf("provider down, 20 clients for %v: %d requests (all 502 with Retry-After, max %ds) → %d token requests (schedule bound %d), gaps [%s]; backend reached: %d",
		window, res.requests, res.retryAfterMax, len(inWindow), 1+int(end.Sub(inWindow[0])/backoffBase), strings.Join(gaps, " "), b.Accepted()+b.Rejected())
}

// TestBackoffRejectedCredentials: the provider rejects the credentials
// (401 invalid_client), which backs off from 8× the base: over 6s of load
// one token request is made in all.
func TestBackoffRejectedCredentials(t *testing.T) {
	p := startProvider(t, emulator.ONEiO)
	p.SetMode(emulator.RejectCredentials)
	tokenURL, times := recordedProvider(t, p)
	b := startBackend(t, p)
	g := startGateway(t, oneioBlock(tokenURL)+"\treverse_proxy "+b.URL()+"\n")

	const window = 6 * time.Second
	credBase := 8 * backoffBase
	res := hammer(g, 20, window, 5*time.Millisecond)
	got := times()
	// The first failure waits exactly 8×base (no jitter yet): past the window.
	if len(got) != 1 {
		t.Errorf("%d token requests in %v after a credential error, want 1 (next due after %v)", len(got), window, credBase)
	}
	if res.transportErrs != 0 || res.statuses[http.StatusBadGateway] != res.requests {
		t.Errorf("statuses %v, %d transport errors: want only 502", res.statuses, res.transportErrs)
	}
	if res.noRetryAfter != 0 {
		t.Errorf("%d of %d 502s without a Retry-After", res.noRetryAfter, res.statuses[http.StatusBadGateway])
	}
	if want := int(credBase / time.Second); res.retryAfterMax > want {
		t.Errorf("Retry-After up to %ds, want at most %ds", res.retryAfterMax, want)
	}
	if n := b.Accepted() + b.Rejected(); n != 0 || len(b.SeenAuthorization()) != 0 {
		t.Errorf("%d requests reached the backend", n)
	}
	if !strings.Contains(g.logText(), "invalid_client") {
		t.Errorf("the log does not give the provider's reason invalid_client")
	}
	t.Logf("credentials rejected, 20 clients for %v: %d requests (all 502, Retry-After ≤ %ds) → %d token request(s); backend reached: %d",
		window, res.requests, res.retryAfterMax, len(got), b.Accepted()+b.Rejected())
}

// authRecorder stands in front of a backend and notes the Authorization
// values of every request (the Backend keeps only the last 1000).
type authRecorder struct {
	next http.Handler
	mu   sync.Mutex
	seen [][]string // Authorization values of each request
	code []int      // the backend's answer to each
}

func (a *authRecorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	vals := append([]string(nil), r.Header.Values("Authorization")...)
	sw := &codeWriter{ResponseWriter: w, code: http.StatusOK}
	a.next.ServeHTTP(sw, r)
	a.mu.Lock()
	a.seen = append(a.seen, vals)
	a.code = append(a.code, sw.code)
	a.mu.Unlock()
}

type codeWriter struct {
	http.ResponseWriter
	code int
}

func (c *codeWriter) WriteHeader(code int) {
	c.code = code
	c.ResponseWriter.WriteHeader(code)
}

// TestChaos: 8 clients for 20s while the provider cycles every 2s through
// Up, Down, Slow (1.5s), Garbage and Up with every token revoked, issuing
// tokens that live 3s. Nothing reaches the backend without a token the
// provider issued; every request is answered 200 or 502 (or 401 passed
// through when a replay met a second refusal); token requests stay within
// what the schedule allows.
func TestChaos(t *testing.T) {
	p := startProvider(t, emulator.OneNCE)
	p.SetTTL(3 * time.Second)
	p.SetSlowDelay(1500 * time.Millisecond)
	backend := emulator.NewBackend(p)
	rec := &authRecorder{next: backend}
	g := startGateway(t, block(p)+"\treverse_proxy "+startHandler(t, rec)+"\n")

	const (
		phase    = 2 * time.Second
		duration = 20 * time.Second
	)
	phases := []string{"up", "down", "slow", "garbage", "revoked"}
	var revocations atomic.Int64
	var revokedMu sync.Mutex
	revoked := map[string]bool{} // tokens issued before a RevokeAll
	stop := make(chan struct{})
	driverDone := make(chan struct{})
	go func() {
		defer close(driverDone)
		tick := time.NewTicker(phase)
		defer tick.Stop()
		for i := 0; ; i++ {
			switch phases[i%len(phases)] {
			case "up":
				p.SetMode(emulator.Up)
			case "down":
				p.SetMode(emulator.Down)
			case "slow":
				p.SetMode(emulator.Slow)
			case "garbage":
				p.SetMode(emulator.Garbage)
			case "revoked":
				p.SetMode(emulator.Up)
				p.RevokeAll()
				revocations.Add(1)
				revokedMu.Lock()
				for _, tok := range p.Tokens() {
					revoked[tok] = true
				}
				revokedMu.Unlock()
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	start := time.Now()
	res := hammer(g, 8, duration, 10*time.Millisecond)
	elapsed := time.Since(start)
	tokenRequests := p.TokenRequests()
	close(stop)
	<-driverDone
	p.SetMode(emulator.Up)

	// Every request the backend saw carried one "Bearer <token>" with a
	// token the provider issued (revoked or expired ones are refused by
	// the backend: that is renew_on's case, and counted apart).
	issued := map[string]bool{}
	for _, tok := range p.Tokens() {
		issued[tok] = true
	}
	rec.mu.Lock()
	forwarded := len(rec.seen)
	var unissued, refused, refusedLive int
	refusedTokens := map[string]bool{}
	for i, vals := range rec.seen {
		tok, ok := strings.CutPrefix(strings.Join(vals, ","), "Bearer ")
		if len(vals) != 1 || !ok || !issued[tok] {
			unissued++
			continue
		}
		if rec.code[i] != http.StatusOK {
			refused++
			refusedTokens[tok] = true
			if !revoked[tok] {
				refusedLive++ // not revoked: expired by the provider's clock
			}
		}
	}
	rec.mu.Unlock()
	if unissued != 0 {
		t.Errorf("%d of %d requests reached the backend without a token the provider issued", unissued, forwarded)
	}

	if res.transportErrs != 0 {
		t.Errorf("%d requests got no answer", res.transportErrs)
	}
	for status, n := range res.statuses {
		if status != http.StatusOK && status != http.StatusBadGateway && status != http.StatusUnauthorized {
			t.Errorf("%d requests answered %d, want only 200, 502 (or 401)", n, status)
		}
	}
	if res.statuses[http.StatusOK] == 0 {
		t.Errorf("no request succeeded: statuses %v", res.statuses)
	}
	if res.noRetryAfter != 0 {
		t.Errorf("%d 502s without Retry-After", res.noRetryAfter)
	}
	if res.leakedHeaders != 0 {
		t.Errorf("%d 502s carried the refused upstream answer's WWW-Authenticate", res.leakedHeaders)
	}

	// Token requests run one at a time, and each starts at least 1s after
	// the one before: after a failure, the backoff floor; after a success,
	// the renewal, due 3s−20%−5% ≥ 2.25s after that request was sent. The
	// one exception is a token the backend refused (revoked), which is
	// retired and renewed at once: at most one per refused token.
	bound := 1 + int(math.Ceil(elapsed.Seconds()/backoffBase.Seconds())) + len(refusedTokens)
	if tokenRequests > int64(bound) {
		t.Errorf("%d token requests in %v: at most %d allowed (1 + one per second + %d refused tokens)",
			tokenRequests, elapsed.Round(time.Millisecond), bound, len(refusedTokens))
	}
	t.Logf("chaos %v (%d revocations): %d client requests %v, %d token requests (bound %d), %d tokens issued; "+
		"backend saw %d requests, %d refused with a revoked token (%d distinct tokens, retired by renew_on), %d with one expired by the provider's clock; "+
		"requests that reached the backend without a token the provider issued: %d",
		elapsed.Round(time.Millisecond), revocations.Load(), res.requests, res.statuses, tokenRequests, bound, p.Issued(),
		forwarded, refused-refusedLive, len(refusedTokens), refusedLive, unissued)
}

// TestChaosRevokedThenDown is the chaos cycle's worst turn, made
// deterministic: the token is revoked and the provider goes down. The next
// request is refused upstream with the revoked token, the renewal fails,
// and the client gets a clean 502 with Retry-After: nothing of the refused
// upstream answer (its WWW-Authenticate, its Content-Length), and a body
// that reads to its end.
func TestChaosRevokedThenDown(t *testing.T) {
	p := startProvider(t, emulator.OneNCE)
	b := startBackend(t, p)
	g := startGateway(t, proxied(p, b))
	if status, body, _ := g.get("/before"); status != http.StatusOK {
		t.Fatalf("before: %d %q", status, body)
	}
	p.RevokeAll()
	p.SetMode(emulator.Down)
	client := &http.Client{Timeout: 15 * time.Second}
	resp, err := client.Get(g.url("/after"))
	if err != nil {
		t.Fatalf("after revocation and outage: %v", err)
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Errorf("reading the 502's body: %v", err)
	}
	if resp.StatusCode != http.StatusBadGateway {
		t.Errorf("status %d, want 502", resp.StatusCode)
	}
	if resp.Header.Get("Retry-After") == "" {
		t.Errorf("the 502 has no Retry-After")
	}
	for _, h := range []string{"WWW-Authenticate", emulator.BodyLengthHeader} {
		if v := resp.Header.Get(h); v != "" {
			t.Errorf("the 502 carries the refused upstream answer's %s: %q", h, v)
		}
	}
	if n := p.TokenRequests(); n != 2 {
		t.Errorf("token requests: %d, want 2", n)
	}
	if b.Accepted() != 1 || b.Rejected() != 1 {
		t.Errorf("backend accepted %d, rejected %d; want 1, 1", b.Accepted(), b.Rejected())
	}
}
