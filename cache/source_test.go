package cache

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-upstream-oauth/upstream_oauth/grants"
)

// 200 concurrent Gets on a cold source share one token request.
func TestColdConcurrentGetsOneFetch(t *testing.T) {
	f := newFake(time.Hour)
	f.setDelay(200 * time.Millisecond)
	s := newSource(t, Options{Name: "cold", Fetcher: f})

	const n = 200
	start := make(chan struct{})
	toks := make([]*grants.Token, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			toks[i], errs[i] = s.Get(context.Background())
		}()
	}
	close(start)
	wg.Wait()

	if got := f.total(); got != 1 {
		t.Fatalf("token requests = %d, want 1", got)
	}
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("Get %d: %v", i, errs[i])
		}
		if toks[i] == nil || toks[i] != toks[0] {
			t.Fatalf("Get %d returned a different token", i)
		}
	}
}

// Sequential Gets with a valid token make no further request.
func TestSequentialGetsOneFetch(t *testing.T) {
	f := newFake(time.Hour)
	s := newSource(t, Options{Fetcher: f})
	first, err := s.Get(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10000 {
		tok, err := s.Get(canceled())
		if err != nil {
			t.Fatalf("Get %d: %v", i, err)
		}
		if tok != first {
			t.Fatalf("Get %d returned another token", i)
		}
	}
	if got := f.total(); got != 1 {
		t.Fatalf("token requests = %d, want 1", got)
	}
}

// A waiter that gives up does not abandon the token request: the token is
// still obtained and held.
func TestGetContextCanceledFetchContinues(t *testing.T) {
	f := newFake(time.Hour)
	f.setDelay(200 * time.Millisecond)
	s := newSource(t, Options{Fetcher: f})
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		time.Sleep(20 * time.Millisecond)
		cancel()
	}()
	_, err := s.Get(ctx)
	var ue *UnavailableError
	if !errors.As(err, &ue) || !errors.Is(err, context.Canceled) {
		t.Fatalf("Get with a canceled context: %v, want an *UnavailableError wrapping context.Canceled", err)
	}
	eventually(t, 10*time.Second, func() bool { return s.Status().State == "valid" }, "token never obtained")
	if _, err := s.Get(canceled()); err != nil {
		t.Fatalf("Get after the fetch: %v", err)
	}
	if got := f.total(); got != 1 {
		t.Fatalf("token requests = %d, want 1", got)
	}
}

// With steady traffic, renewal runs in the background before expiry: no Get
// ever waits (each is made with an already-canceled context, which fails if
// it has to wait) and the token changes.
func TestBackgroundRenewalNeverWaits(t *testing.T) {
	f := newFake(3 * time.Second)
	f.setDelay(50 * time.Millisecond)
	s := newSource(t, Options{Fetcher: f, RefreshFraction: 0.5})

	first, err := s.Get(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	seen := map[*grants.Token]bool{first: true}
	gets := 0
	deadline := time.Now().Add(20 * time.Second)
	for len(seen) < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("saw %d distinct tokens in %d Gets, %d token requests; want 3", len(seen), gets, f.total())
		}
		tok, err := s.Get(canceled())
		gets++
		if err != nil {
			t.Fatalf("Get %d waited or failed: %v (status %+v)", gets, err, s.Status())
		}
		if tok == nil {
			t.Fatalf("Get %d returned no token", gets)
		}
		seen[tok] = true
		time.Sleep(20 * time.Millisecond)
	}
	if got := f.total(); got < 2 {
		t.Fatalf("token requests = %d, want >= 2", got)
	}
	if f.refreshes.Load() != 0 {
		t.Fatalf("Refresh called %d times without a refresh token", f.refreshes.Load())
	}
}

// An idle source is not renewed by its timer: after one Get and no more,
// the token lapses without a token request, and the next Get fetches anew.
func TestIdleSourceNotRenewed(t *testing.T) {
	const lifetime = 600 * time.Millisecond
	f := newFake(lifetime)
	s := newSource(t, Options{Fetcher: f, RefreshFraction: 0.5})

	tok, err := s.Get(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// Wait until well past expiry; the renewal timer (at about half the
	// lifetime) has fired by then.
	for time.Now().Before(tok.Expiry.Add(lifetime / 2)) {
		time.Sleep(20 * time.Millisecond)
	}
	if got := f.total(); got != 1 {
		t.Fatalf("token requests while idle = %d, want 1", got)
	}
	if st := s.Status(); st.State != "idle" {
		t.Fatalf("state after the token lapsed = %q, want idle", st.State)
	}
	tok2, err := s.Get(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if tok2 == tok {
		t.Fatal("Get after expiry returned the expired token")
	}
	if got := f.total(); got != 2 {
		t.Fatalf("token requests = %d, want 2", got)
	}
}

// A single read after the token was obtained is enough for the timer to
// renew it.
func TestTimerRenewsUsedToken(t *testing.T) {
	const lifetime = 800 * time.Millisecond
	f := newFake(lifetime)
	s := newSource(t, Options{Fetcher: f, RefreshFraction: 0.5})
	tok, err := s.Get(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(canceled()); err != nil { // a read of the held token
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, func() bool { return f.total() >= 2 }, "the timer did not renew a used token")
	eventually(t, 10*time.Second, func() bool {
		tok2, err := s.Get(canceled())
		return err == nil && tok2 != tok
	}, "renewed token not served")
}

// After failures, request load does not speed up retries: hammering Get
// causes a handful of token requests, spaced at least BackoffBase apart, and
// Get answers *UnavailableError at once meanwhile.
func TestBackoffHammer(t *testing.T) {
	const base = 200 * time.Millisecond
	f := newFake(time.Hour)
	f.setTokenErr(&grants.ProviderError{Status: 503, Description: "down"})
	s := newSource(t, Options{Fetcher: f, BackoffBase: base, BackoffMax: 5 * time.Second})

	var gets, positive atomic.Int64
	var bad atomic.Value
	begin := time.Now()
	stop := time.Now().Add(2 * time.Second)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(stop) {
				tok, err := s.Get(context.Background())
				gets.Add(1)
				var ue *UnavailableError
				switch {
				case tok != nil:
					bad.Store("Get returned a token from a failing fetcher")
				case !errors.As(err, &ue):
					bad.Store(fmt.Sprintf("Get error %T %v, want *UnavailableError", err, err))
				case ue.RetryAfter > 0:
					positive.Add(1)
				}
				time.Sleep(time.Millisecond)
			}
		}()
	}
	wg.Wait()
	fetches := f.total()
	elapsed := time.Since(begin)
	if msg := bad.Load(); msg != nil {
		t.Fatal(msg)
	}
	if fetches < 2 {
		t.Fatalf("token requests = %d in %v, want retries", fetches, elapsed)
	}
	// Every retry waits at least base after the failure before it.
	if limit := int64(elapsed/base) + 1; fetches > limit {
		t.Fatalf("token requests = %d in %v, want <= %d", fetches, elapsed, limit)
	}
	hist := f.history()
	for i := 1; i < len(hist); i++ {
		if gap := hist[i].start.Sub(hist[i-1].end); gap < base {
			t.Fatalf("retry %d started %v after the failure before it, want >= %v", i, gap, base)
		}
	}
	if g := gets.Load(); g < 10*fetches {
		t.Fatalf("only %d Gets for %d token requests", g, fetches)
	}
	if positive.Load() == 0 {
		t.Fatal("no Get reported a RetryAfter > 0 while backing off")
	}
	eventually(t, 10*time.Second, func() bool {
		st := s.Status()
		n := f.total()
		return st.Requests == n && st.Failures == n
	}, "status counts %+v, want %d requests and failures", s.Status(), f.total())
}

// A credential error (401) backs off at least 8× BackoffBase.
func TestBackoffCredentials(t *testing.T) {
	const base = time.Second
	f := newFake(time.Hour)
	f.setTokenErr(&grants.ProviderError{Status: 401, Code: "invalid_client", Description: "bad secret"})
	s := newSource(t, Options{Fetcher: f, BackoffBase: base})

	_, err := s.Get(context.Background())
	var ue *UnavailableError
	if !errors.As(err, &ue) {
		t.Fatalf("Get: %v, want *UnavailableError", err)
	}
	var pe *grants.ProviderError
	if !errors.As(err, &pe) || pe.Status != 401 {
		t.Fatalf("Get: %v, want the provider's 401 wrapped", err)
	}
	if ue.RetryAfter <= 0 {
		t.Fatalf("RetryAfter = %v, want > 0", ue.RetryAfter)
	}
	st := s.Status()
	if st.RetryAt == nil {
		t.Fatalf("status has no retry_at: %+v", st)
	}
	failedAt := f.history()[0].end
	if d := st.RetryAt.Sub(failedAt); d < 8*base {
		t.Fatalf("retry %v after a 401, want >= %v", d, 8*base)
	}
	// Still backing off: Get fails at once, without a request.
	_, err = s.Get(context.Background())
	if !errors.As(err, &ue) || ue.RetryAfter <= 0 {
		t.Fatalf("second Get: %v, want *UnavailableError with RetryAfter > 0", err)
	}
	if got := f.total(); got != 1 {
		t.Fatalf("token requests = %d, want 1", got)
	}
	if !strings.Contains(s.Status().LastError, "invalid_client") {
		t.Fatalf("last error %q does not give the provider's reason", s.Status().LastError)
	}
}

// Renew forces a token request while backing off.
func TestRenewIgnoresBackoff(t *testing.T) {
	f := newFake(time.Hour)
	f.setTokenErr(errors.New("down"))
	s := newSource(t, Options{Fetcher: f, BackoffBase: time.Minute})
	if _, err := s.Get(context.Background()); err == nil {
		t.Fatal("Get succeeded with a failing fetcher")
	}
	if st := s.Status(); st.State != "backoff" {
		t.Fatalf("state = %q, want backoff", st.State)
	}
	f.setTokenErr(nil)
	if err := s.Renew(context.Background()); err != nil {
		t.Fatalf("Renew: %v", err)
	}
	if got := f.total(); got != 2 {
		t.Fatalf("token requests = %d, want 2", got)
	}
	if _, err := s.Get(canceled()); err != nil {
		t.Fatalf("Get after Renew: %v", err)
	}
	if st := s.Status(); st.State != "valid" || st.LastError != "" {
		t.Fatalf("status after Renew = %+v, want valid with no error", st)
	}
}

// A still-valid token is served while its renewals fail, and not after it
// expires.
func TestValidTokenServedWhileRenewalsFail(t *testing.T) {
	const lifetime = 1500 * time.Millisecond
	f := newFake(lifetime)
	s := newSource(t, Options{Fetcher: f, RefreshFraction: 0.5, BackoffBase: 100 * time.Millisecond})

	tok, err := s.Get(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	f.setTokenErr(errors.New("provider down"))
	sawBackoff := false
	for {
		got, err := s.Get(canceled())
		after := time.Now()
		if !after.Before(tok.Expiry) {
			break
		}
		if err != nil {
			t.Fatalf("Get before expiry failed: %v", err)
		}
		if got != tok {
			t.Fatal("Get returned another token though every renewal failed")
		}
		if st := s.Status(); st.State == "backoff" {
			sawBackoff = true
			if st.Expiry == nil || !st.Expiry.Equal(tok.Expiry) {
				t.Fatalf("status while backing off with a valid token: %+v", st)
			}
			if !strings.Contains(st.LastError, "provider down") {
				t.Fatalf("last error = %q", st.LastError)
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	if f.total() < 2 {
		t.Fatalf("token requests = %d: no renewal was attempted", f.total())
	}
	if !sawBackoff {
		t.Log("never observed the backoff state (timing); renewal failures were counted")
	}
	got, err := s.Get(context.Background())
	if err == nil || got != nil {
		t.Fatalf("Get after expiry = %v, %v; want an error and no token", got, err)
	}
	var ue *UnavailableError
	if !errors.As(err, &ue) {
		t.Fatalf("Get after expiry: %v, want *UnavailableError", err)
	}
}

// Retire drops the current token and starts one request, however many
// callers retire it; a stale token is left alone. (Retirements are spaced
// by a millisecond here; TestRetireSpacing tests the spacing.)
func TestRetire(t *testing.T) {
	f := newFake(time.Hour)
	var logouts atomic.Int64
	var loggedOut sync.Map
	s := newSource(t, Options{Fetcher: f, RetireBase: time.Millisecond, Logout: func(_ context.Context, tok *grants.Token) error {
		logouts.Add(1)
		loggedOut.Store(tok, true)
		return nil
	}})

	tok1, err := s.Get(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !s.Retire(tok1) {
		t.Fatal("Retire(current) = false")
	}
	eventually(t, 10*time.Second, func() bool { return f.total() == 2 && s.Status().State == "valid" },
		"no new token after Retire")
	tok2, err := s.Get(canceled())
	if err != nil {
		t.Fatal(err)
	}
	if tok2 == tok1 {
		t.Fatal("Get after Retire returned the retired token")
	}
	eventually(t, 10*time.Second, func() bool { _, ok := loggedOut.Load(tok1); return ok },
		"retired token not logged out")

	// Two concurrent refusals of the same token: one renewal.
	f.setDelay(100 * time.Millisecond)
	var wg sync.WaitGroup
	var retired atomic.Int64
	start := make(chan struct{})
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			if s.Retire(tok2) {
				retired.Add(1)
			}
		}()
	}
	close(start)
	wg.Wait()
	if got := retired.Load(); got != 1 {
		t.Fatalf("%d concurrent Retire calls reported the token current, want 1", got)
	}
	tok3, err := s.Get(context.Background()) // joins the request in flight
	if err != nil {
		t.Fatal(err)
	}
	if tok3 == tok2 || tok3 == tok1 {
		t.Fatal("Get after the second Retire returned a retired token")
	}
	if got := f.total(); got != 3 {
		t.Fatalf("token requests = %d, want 3", got)
	}

	// A stale token is left alone.
	if s.Retire(tok1) || s.Retire(tok2) {
		t.Fatal("Retire(stale) = true")
	}
	if s.Retire(nil) {
		t.Fatal("Retire(nil) = true")
	}
	time.Sleep(50 * time.Millisecond)
	if got := f.total(); got != 3 {
		t.Fatalf("token requests after stale Retire = %d, want 3", got)
	}
	if cur, _ := s.Get(canceled()); cur != tok3 {
		t.Fatal("stale Retire changed the current token")
	}
	eventually(t, 10*time.Second, func() bool { return logouts.Load() == 2 }, "logouts = %d, want 2", logouts.Load())
}

// With a refresh token, the next renewal uses the refresh_token grant; when
// that fails, the configured grant is used instead.
func TestRefreshTokenGrant(t *testing.T) {
	f := newFake(time.Hour)
	f.setIssueRefresh(true)
	var mu sync.Mutex
	var results []Result
	s := newSource(t, Options{Name: "rt", Fetcher: f, OnResult: func(r Result) {
		mu.Lock()
		results = append(results, r)
		mu.Unlock()
	}})
	// An attempt's last result is reported after its flight ends (after
	// Renew returns): each step waits for it, so that the next attempt's
	// results come after it, in the order of the token requests.
	settle := func() {
		t.Helper()
		eventually(t, 10*time.Second, func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(results) == int(f.total())
		}, "results and token requests differ in number")
	}

	tok1, err := s.Get(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if f.tokens.Load() != 1 || f.refreshes.Load() != 0 {
		t.Fatalf("first token: Token %d, Refresh %d calls; want 1, 0", f.tokens.Load(), f.refreshes.Load())
	}
	settle()

	// Renewal with the refresh token.
	if err := s.Renew(context.Background()); err != nil {
		t.Fatal(err)
	}
	settle()
	if f.tokens.Load() != 1 || f.refreshes.Load() != 1 {
		t.Fatalf("renewal: Token %d, Refresh %d calls; want 1, 1", f.tokens.Load(), f.refreshes.Load())
	}
	h := f.history()
	if h[1].kind != "refresh" || h[1].refreshToken != tok1.RefreshToken {
		t.Fatalf("renewal called %s with %q, want refresh with the first token's refresh token", h[1].kind, h[1].refreshToken)
	}
	tok2, _ := s.Get(canceled())
	if tok2 == tok1 || tok2 != h[1].tok {
		t.Fatal("the refreshed token is not served")
	}

	// Refresh fails: fall back to the configured grant.
	f.setRefreshErr(&grants.ProviderError{Status: 400, Code: "invalid_grant"})
	if err := s.Renew(context.Background()); err != nil {
		t.Fatalf("Renew with a failing refresh: %v", err)
	}
	settle()
	if f.tokens.Load() != 2 || f.refreshes.Load() != 2 {
		t.Fatalf("fallback: Token %d, Refresh %d calls; want 2, 2", f.tokens.Load(), f.refreshes.Load())
	}
	h = f.history()
	if h[2].kind != "refresh" || h[2].refreshToken != tok2.RefreshToken || h[3].kind != "token" {
		t.Fatalf("fallback calls: %s(%q), %s; want refresh(%q), token", h[2].kind, h[2].refreshToken, h[3].kind, tok2.RefreshToken)
	}
	tok3, _ := s.Get(canceled())
	if tok3 != h[3].tok {
		t.Fatal("the fallback token is not served")
	}
	if st := s.Status(); st.State != "valid" || st.Failures != 1 || st.Requests != 4 {
		t.Fatalf("status = %+v, want valid with 4 requests, 1 failure", st)
	}

	// Both fail: the refresh token is dropped, the next renewal uses the
	// configured grant only.
	f.setTokenErr(errors.New("down"))
	if err := s.Renew(context.Background()); err == nil {
		t.Fatal("Renew succeeded with both grants failing")
	}
	settle()
	f.setTokenErr(nil)
	f.setRefreshErr(nil)
	if err := s.Renew(context.Background()); err != nil {
		t.Fatal(err)
	}
	settle()
	h = f.history()
	if last := h[len(h)-1]; last.kind != "token" || h[len(h)-2].kind != "token" || h[len(h)-3].kind != "refresh" {
		t.Fatalf("after both grants failed, calls were %v", kinds(h))
	}

	eventually(t, 10*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(results) == len(h)
	}, "results and token requests differ in number")
	mu.Lock()
	defer mu.Unlock()
	for i, r := range results {
		if r.Source != "rt" {
			t.Fatalf("result %d source = %q", i, r.Source)
		}
		if r.Refresh != (h[i].kind == "refresh") {
			t.Fatalf("result %d Refresh = %v for a %s call", i, r.Refresh, h[i].kind)
		}
		if (r.Err == nil) == (r.Token == nil) {
			t.Fatalf("result %d: Token %v, Err %v; want exactly one", i, r.Token, r.Err)
		}
	}
}

func kinds(h []fetchCall) []string {
	var out []string
	for _, c := range h {
		out = append(out, c.kind)
	}
	return out
}

// Stop leaves no goroutine behind, abandons the request in flight, stops
// the timer, and makes Get fail.
func TestStop(t *testing.T) {
	before := runtime.NumGoroutine()
	const lifetime = time.Second
	f := newFake(lifetime)
	var logouts atomic.Int64
	s := New(Options{Fetcher: f, RefreshFraction: 0.5, Logout: func(context.Context, *grants.Token) error {
		logouts.Add(1)
		return nil
	}})
	tok, err := s.Get(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// From now on a request only ends when cancelled.
	f.setDelay(time.Hour)
	if _, err := s.Get(canceled()); err != nil { // mark it used: the timer would renew it
		t.Fatal(err)
	}
	// Start a renewal (the timer may have started it already).
	if err := s.Renew(canceled()); err == nil {
		t.Fatal("Renew with a canceled context returned nil")
	}
	eventually(t, 10*time.Second, func() bool { return f.total() == 2 }, "renewal not started")
	if got, err := s.Get(canceled()); err != nil || got != tok {
		t.Fatalf("Get during a renewal = %v, %v; want the held token at once", got, err)
	}

	s.Stop(false)
	if got := logouts.Load(); got != 0 {
		t.Fatalf("Stop(false) logged out %d times", got)
	}
	eventually(t, 10*time.Second, func() bool { return runtime.NumGoroutine() <= before },
		"goroutines %d after Stop, %d before", runtime.NumGoroutine(), before)

	// Past the renewal time and expiry: the timer makes no request.
	for time.Now().Before(tok.Expiry.Add(200 * time.Millisecond)) {
		time.Sleep(20 * time.Millisecond)
	}
	if got := f.total(); got != 2 {
		t.Fatalf("token requests after Stop = %d, want 2", got)
	}
	if _, err := s.Get(context.Background()); !errors.Is(err, ErrStopped) {
		t.Fatalf("Get after Stop: %v, want ErrStopped", err)
	}
	if err := s.Renew(context.Background()); !errors.Is(err, ErrStopped) {
		t.Fatalf("Renew after Stop: %v, want ErrStopped", err)
	}
	if st := s.Status(); st.State != "stopped" {
		t.Fatalf("state after Stop = %q", st.State)
	}
	s.Stop(true) // a second Stop does nothing
	if got := logouts.Load(); got != 0 {
		t.Fatalf("second Stop logged out %d times", got)
	}
	if got := f.total(); got != 2 {
		t.Fatalf("token requests = %d, want 2", got)
	}
}

// Get does not serve a token held when the source was stopped.
func TestGetAfterStopWithValidToken(t *testing.T) {
	f := newFake(time.Hour)
	s := New(Options{Fetcher: f})
	if _, err := s.Get(context.Background()); err != nil {
		t.Fatal(err)
	}
	s.Stop(false)
	if tok, err := s.Get(canceled()); !errors.Is(err, ErrStopped) || tok != nil {
		t.Fatalf("Get after Stop = %v, %v; want ErrStopped", tok, err)
	}
	if got := f.total(); got != 1 {
		t.Fatalf("token requests = %d, want 1", got)
	}
}

// Stop(true) logs the current token out once; Stop(false) does not.
func TestStopLogout(t *testing.T) {
	for _, logout := range []bool{true, false} {
		t.Run(fmt.Sprint(logout), func(t *testing.T) {
			f := newFake(time.Hour)
			var mu sync.Mutex
			var got []*grants.Token
			s := New(Options{Fetcher: f, Logout: func(ctx context.Context, tok *grants.Token) error {
				if _, ok := ctx.Deadline(); !ok {
					t.Error("logout without a deadline")
				}
				mu.Lock()
				got = append(got, tok)
				mu.Unlock()
				return nil
			}})
			tok, err := s.Get(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			s.Stop(logout)
			s.Stop(logout)
			s.WaitLogouts()
			mu.Lock()
			defer mu.Unlock()
			switch {
			case logout && (len(got) != 1 || got[0] != tok):
				t.Fatalf("Stop(true): %d logouts, want 1 with the current token", len(got))
			case !logout && len(got) != 0:
				t.Fatalf("Stop(false): %d logouts, want 0", len(got))
			}
		})
	}
}

// Stop(true) with no token held, or a failing logout, is harmless.
func TestStopLogoutNoToken(t *testing.T) {
	var logouts atomic.Int64
	s := New(Options{Fetcher: newFake(time.Hour), Logout: func(context.Context, *grants.Token) error {
		logouts.Add(1)
		return errors.New("logout refused")
	}})
	s.Stop(true)
	if logouts.Load() != 0 {
		t.Fatal("logout called with no token")
	}
	s2 := New(Options{Fetcher: newFake(time.Hour), Logout: func(context.Context, *grants.Token) error {
		logouts.Add(1)
		return errors.New("logout refused")
	}})
	if _, err := s2.Get(context.Background()); err != nil {
		t.Fatal(err)
	}
	s2.Stop(true)
	s2.WaitLogouts()
	if logouts.Load() != 1 {
		t.Fatalf("logouts = %d, want 1", logouts.Load())
	}
}

// Status reports idle, renewing, valid, backoff and stopped, with the last
// error, and never a token.
func TestStatus(t *testing.T) {
	f := newFake(time.Hour)
	f.setIssueRefresh(true)
	s := newSource(t, Options{Name: "status", Fetcher: f, BackoffBase: time.Minute})

	st := s.Status()
	if s.Name() != "status" || st.State != "idle" || st.Expiry != nil || st.LastSuccess != nil || st.LastError != "" {
		t.Fatalf("new source: %+v", st)
	}

	f.setDelay(300 * time.Millisecond)
	done := make(chan error, 1)
	go func() {
		_, err := s.Get(context.Background())
		done <- err
	}()
	eventually(t, 10*time.Second, func() bool { return s.Status().State == "renewing" }, "state never renewing")
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	f.setDelay(0)

	tok, _ := s.Get(canceled())
	st = s.Status()
	if st.State != "valid" || st.Expiry == nil || !st.Expiry.Equal(tok.Expiry) || st.RenewAt == nil ||
		!st.RenewAt.Before(tok.Expiry) || st.LastSuccess == nil || st.Requests != 1 || st.Failures != 0 {
		t.Fatalf("with a token: %+v", st)
	}
	checkNoSecret(t, st, tok)

	f.setTokenErr(errors.New("upstream exploded"))
	f.setRefreshErr(&grants.ProviderError{Status: 400, Code: "invalid_grant"}) // refused: the configured grant follows
	if err := s.Renew(context.Background()); err == nil {
		t.Fatal("Renew succeeded")
	}
	st = s.Status()
	if st.State != "backoff" || st.RetryAt == nil || !strings.Contains(st.LastError, "upstream exploded") ||
		st.Expiry == nil || st.Failures != 2 || st.Requests != 3 {
		t.Fatalf("after a failed renewal: %+v", st)
	}
	checkNoSecret(t, st, tok)

	s.Retire(tok)
	st = s.Status()
	if st.State != "backoff" || st.Expiry != nil {
		t.Fatalf("after Retire while backing off: %+v", st)
	}
	s.Stop(false)
	if st := s.Status(); st.State != "stopped" {
		t.Fatalf("after Stop: %+v", st)
	}
	checkNoSecret(t, s.Status(), tok)
}

func checkNoSecret(t *testing.T, st Status, tok *grants.Token) {
	t.Helper()
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	text := string(b) + fmt.Sprintf("%+v %#v", st, st)
	for _, secret := range []string{tok.AccessToken, tok.RefreshToken, "secret-"} {
		if secret != "" && strings.Contains(text, secret) {
			t.Fatalf("status shows a secret: %s", text)
		}
	}
}

// OnResult is called once per token request, with Token or Err set.
func TestOnResult(t *testing.T) {
	f := newFake(time.Hour)
	f.setDelay(100 * time.Millisecond)
	var mu sync.Mutex
	var results []Result
	s := newSource(t, Options{Name: "events", Fetcher: f, BackoffBase: time.Minute, OnResult: func(r Result) {
		mu.Lock()
		results = append(results, r)
		mu.Unlock()
	}})
	snapshot := func() []Result {
		mu.Lock()
		defer mu.Unlock()
		return append([]Result(nil), results...)
	}

	var wg sync.WaitGroup
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := s.Get(context.Background()); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	eventually(t, 10*time.Second, func() bool { return len(snapshot()) >= 1 }, "no result")
	tok, _ := s.Get(canceled())
	r := snapshot()
	if len(r) != 1 || r[0].Err != nil || r[0].Token != tok || r[0].Source != "events" || r[0].Refresh || r[0].Duration <= 0 {
		t.Fatalf("results after one request: %+v", r)
	}

	f.setTokenErr(&grants.ProviderError{Status: 500})
	if err := s.Renew(context.Background()); err == nil {
		t.Fatal("Renew succeeded")
	}
	eventually(t, 10*time.Second, func() bool { return len(snapshot()) >= 2 }, "no result for the failure")
	time.Sleep(50 * time.Millisecond)
	r = snapshot()
	var pe *grants.ProviderError
	if len(r) != 2 || r[1].Token != nil || !errors.As(r[1].Err, &pe) || pe.Status != 500 {
		t.Fatalf("results after a failure: %+v", r)
	}
	if int64(len(r)) != f.total() {
		t.Fatalf("%d results for %d token requests", len(r), f.total())
	}
}

// backoff stays within [base, min(max, base·2ⁿ⁻¹)], credential errors
// start at 8× base, and the delays are jittered.
func TestBackoffDelays(t *testing.T) {
	const base, maxDelay = 100 * time.Millisecond, 3 * time.Second
	s := New(Options{Fetcher: newFake(time.Hour), BackoffBase: base, BackoffMax: maxDelay})
	defer s.Stop(false)

	ceiling := func(b time.Duration, n int) time.Duration {
		c := b
		for i := 1; i < n && c < maxDelay; i++ {
			c *= 2
		}
		return min(c, max(maxDelay, b))
	}
	plain := errors.New("connection refused")
	creds := fmt.Errorf("wrapped: %w", &grants.ProviderError{Status: 401})
	for _, tc := range []struct {
		name string
		err  error
		base time.Duration
	}{
		{"plain", plain, base},
		{"server error", &grants.ProviderError{Status: 503}, base},
		{"response error", &grants.ResponseError{Status: 200, Reason: "no access_token"}, base},
		{"400", &grants.ProviderError{Status: 400}, 8 * base},
		{"401 wrapped", creds, 8 * base},
		{"403", &grants.ProviderError{Status: 403}, 8 * base},
	} {
		for _, n := range []int{1, 2, 3, 4, 5, 6, 8, 12, 64, 1000} {
			lo, hi := tc.base, ceiling(tc.base, n)
			distinct := map[time.Duration]bool{}
			for range 300 {
				d := s.backoff(n, tc.err)
				if d < lo || d > hi {
					t.Fatalf("%s: backoff(%d) = %v, want in [%v, %v]", tc.name, n, d, lo, hi)
				}
				distinct[d] = true
			}
			if n == 1 && tc.base == base && len(distinct) != 1 {
				t.Fatalf("%s: the first delay is not exactly base: %v", tc.name, distinct)
			}
			if hi > lo && len(distinct) < 10 {
				t.Fatalf("%s: backoff(%d) has only %d distinct values: no jitter", tc.name, n, len(distinct))
			}
		}
	}
	// The ceiling doubles: base·2ⁿ⁻¹ up to the maximum.
	for n, want := range map[int]time.Duration{1: base, 2: 2 * base, 3: 4 * base, 5: 16 * base, 6: maxDelay, 30: maxDelay} {
		if got := ceiling(base, n); got != want {
			t.Fatalf("test helper: ceiling(%d) = %v, want %v", n, got, want)
		}
		var top time.Duration
		for range 2000 {
			top = max(top, s.backoff(n, plain))
		}
		if top > want || (want > base && top < want/2) {
			t.Fatalf("backoff(%d) max over 2000 draws = %v, want close to %v", n, top, want)
		}
	}
}

// New fills in defaults.
func TestDefaults(t *testing.T) {
	s := New(Options{Fetcher: newFake(time.Hour), RefreshFraction: 1.5, BackoffBase: time.Minute, BackoffMax: time.Second})
	defer s.Stop(false)
	if s.opts.RefreshFraction != 0.2 || s.opts.Timeout != 10*time.Second || s.opts.BackoffMax != time.Minute {
		t.Fatalf("options after New: %+v", s.opts)
	}
	if s.Name() != "" {
		t.Fatalf("Name = %q", s.Name())
	}
	// renewAt: refresh_ahead before expiry, less at most 5% jitter.
	now := time.Now()
	tok := &grants.Token{Lifetime: 100 * time.Second, Obtained: now, Expiry: now.Add(100 * time.Second)}
	for range 100 {
		r := s.renewAt(tok)
		if r.After(tok.Expiry.Add(-20*time.Second)) || r.Before(tok.Expiry.Add(-25*time.Second)) {
			t.Fatalf("renewAt = expiry-%v, want expiry-[20s,25s]", tok.Expiry.Sub(r))
		}
	}
	s2 := New(Options{Fetcher: newFake(time.Hour), RefreshAhead: 10 * time.Minute})
	defer s2.Stop(false)
	if r := s2.renewAt(tok); r.After(tok.Expiry.Add(-50*time.Second)) || r.Before(tok.Expiry.Add(-55*time.Second)) {
		t.Fatalf("refresh_ahead longer than the lifetime: renewAt = expiry-%v, want half the lifetime", tok.Expiry.Sub(r))
	}
}

// A Retire racing with Stop starts no logout after Stop returns (a logout
// started before runs on, bounded by Timeout), and WaitLogouts waits for
// every logout of the source.
func TestRetireRacingStop(t *testing.T) {
	for i := range 200 {
		f := newFake(time.Hour)
		var stopped, late atomic.Bool
		var running atomic.Int64
		s := New(Options{Fetcher: f, Logout: func(context.Context, *grants.Token) error {
			if stopped.Load() {
				late.Store(true)
			}
			running.Add(1)
			defer running.Add(-1)
			time.Sleep(time.Millisecond)
			return nil
		}})
		tok, err := s.Get(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		start := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			s.Retire(tok)
		}()
		close(start)
		s.Stop(false)
		// Logouts begun before Stop returned may still be starting: wait
		// for them, then no new one may come.
		s.WaitLogouts()
		stopped.Store(true)
		wg.Wait()
		s.WaitLogouts()
		time.Sleep(3 * time.Millisecond)
		if late.Load() {
			t.Fatalf("iteration %d: a logout started after Stop returned and its logouts were waited for", i)
		}
		if n := running.Load(); n != 0 {
			t.Fatalf("iteration %d: %d logouts running after WaitLogouts", i, n)
		}
	}
}
