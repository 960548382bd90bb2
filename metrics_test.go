package upstreamoauth

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddy-upstream-oauth/upstream_oauth/cache"
	"github.com/caddy-upstream-oauth/upstream_oauth/grants"
)

// fakeFetcher hands out tokens named after a counter, or fails with err.
type fakeFetcher struct {
	calls atomic.Int64
	ttl   time.Duration
	err   atomic.Pointer[error]
}

func (f *fakeFetcher) Token(context.Context) (*grants.Token, error) {
	n := f.calls.Add(1)
	if e := f.err.Load(); e != nil {
		return nil, *e
	}
	now := time.Now()
	return &grants.Token{
		AccessToken: fmt.Sprintf("tok-%d-LEAKCHECK", n), TokenType: "Bearer", Scope: "read",
		Lifetime: f.ttl, Obtained: now, Expiry: now.Add(f.ttl),
	}, nil
}

func (f *fakeFetcher) Refresh(ctx context.Context, _ string) (*grants.Token, error) {
	return f.Token(ctx)
}

func (f *fakeFetcher) fail(err error) { f.err.Store(&err) }

// testSource puts a source with fetcher f into the process's pool, as a
// handler's Provision would; remove (also run when the test ends) takes it
// out again, which stops it.
func testSource(t *testing.T, name string, f cache.Fetcher) (p *pooledSource, remove func()) {
	t.Helper()
	s := settings{Name: name, Provider: "oneio", Grants: grants.Config{
		TokenURL: "https://auth.example/oauth2/token?api_key=k-LEAKCHECK", Grant: grants.ClientCredentials,
		ClientID: "client-1", ClientSecret: "secret-LEAKCHECK", Scopes: []string{"read", "write"},
	}}
	p = &pooledSource{info: describe(s), metric: name}
	p.Source = cache.New(cache.Options{Name: name, Fetcher: f, OnResult: onResult(p.info, p.metric)})
	key := fmt.Sprintf("test/%s/%s/%p", t.Name(), name, p)
	sources.LoadOrStore(key, p)
	var once sync.Once
	remove = func() { once.Do(func() { sources.Delete(key) }) }
	t.Cleanup(remove)
	return p, remove
}

// sample is the value of the series of family name with labels in reg:
// a counter's or gauge's value, a histogram's sample count.
func sample(t *testing.T, reg prometheus.Gatherer, name string, labels ...string) (float64, bool) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	want := map[string]string{}
	for i := 0; i+1 < len(labels); i += 2 {
		want[labels[i]] = labels[i+1]
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, l := range m.GetLabel() {
				got[l.GetName()] = l.GetValue()
			}
			for k, v := range want {
				if got[k] != v {
					continue series
				}
			}
			switch {
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue(), true
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue(), true
			case m.GetHistogram() != nil:
				return float64(m.GetHistogram().GetSampleCount()), true
			}
		}
	}
	return 0, false
}

var uniqSeq atomic.Int64

// uniq makes a source name of its own for a test run: the metrics are the
// process's, and outlive a test (-count=N).
func uniq(name string) string { return fmt.Sprintf("%s-%d", name, uniqSeq.Add(1)) }

// waitFor fails the test unless cond holds within 2s.
func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	for deadline := time.Now().Add(2 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func newRegistry(t *testing.T) *prometheus.Registry {
	t.Helper()
	reg := prometheus.NewPedanticRegistry() // as Caddy makes for every config
	if err := registerMetrics(reg); err != nil {
		t.Fatal(err)
	}
	return reg
}

// TestRegisterMetricsAcrossReloads: registering again on one registry, or
// on the registry of a new config, is no error and keeps the counts.
func TestRegisterMetricsAcrossReloads(t *testing.T) {
	reg1 := newRegistry(t)
	if err := registerMetrics(reg1); err != nil {
		t.Fatalf("registering twice on one registry: %v", err)
	}
	src := uniq("reload-src")
	metricNoToken(src)
	metricNoToken(src)
	reg2 := newRegistry(t) // the next config's
	for _, reg := range []*prometheus.Registry{reg1, reg2} {
		if v, _ := sample(t, reg, "caddy_upstream_oauth_no_token_responses_total", "source", src); v != 2 {
			t.Errorf("no_token_responses_total = %v, want 2", v)
		}
	}
	if err := registerMetrics(nil); err != nil {
		t.Errorf("nil registry: %v", err)
	}
}

// TestRegisterMetricsConflict: a different collector under one of our names
// is an error, not a panic.
func TestRegisterMetricsConflict(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "caddy_upstream_oauth_no_token_responses_total", Help: "impostor",
	}, []string{"source"}))
	if err := registerMetrics(reg); err == nil {
		t.Error("no error for a conflicting collector")
	}
}

func TestResultOf(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{nil, "success"},
		{&grants.ProviderError{Status: 401, Code: "invalid_client"}, "provider_error"},
		{fmt.Errorf("wrapped: %w", &grants.ProviderError{Status: 400}), "provider_error"},
		{&grants.ResponseError{Status: 200, Reason: "no access_token"}, "invalid_response"},
		{&grants.TransportError{Err: errors.New("connection refused")}, "transport_error"},
		{&grants.TransportError{Err: fmt.Errorf("post: %w", context.DeadlineExceeded)}, "timeout"},
		{&grants.TransportError{Err: fmt.Errorf("post: %w", context.Canceled)}, "canceled"},
		{&grants.DiscoveryError{Issuer: "https://idp.example.com", Reasons: []string{"status 404"}}, "invalid_response"},
		{errors.New("something else"), "error"},
	} {
		if got := resultOf(tc.err); got != tc.want {
			t.Errorf("resultOf(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

// TestTokenRequestMetrics: a source's token requests are counted by result
// and timed, from the source's OnResult; its series exist at zero first.
func TestTokenRequestMetrics(t *testing.T) {
	reg := newRegistry(t)
	f := &fakeFetcher{ttl: time.Hour}
	src := uniq("metrics-src")
	p, _ := testSource(t, src, f)
	const reqs = "caddy_upstream_oauth_token_requests_total"
	for _, r := range results {
		if v, ok := sample(t, reg, reqs, "source", src, "result", r); !ok || v != 0 {
			t.Errorf("result %s before any request: %v (present %v), want 0", r, v, ok)
		}
	}
	if _, err := p.Get(context.Background()); err != nil {
		t.Fatal(err)
	}
	f.fail(&grants.ProviderError{Status: 401, Code: "invalid_client"})
	if err := p.Renew(context.Background()); err == nil {
		t.Fatal("renewal against a failing provider succeeded")
	}
	// OnResult runs just after the waiters are released: wait for it.
	waitFor(t, func() bool {
		v, _ := sample(t, reg, "caddy_upstream_oauth_token_request_duration_seconds", "source", src)
		return v == 2
	}, "duration histogram count 2")
	for r, want := range map[string]float64{"success": 1, "provider_error": 1, "transport_error": 0} {
		if v, _ := sample(t, reg, reqs, "source", src, "result", r); v != want {
			t.Errorf("%s{result=%q} = %v, want %v", reqs, r, v, want)
		}
	}

	// A token taken from shared storage made no request.
	metricTokenRequest(src, cache.Result{Source: src, Shared: true, Token: &grants.Token{}})
	if v, _ := sample(t, reg, reqs, "source", src, "result", "success"); v != 1 {
		t.Errorf("a shared token counted as a token request: success = %v", v)
	}
}

// TestExpiryGauge: the expiry of each live source's valid token, at scrape
// time; none for a source without one or gone from the pool; one series for
// sources that share a name.
func TestExpiryGauge(t *testing.T) {
	reg := newRegistry(t)
	const expiry = "caddy_upstream_oauth_token_expiry_timestamp_seconds"
	src := uniq("expiry-src")
	p, removeP := testSource(t, src, &fakeFetcher{ttl: time.Hour})
	if _, ok := sample(t, reg, expiry, "source", src); ok {
		t.Error("expiry reported before any token")
	}
	tok, err := p.Get(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	v, ok := sample(t, reg, expiry, "source", src)
	if want := float64(tok.Expiry.UnixNano()) / 1e9; !ok || v != want {
		t.Errorf("expiry = %v (present %v), want %v", v, ok, want)
	}

	// A second source of the same name with a later token: one series, the
	// later expiry.
	q, removeQ := testSource(t, src, &fakeFetcher{ttl: 2 * time.Hour})
	tok2, err := q.Get(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := sample(t, reg, expiry, "source", src); v != float64(tok2.Expiry.UnixNano())/1e9 {
		t.Errorf("expiry with two sources of one name = %v, want the later one", v)
	}

	// Gone from the pool: gone from the metrics.
	removeQ()
	if v, _ := sample(t, reg, expiry, "source", src); v != float64(tok.Expiry.UnixNano())/1e9 {
		t.Errorf("expiry after the later source left = %v, want the remaining one's", v)
	}
	removeP()
	if _, ok := sample(t, reg, expiry, "source", src); ok {
		t.Error("expiry still reported for sources gone from the pool")
	}
}

// TestUpstreamNoTokenStorageMetrics covers the counters fed from the
// request path and from shared storage.
func TestUpstreamNoTokenStorageMetrics(t *testing.T) {
	reg := newRegistry(t)
	src := uniq("counters-src")
	metricUpstreamRenewal(src, 401)
	metricUpstreamRenewal(src, 401)
	metricUpstreamRenewal(src, 403)
	metricNoToken(src)
	metricStorage(src, cache.LookupHit)
	metricStorage(src, cache.LookupHit)
	metricStorage(src, cache.LookupMiss)
	metricStorage(src, cache.LookupUnreadable)
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"caddy_upstream_oauth_upstream_renewals_total", []string{"source", src, "status", "401"}, 2},
		{"caddy_upstream_oauth_upstream_renewals_total", []string{"source", src, "status", "403"}, 1},
		{"caddy_upstream_oauth_no_token_responses_total", []string{"source", src}, 1},
		{"caddy_upstream_oauth_storage_lookups_total", []string{"source", src, "result", "hit"}, 2},
		{"caddy_upstream_oauth_storage_lookups_total", []string{"source", src, "result", "miss"}, 1},
		{"caddy_upstream_oauth_storage_lookups_total", []string{"source", src, "result", "unreadable"}, 1},
	} {
		if v, _ := sample(t, reg, c.name, c.labels...); v != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, v, c.want)
		}
	}
}

// TestMetricsHoldNoSecret: no label value of any series carries a token or
// a secret of the source.
func TestMetricsHoldNoSecret(t *testing.T) {
	reg := newRegistry(t)
	p, _ := testSource(t, "secret-src", &fakeFetcher{ttl: time.Hour})
	if _, err := p.Get(context.Background()); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if s := mf.String(); strings.Contains(s, "LEAKCHECK") {
			t.Errorf("%s holds a secret or token: %s", mf.GetName(), s)
		}
	}
}
