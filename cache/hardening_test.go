package cache

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-upstream-oauth/upstream_oauth/grants"
)

// fakeClock is a clock a test moves by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// TestRetireSpacing: retirements are spaced 1 s, 2 s, 4 s ... apart (at
// most RetireMax), whatever was accepted in between; a retirement that
// must wait leaves the token current; after RetireQuiet with none, the
// next retirement is immediate again.
func TestRetireSpacing(t *testing.T) {
	f := newFake(time.Hour)
	s := newSource(t, Options{Fetcher: f, RetireBase: time.Second, RetireMax: 8 * time.Second, RetireQuiet: time.Minute})
	clock := &fakeClock{now: time.Now()}
	s.clock = clock.Now
	current := func() *grants.Token {
		t.Helper()
		tok, err := s.Get(context.Background()) // waits for the renewal a retirement starts
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	retireAfter := func(d time.Duration) bool {
		t.Helper()
		clock.advance(d)
		return s.Retire(current())
	}

	if !retireAfter(0) {
		t.Fatal("a first refusal did not retire the token: a revoked token must be replaced at once")
	}
	// The schedule: after retirement n, the next waits 1, 2, 4, 8, 8 s.
	for i, spacing := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 8 * time.Second} {
		tok := current()
		if retireAfter(spacing - time.Millisecond) {
			t.Fatalf("retirement %d came %v after the one before; the contract spaces it %v", i+2, spacing-time.Millisecond, spacing)
		}
		if current() != tok {
			t.Fatalf("a retirement that must wait replaced the token")
		}
		if !retireAfter(time.Millisecond) {
			t.Fatalf("retirement %d, %v after the one before, did not happen", i+2, spacing)
		}
	}
	current() // the last retirement's token request
	if got := f.total(); got != 7 {
		t.Errorf("token requests: %d, want 7 (the first and 6 retirements)", got)
	}
	// A quiet minute: the next refusal retires at once, and the spacing
	// starts again from 1 s.
	if !retireAfter(time.Minute) {
		t.Fatal("after a quiet period, a refusal did not retire the token at once")
	}
	if retireAfter(500*time.Millisecond) || !retireAfter(500*time.Millisecond) {
		t.Error("after the quiet period, the spacing did not start again at 1 s")
	}
}

// TestBackoffHonoursRetryAfter: a provider's Retry-After (on 429/503) holds
// the next attempt back at least that long, up to an hour, and the
// UnavailableError says so.
func TestBackoffHonoursRetryAfter(t *testing.T) {
	for _, c := range []struct{ retryAfter, want time.Duration }{
		{60 * time.Second, 60 * time.Second},
		{2 * time.Hour, time.Hour},
	} {
		f := newFake(time.Hour)
		f.setTokenErr(&grants.ProviderError{Status: 429, Code: "slow_down", RetryAfter: c.retryAfter})
		s := newSource(t, Options{Fetcher: f})
		_, err := s.Get(context.Background())
		ue, ok := err.(*UnavailableError)
		if !ok {
			t.Fatalf("Get: %v, want *UnavailableError", err)
		}
		if ue.RetryAfter < c.want-time.Second || ue.RetryAfter > c.want {
			t.Errorf("Retry-After %v from the provider: the next attempt in %v, want %v", c.retryAfter, ue.RetryAfter, c.want)
		}
		if _, err := s.Get(context.Background()); err == nil || f.total() != 1 {
			t.Errorf("a request during the provider's Retry-After made a token request (%d in all)", f.total())
		}
	}
}

// TestStopLogoutsRunTogether: stopping sources does not wait for their
// logouts, so that nine sources whose logout hangs are all logging out at
// once (a reload or a stop waits one timeout for all, not one each), and
// WaitLogouts waits for each, bounded by its Timeout.
func TestStopLogoutsRunTogether(t *testing.T) {
	var inFlight, most atomic.Int64
	release := make(chan struct{})
	logout := func(ctx context.Context, _ *grants.Token) error {
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		select {
		case <-release:
		case <-ctx.Done():
		}
		return ctx.Err()
	}
	var srcs []*Source
	for range 9 {
		s := New(Options{Fetcher: newFake(time.Hour), Logout: logout, Timeout: time.Minute})
		if _, err := s.Get(context.Background()); err != nil {
			t.Fatal(err)
		}
		srcs = append(srcs, s)
	}
	for _, s := range srcs {
		s.Stop(true) // returns while its logout hangs
	}
	eventually(t, 10*time.Second, func() bool { return most.Load() == 9 },
		"%d logouts in flight at once after stopping 9 sources; the contract: they run side by side", most.Load())
	close(release)
	for _, s := range srcs {
		s.WaitLogouts()
	}
	if n := inFlight.Load(); n != 0 {
		t.Errorf("%d logouts still in flight after WaitLogouts", n)
	}
}
