package cache

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-upstream-oauth/upstream_oauth/grants"
)

// fakeFetcher is a Fetcher for tests: it counts and records its calls, and
// its lifetime, delay, failures and refresh tokens are configurable.
type fakeFetcher struct {
	tokens, refreshes atomic.Int64 // calls of Token and Refresh
	seq               atomic.Int64 // tokens issued

	mu         sync.Mutex
	lifetime   time.Duration
	delay      time.Duration // before answering; ctx cancels it
	tokenErr   error         // Token fails with this, when set
	refreshErr error         // Refresh fails with this, when set
	issueRT    bool          // issue refresh tokens
	calls      []fetchCall
}

// fetchCall is one call of the fake, as it was seen.
type fetchCall struct {
	kind         string // "token" or "refresh"
	refreshToken string // the argument of Refresh
	start, end   time.Time
	tok          *grants.Token
	err          error
}

func newFake(lifetime time.Duration) *fakeFetcher {
	return &fakeFetcher{lifetime: lifetime}
}

func (f *fakeFetcher) setDelay(d time.Duration) {
	f.mu.Lock()
	f.delay = d
	f.mu.Unlock()
}

func (f *fakeFetcher) setTokenErr(err error) {
	f.mu.Lock()
	f.tokenErr = err
	f.mu.Unlock()
}

func (f *fakeFetcher) setRefreshErr(err error) {
	f.mu.Lock()
	f.refreshErr = err
	f.mu.Unlock()
}

func (f *fakeFetcher) setIssueRefresh(b bool) {
	f.mu.Lock()
	f.issueRT = b
	f.mu.Unlock()
}

// total is the number of token requests of either kind.
func (f *fakeFetcher) total() int64 { return f.tokens.Load() + f.refreshes.Load() }

func (f *fakeFetcher) history() []fetchCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]fetchCall(nil), f.calls...)
}

func (f *fakeFetcher) Token(ctx context.Context) (*grants.Token, error) {
	f.tokens.Add(1)
	return f.fetch(ctx, "token", "")
}

func (f *fakeFetcher) Refresh(ctx context.Context, refreshToken string) (*grants.Token, error) {
	f.refreshes.Add(1)
	return f.fetch(ctx, "refresh", refreshToken)
}

func (f *fakeFetcher) fetch(ctx context.Context, kind, rt string) (*grants.Token, error) {
	start := time.Now()
	f.mu.Lock()
	delay := f.delay
	f.mu.Unlock()
	c := fetchCall{kind: kind, refreshToken: rt, start: start}
	if delay > 0 {
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			c.err = ctx.Err()
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if c.err == nil {
		switch {
		case kind == "token" && f.tokenErr != nil:
			c.err = f.tokenErr
		case kind == "refresh" && f.refreshErr != nil:
			c.err = f.refreshErr
		}
	}
	if c.err == nil {
		n := f.seq.Add(1)
		c.tok = &grants.Token{
			AccessToken: fmt.Sprintf("secret-access-%d", n),
			TokenType:   "Bearer",
			Scope:       "test",
			Lifetime:    f.lifetime,
			Obtained:    start,
			Expiry:      start.Add(f.lifetime),
		}
		if f.issueRT {
			c.tok.RefreshToken = fmt.Sprintf("secret-refresh-%d", n)
		}
	}
	c.end = time.Now()
	f.calls = append(f.calls, c)
	return c.tok, c.err
}

// newSource makes a source that the test stops when it ends.
func newSource(t *testing.T, opts Options) *Source {
	t.Helper()
	s := New(opts)
	t.Cleanup(func() { s.Stop(false) })
	return s
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, within time.Duration, cond func() bool, format string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: "+format, append([]any{within}, args...)...)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// canceled is a context that is already done: a Get with it that would have
// to wait for the provider fails at once, so a Get that succeeds with it
// provably did not wait.
func canceled() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}
