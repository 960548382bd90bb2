package cache

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/caddy-upstream-oauth/upstream_oauth/grants"
)

// Benchmarks of how a process's cost grows with its number of sources
// (the token read against x/oauth2 is in integration/bench, so that this
// module needs no x/oauth2). integration/bench/gobench.sh runs them;
// BENCHMARKS.md has the numbers.
//
//	go test -run=NONE -bench=. -benchmem ./cache/

// benchTokenLen is the size of the tokens held: a JWT-sized access token.
const benchTokenLen = 1024

// benchFetcher answers at once with a new token of benchTokenLen
// characters (its own allocation, as a parsed response would be) that lives
// lifetime.
type benchFetcher struct {
	lifetime time.Duration
	calls    atomic.Int64
}

func (f *benchFetcher) Token(context.Context) (*grants.Token, error) {
	n := f.calls.Add(1)
	now := time.Now()
	tok := fmt.Sprintf("%0*d", benchTokenLen, n)
	return &grants.Token{AccessToken: tok, TokenType: "Bearer", Lifetime: f.lifetime, Obtained: now, Expiry: now.Add(f.lifetime)}, nil
}

func (f *benchFetcher) Refresh(ctx context.Context, _ string) (*grants.Token, error) {
	return f.Token(ctx)
}

// benchLogger is a production JSON logger that writes nowhere: the sources
// pay for their own With(source) fields as they do in Caddy.
func benchLogger() *zap.Logger {
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	return zap.New(zapcore.NewCore(enc, zapcore.AddSync(io.Discard), zapcore.InfoLevel))
}

// settle runs the garbage collector until the heap stops shrinking and
// waits (bounded) for goroutines to drop to at most want, then reports the
// live heap and the number of goroutines.
func settle(want int) (heap uint64, goroutines int) {
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > want && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	var m runtime.MemStats
	for range 3 {
		runtime.GC()
	}
	runtime.ReadMemStats(&m)
	return m.HeapAlloc, runtime.NumGoroutine()
}

// BenchmarkSources measures what idle sources cost: n sources, as a
// gateway in front of n tenants holds, each holding a token of
// benchTokenLen characters that lives an hour, made (and their tokens
// obtained) together. It reports the heap per source (source, token,
// logger fields and timer included), the goroutines per source (the
// renewal timer is a runtime timer, not a goroutine), and how the renewals
// are spread: renew_spread_% is the time between the first and the last
// renewal as a share of the lifetime, max_renewals_per_s the most renewals
// due in any one second. The timed loop reads a random source's token.
func BenchmarkSources(b *testing.B) {
	counts := []int{10, 1000, 10000}
	if testing.Short() {
		counts = counts[:2]
	}
	for _, n := range counts {
		b.Run(fmt.Sprintf("n=%d", n), func(b *testing.B) {
			const lifetime = time.Hour
			log := benchLogger()
			heap0, g0 := settle(runtime.NumGoroutine())

			srcs := make([]*Source, n)
			f := &benchFetcher{lifetime: lifetime}
			for i := range srcs {
				srcs[i] = New(Options{Name: fmt.Sprintf("tenant-%d", i), Fetcher: f, Logger: log})
				if _, err := srcs[i].Get(context.Background()); err != nil {
					b.Fatal(err)
				}
			}
			defer func() {
				for _, s := range srcs {
					s.Stop(false)
				}
			}()
			heap1, g1 := settle(g0)
			if got := f.calls.Load(); got != int64(n) {
				b.Fatalf("%d token requests for %d sources", got, n)
			}

			renew := make([]time.Time, n)
			for i, s := range srcs {
				st := s.Status()
				if st.State != "valid" || st.RenewAt == nil {
					b.Fatalf("source %d: state %s", i, st.State)
				}
				renew[i] = *st.RenewAt
			}
			spread, perSecond := renewalSpread(renew)

			ctx := context.Background()
			for b.Loop() {
				if _, err := srcs[rand.IntN(n)].Get(ctx); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(int64(heap1)-int64(heap0))/float64(n), "heap_B/source")
			b.ReportMetric(float64(g1-g0)/float64(n), "goroutines/source")
			b.ReportMetric(100*float64(spread)/float64(lifetime), "renew_spread_%")
			b.ReportMetric(float64(perSecond), "max_renewals_per_s")
		})
	}
}

// renewalSpread returns the time between the first and the last of
// times, and the most of them in any one-second window.
func renewalSpread(times []time.Time) (spread time.Duration, maxPerSecond int) {
	ts := slices.Clone(times)
	slices.SortFunc(ts, func(a, b time.Time) int { return a.Compare(b) })
	spread = ts[len(ts)-1].Sub(ts[0])
	j := 0
	for i := range ts {
		for ts[i].Sub(ts[j]) >= time.Second {
			j++
		}
		maxPerSecond = max(maxPerSecond, i-j+1)
	}
	return spread, maxPerSecond
}

// TestRenewalsSpread: sources made together, whose tokens have the same
// lifetime, are due for renewal at different times (jitter), within the
// 5% of the lifetime that renewAt allows, and none after refresh_ahead
// before expiry. Not a timing test: the times are computed.
func TestRenewalsSpread(t *testing.T) {
	const n, lifetime = 200, time.Hour
	f := &benchFetcher{lifetime: lifetime}
	renew := make([]time.Time, n)
	for i := range renew {
		s := New(Options{Name: "tenant", Fetcher: f})
		tok, err := s.Get(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		st := s.Status()
		s.Stop(false)
		if st.RenewAt == nil {
			t.Fatalf("source %d has no renewal due", i)
		}
		ahead := tok.Expiry.Sub(*st.RenewAt)
		if ahead < lifetime/5 || ahead > lifetime/5+lifetime/20 {
			t.Errorf("renewal %v before expiry, want 20%%..25%% of %v", ahead, lifetime)
		}
		renew[i] = *st.RenewAt
	}
	spread, perSecond := renewalSpread(renew)
	t.Logf("%d sources: renewals spread over %v (%.1f%% of the lifetime), at most %d in one second",
		n, spread.Round(time.Second), 100*float64(spread)/float64(lifetime), perSecond)
	// The tokens were obtained within milliseconds of each other: without
	// jitter, the renewals would be as close. With it they spread over up
	// to 5% of the lifetime (uniformly: 200 of them all within 1% is a
	// chance of 0.2^199).
	if spread < lifetime/100 {
		t.Errorf("renewals of %d sources made together spread over only %v", n, spread)
	}
	if perSecond > n/4 {
		t.Errorf("%d of %d renewals due in one second", perSecond, n)
	}
}

// BenchmarkDeriveKey is one Argon2id derivation with the parameters new
// records are sealed with: what a source pays once per salt, and an
// attacker per guess at a secret. B/op is its memory.
//
//	go test -run=NONE -bench=DeriveKey -benchmem ./cache/
func BenchmarkDeriveKey(b *testing.B) {
	sh, err := NewShared(grants.Config{TokenURL: "https://idp.example/token", ClientID: "bench", ClientSecret: "bench-secret"})
	if err != nil {
		b.Fatal(err)
	}
	var header [headerSize]byte
	b.ReportAllocs()
	for b.Loop() {
		if _, err := sh.deriveKey(context.Background(), header, defaultKDF); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSealOpen is a renewal's cost of the record with the key
// derived: sealing a token and opening it again, no derivation.
func BenchmarkSealOpen(b *testing.B) {
	sh, err := NewShared(grants.Config{TokenURL: "https://idp.example/token", ClientID: "bench", ClientSecret: "bench-secret"})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	now := time.Now()
	tok := &grants.Token{AccessToken: fmt.Sprintf("%0*d", benchTokenLen, 1), Lifetime: time.Hour, Obtained: now, Expiry: now.Add(time.Hour)}
	if _, err := sh.seal(ctx, tok); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		data, err := sh.seal(ctx, tok)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := sh.open(ctx, data); err != nil {
			b.Fatal(err)
		}
	}
}
