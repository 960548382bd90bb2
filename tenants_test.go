package upstreamoauth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// tenantEndpoint is a token endpoint that issues a token per request,
// named after the client it was issued to, and records each request's
// form.
type tenantEndpoint struct {
	*httptest.Server
	mu    sync.Mutex
	forms []url.Values
	n     atomic.Int64
	pad   int // token length beyond its name, for memory figures
}

func newTenantEndpoint(t testing.TB, pad int) *tenantEndpoint {
	e := &tenantEndpoint{pad: pad}
	e.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		form, _ := url.ParseQuery(string(b))
		e.mu.Lock()
		e.forms = append(e.forms, form)
		e.mu.Unlock()
		n := e.n.Add(1)
		tok := fmt.Sprintf("tok-%s-%d-", form.Get("client_id"), n)
		if len(tok) < e.pad {
			tok += strings.Repeat("x", e.pad-len(tok))
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"access_token": tok, "token_type": "bearer", "expires_in": 3600})
	}))
	t.Cleanup(e.Close)
	return e
}

// tenantRequest is a request whose replacer has the tenant's variables, as
// a map handler in front of upstream_oauth would give them.
func tenantRequest(vars map[string]any) *http.Request {
	repl := caddy.NewReplacer()
	for k, v := range vars {
		repl.Set(k, v)
	}
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	return r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl))
}

// headerTenantRequest is a request whose headers X-Client and X-Secret
// carry a tenant's credentials, with the {http.*} placeholders of its
// replacer set up as Caddy's server sets them.
func headerTenantRequest(id, secret string) *http.Request {
	r := tenantRequest(nil)
	r.Header.Set("X-Client", id)
	r.Header.Set("X-Secret", secret)
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	caddyhttp.PrepareRequest(r, repl, httptest.NewRecorder(), nil)
	return r
}

// provisionTenantHandler provisions a handler with per-request credentials
// against e.
func provisionTenantHandler(t testing.TB, h *Handler, e *tenantEndpoint) {
	t.Helper()
	if err := benchConfigOnce(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := caddy.NewContext(caddy.ActiveContext())
	t.Cleanup(cancel)
	h.TokenURL, h.ClientAuth = e.URL+"/token", "body"
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Cleanup() })
	if h.tenants == nil {
		t.Fatal("a handler with request placeholders in its credentials has no tenant table")
	}
}

var okNext = caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
	w.WriteHeader(http.StatusNoContent)
	return nil
})

// TestTenantSecretsTakenAsTheyAre: a tenant's secret is sent as the
// variable holds it: braces in it are never read as placeholders, whether
// the secret came from a request placeholder or a global one.
func TestTenantSecretsTakenAsTheyAre(t *testing.T) {
	t.Setenv("UPSTREAM_OAUTH_TEST_SUFFIX", "{tenant_id}-env")
	e := newTenantEndpoint(t, 0)
	h := &Handler{Name: t.Name(), ClientID: "{tenant_id}", ClientSecret: "{tenant_secret}-{env.UPSTREAM_OAUTH_TEST_SUFFIX}"}
	provisionTenantHandler(t, h, e)
	r := tenantRequest(map[string]any{"tenant_id": "acme", "tenant_secret": "s{env.HOME}{tenant_id}"})
	if err := h.ServeHTTP(httptest.NewRecorder(), r, okNext); err != nil {
		t.Fatal(err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.forms) != 1 {
		t.Fatalf("%d token requests, want 1", len(e.forms))
	}
	if got, want := e.forms[0].Get("client_secret"), "s{env.HOME}{tenant_id}-{tenant_id}-env"; got != want {
		t.Errorf("client_secret sent: %q, want %q: a secret's braces are not placeholders", got, want)
	}
	if got := e.forms[0].Get("client_id"); got != "acme" {
		t.Errorf("client_id sent: %q, want acme", got)
	}
}

// TestTenantKeyHasEverySecret: two requests with the same client id and
// different secrets get different sources: a client that knows another
// tenant's id never gets that tenant's token.
func TestTenantKeyHasEverySecret(t *testing.T) {
	e := newTenantEndpoint(t, 0)
	h := &Handler{Name: t.Name(), ClientID: "{http.request.header.X-Client}", ClientSecret: "{http.request.header.X-Secret}"}
	provisionTenantHandler(t, h, e)
	serve := func(id, secret string) string {
		r := headerTenantRequest(id, secret)
		var got string
		next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
			got = r.Header.Get("Authorization")
			return nil
		})
		if err := h.ServeHTTP(httptest.NewRecorder(), r, next); err != nil {
			t.Fatal(err)
		}
		return got
	}
	victim := serve("victim", "victim-secret")
	if other := serve("victim", "guessed"); other == victim {
		t.Errorf("a request with the victim's client id and another secret got the victim's token")
	}
	if again := serve("victim", "victim-secret"); again != victim {
		t.Errorf("the victim's own next request got another token")
	}
	// Values that would run together without their lengths: ("ab", "c")
	// and ("a", "bc") are two tenants.
	if serve("ab", "c") == serve("a", "bc") {
		t.Errorf("two sets of credentials share a source")
	}
	if n := e.n.Load(); n != 4 {
		t.Errorf("token requests: %d, want 4 (one per distinct set of credentials)", n)
	}
}

// TestTenantIncomplete: credentials that resolve empty (a map's default)
// are a 403 error, with no token request.
func TestTenantIncomplete(t *testing.T) {
	e := newTenantEndpoint(t, 0)
	h := &Handler{Name: t.Name(), ClientID: "{tenant_id}", ClientSecret: "{tenant_secret}"}
	provisionTenantHandler(t, h, e)
	for _, vars := range []map[string]any{nil, {"tenant_id": "acme"}, {"tenant_id": "", "tenant_secret": "s"}} {
		// As map gives its variables: known for every request, nil when
		// neither a mapping nor a default gives one.
		r := tenantRequest(nil)
		r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer).Map(func(key string) (any, bool) {
			if key != "tenant_id" && key != "tenant_secret" {
				return nil, false
			}
			return vars[key], true
		})
		err := h.ServeHTTP(httptest.NewRecorder(), r, okNext)
		var he caddyhttp.HandlerError
		if !errors.As(err, &he) || he.StatusCode != http.StatusForbidden {
			t.Errorf("credentials %v: %v, want a 403 error", vars, err)
		}
	}
	if n := e.n.Load(); n != 0 {
		t.Errorf("incomplete credentials made %d token requests", n)
	}
}

// TestTenantTableConcurrentFirstUse: many requests of one new tenant at
// once make one source and one token request.
func TestTenantTableConcurrentFirstUse(t *testing.T) {
	e := newTenantEndpoint(t, 0)
	h := &Handler{Name: t.Name(), ClientID: "{tenant_id}", ClientSecret: "{tenant_secret}"}
	provisionTenantHandler(t, h, e)
	var wg sync.WaitGroup
	for range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := tenantRequest(map[string]any{"tenant_id": "acme", "tenant_secret": "s"})
			if err := h.ServeHTTP(httptest.NewRecorder(), r, okNext); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if n := len(h.tenants.sources()); n != 1 {
		t.Errorf("%d sources for one tenant", n)
	}
	if n := e.n.Load(); n != 1 {
		t.Errorf("%d token requests for one tenant's first 100 requests at once, want 1", n)
	}
}

// TestTenantTableIdle: a source unused for the idle time is stopped; one
// used meanwhile stays.
func TestTenantTableIdle(t *testing.T) {
	e := newTenantEndpoint(t, 0)
	h := &Handler{Name: t.Name(), ClientID: "{tenant_id}", ClientSecret: "{tenant_secret}"}
	provisionTenantHandler(t, h, e)
	tt := h.tenants
	tt.timer.Stop() // the test sweeps by hand, and moves the clock
	var clock atomic.Int64
	tt.clock = clock.Load
	use := func(id string) {
		r := tenantRequest(map[string]any{"tenant_id": id, "tenant_secret": "s"})
		if err := h.ServeHTTP(httptest.NewRecorder(), r, okNext); err != nil {
			t.Fatal(err)
		}
	}
	use("idle")
	use("busy")
	for range 59 {
		clock.Add(int64(time.Minute))
		tt.sweep()
		use("busy")
	}
	if n := len(tt.sources()); n != 2 {
		t.Fatalf("%d sources before the idle time, want 2", n)
	}
	clock.Add(int64(time.Minute))
	tt.sweep()
	srcs := tt.sources()
	if len(srcs) != 1 || srcs[0].info.ClientID != "busy" {
		t.Fatalf("after the idle time: %d sources, want the busy one only", len(srcs))
	}
}

// TestTenantEvictedWhileInUse: a tenant that leaves the table (beyond
// max_sources) while a request uses its source keeps the source until
// that request is done: the request's renew_on replay still works, and
// only then is the source stopped.
func TestTenantEvictedWhileInUse(t *testing.T) {
	e := newTenantEndpoint(t, 0)
	h := &Handler{Name: t.Name(), ClientID: "{tenant_id}", ClientSecret: "{tenant_secret}", MaxSources: 1}
	provisionTenantHandler(t, h, e)
	inUpstream, goOn := make(chan struct{}), make(chan struct{})
	var calls atomic.Int32
	refuseFirst := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if calls.Add(1) == 1 {
			close(inUpstream)
			<-goOn
			w.WriteHeader(http.StatusUnauthorized) // renew_on (401 by default): retire, renew, replay
			return nil
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	})
	type answer struct {
		code int
		err  error
	}
	done := make(chan answer, 1)
	go func() {
		rec := httptest.NewRecorder()
		err := h.ServeHTTP(rec, tenantRequest(map[string]any{"tenant_id": "first", "tenant_secret": "s1"}), refuseFirst)
		done <- answer{rec.Code, err}
	}()
	<-inUpstream
	first := h.tenants.sources()[0]
	// Another tenant, over max_sources 1: the first leaves the table.
	if err := h.ServeHTTP(httptest.NewRecorder(), tenantRequest(map[string]any{"tenant_id": "second", "tenant_secret": "s2"}), okNext); err != nil {
		t.Fatal(err)
	}
	if srcs := h.tenants.sources(); len(srcs) != 1 || srcs[0].info.ClientID != "second" {
		t.Fatalf("max_sources 1: the table should hold the second tenant only")
	}
	close(goOn)
	a := <-done
	if a.err != nil || a.code != http.StatusNoContent {
		t.Errorf("the first tenant's request, evicted from the table while in the upstream: %d %v; "+
			"want its renew_on replay answered 204: its source must not stop while a request uses it", a.code, a.err)
	}
	if got := first.Status().State; got != "stopped" {
		t.Errorf("the evicted source is %q once its last request is done, want stopped", got)
	}
	if n := e.n.Load(); n != 3 {
		t.Errorf("%d token requests, want 3 (first, its renewal after the 401, second)", n)
	}
}

// TestTenantEvictionUnderLoad: tenants thrashing in a table too small for
// them (max_sources 2, three tenants, requests at once) are never answered
// 502 for a source stopped under them.
func TestTenantEvictionUnderLoad(t *testing.T) {
	e := newTenantEndpoint(t, 0)
	h := &Handler{Name: t.Name(), ClientID: "{tenant_id}", ClientSecret: "{tenant_secret}", MaxSources: 2}
	provisionTenantHandler(t, h, e)
	var failed atomic.Int64
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 200 {
				id := fmt.Sprintf("t%d", (g+i)%3)
				r := tenantRequest(map[string]any{"tenant_id": id, "tenant_secret": "s-" + id})
				if err := h.ServeHTTP(httptest.NewRecorder(), r, okNext); err != nil {
					if failed.Add(1) == 1 {
						t.Errorf("tenant %s with valid credentials: %v; a source evicted while a request uses it must serve that request", id, err)
					}
				}
			}
		})
	}
	wg.Wait()
	if n := failed.Load(); n > 0 {
		t.Errorf("%d of 1600 requests failed", n)
	}
}

// TestTenantCredentialBounds: a tenant's credential values are bounded
// (2 KiB each, 4 KiB in all): a request beyond is answered 403, makes no
// source and no token request, however large the values a client sends.
func TestTenantCredentialBounds(t *testing.T) {
	e := newTenantEndpoint(t, 0)
	h := &Handler{Name: t.Name(), ClientID: "{http.request.header.X-Client}", ClientSecret: "{http.request.header.X-Secret}"}
	provisionTenantHandler(t, h, e)
	serve := func(id, secret string) error {
		return h.ServeHTTP(httptest.NewRecorder(), headerTenantRequest(id, secret), okNext)
	}
	if err := serve("c-ok", strings.Repeat("s", 2048)); err != nil {
		t.Fatalf("a 2 KiB secret: %v, want it served", err)
	}
	for _, c := range []struct{ name, id, secret string }{
		{"a secret over 2 KiB", "c1", strings.Repeat("s", 2049)},
		{"a 1 MiB secret", "c2", strings.Repeat("s", 1<<20)},
		{"an id over 2 KiB", strings.Repeat("c", 4096), "s"},
		{"4 KiB in all", strings.Repeat("c", 2048), strings.Repeat("s", 2048)},
	} {
		err := serve(c.id, c.secret)
		var he caddyhttp.HandlerError
		if !errors.As(err, &he) || he.StatusCode != http.StatusForbidden {
			t.Errorf("%s: %v, want a 403 error", c.name, err)
		}
		if strings.Contains(fmt.Sprint(err), "sss") {
			t.Errorf("%s: the error quotes the credentials", c.name)
		}
	}
	if n, srcs := e.n.Load(), len(h.tenants.sources()); n != 1 || srcs != 1 {
		t.Errorf("%d token requests and %d sources, want 1 and 1: credentials over the bounds make neither", n, srcs)
	}
}

// TestLiteralBraces: braces that cannot be a placeholder (the JSON of an
// RFC 9396 authorization_details param) are literal, so the handler's
// credentials are static; braces that can (p4ss{w0rd}) but that the
// request does not know stand as written, as Caddy's ReplaceKnown leaves
// them.
func TestLiteralBraces(t *testing.T) {
	const details = `[{"type":"payment_initiation","locations":["https://api.example.com"]}]`
	e := newTenantEndpoint(t, 0)
	if err := benchConfigOnce(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := caddy.NewContext(caddy.ActiveContext())
	defer cancel()
	h := &Handler{Name: t.Name(), TokenURL: e.URL + "/token", ClientAuth: "body", ClientID: "client",
		ClientSecret: "p4ss{w0rd}", Param: map[string]string{"authorization_details": details}}
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = h.Cleanup() }()
	for range 3 {
		if err := h.ServeHTTP(httptest.NewRecorder(), tenantRequest(nil), okNext); err != nil {
			t.Fatalf("request: %v", err)
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.forms) != 1 {
		t.Fatalf("%d token requests, want 1", len(e.forms))
	}
	if got := e.forms[0].Get("authorization_details"); got != details {
		t.Errorf("authorization_details sent as %q, want it as configured, %q", got, details)
	}
	if got := e.forms[0].Get("client_secret"); got != "p4ss{w0rd}" {
		t.Errorf("client_secret sent as %q, want p4ss{w0rd}: braces no request knows stand as written", got)
	}
}

// BenchmarkRequestPathTenants is the request path of a handler with
// per-request credentials from two variables (as a map handler sets
// them), 10 000 tenants each holding a token, against the same handler with
// static credentials, in the same harness: before each request, the
// harness sets the two variables in the request's replacer to the next
// tenant's (both handlers pay that), as a map in front of the handler
// would give them; the request itself is one, as Caddy's is fresh and in
// the cache, while the tenants' sources are cold, one after another. (The
// variables' own cost is map's, which with 10 000 entries scans them on
// each lookup; it is not the handler's and is not in these figures.)
func BenchmarkRequestPathTenants(b *testing.B) {
	tenants := 10000
	if n, err := strconv.Atoi(os.Getenv("BENCH_TENANTS")); err == nil && n > 0 {
		tenants = n // BENCH_TENANTS=100: the same path with every tenant in the CPU's cache
	}
	e := newTenantEndpoint(b, benchTokenLen)
	static := &Handler{Name: "bench-static", ClientID: "static-client", ClientSecret: "static-secret"}
	dynamic := &Handler{Name: "bench-tenants", ClientID: "{tenant_id}", ClientSecret: "{tenant_secret}"}
	for _, h := range []*Handler{static, dynamic} {
		if err := benchConfigOnce(); err != nil {
			b.Fatal(err)
		}
		ctx, cancel := caddy.NewContext(caddy.ActiveContext())
		b.Cleanup(cancel)
		h.TokenURL, h.ClientAuth, h.MaxSources = e.URL+"/token", "body", tenants
		if err := h.Provision(ctx); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = h.Cleanup() })
	}
	ids, secrets := make([]any, tenants), make([]any, tenants)
	for i := range ids {
		ids[i], secrets[i] = fmt.Sprintf("tenant-%05d", i), fmt.Sprintf("secret-%05d", i)
	}
	r := tenantRequest(map[string]any{"tenant_id": ids[0], "tenant_secret": secrets[0]})
	r.Header.Set("Authorization", "Bearer client-own-token")
	r.Body = struct{ io.ReadCloser }{http.NoBody}
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	for i := range ids { // warm: each tenant's token
		repl.Set("tenant_id", ids[i])
		repl.Set("tenant_secret", secrets[i])
		if err := dynamic.ServeHTTP(newBenchWriter(), r, benchNext); err != nil {
			b.Fatal(err)
		}
	}
	if n := len(dynamic.tenants.sources()); n != tenants {
		b.Fatalf("%d sources after warming %d tenants", n, tenants)
	}
	for _, c := range []struct {
		name string
		h    *Handler
	}{{"static", static}, {"tenants", dynamic}} {
		b.Run(c.name, func(b *testing.B) {
			w := newBenchWriter()
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				// The tenants are visited in a stride, so that the next
				// one's data is not the neighbour of the last one's.
				t := (i * 7919) % tenants
				repl.Set("tenant_id", ids[t])
				repl.Set("tenant_secret", secrets[t])
				if err := c.h.ServeHTTP(w, r, benchNext); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
	if n := e.n.Load(); n != int64(tenants)+1 {
		b.Errorf("token requests: %d, want %d (one per tenant, and the static handler's); sources %d", n, tenants+1, len(dynamic.tenants.sources()))
	}
}

// BenchmarkTenantGrowth measures what tenants cost a handler with
// per-request credentials: n tenants (n=100000 without -short), each used
// once and then idle, each holding a 1 KiB token. It reports the heap per
// tenant (its source, token, client, table entry and key; the metrics are
// the handler's, whatever n), the goroutines per tenant, and how the
// renewals of tenants made together spread: renew_spread_% of the
// lifetime, and the most due in any one second.
//
//	go test -run=NONE -bench=TenantGrowth -benchtime=1x .
func BenchmarkTenantGrowth(b *testing.B) {
	counts := []int{1000, 100000}
	if testing.Short() {
		counts = counts[:1]
	}
	for _, n := range counts {
		b.Run(fmt.Sprintf("n=%d", n), func(b *testing.B) {
			e := newTenantEndpoint(b, benchTokenLen)
			h := &Handler{Name: fmt.Sprintf("growth-%d", n), ClientID: "{tenant_id}", ClientSecret: "{tenant_secret}", MaxSources: n}
			provisionTenantHandler(b, h, e)
			reqs := make([]*http.Request, n)
			for i := range reqs {
				reqs[i] = tenantRequest(map[string]any{"tenant_id": fmt.Sprintf("tenant-%06d", i), "tenant_secret": fmt.Sprintf("secret-%06d-Qv7", i)})
			}
			heap0, g0 := settleHeap()
			for i, r := range reqs {
				if err := h.ServeHTTP(newBenchWriter(), r, benchNext); err != nil {
					b.Fatalf("tenant %d: %v", i, err)
				}
			}
			reqs = nil
			e.Client().CloseIdleConnections()
			heap1, g1 := settleHeap()
			srcs := h.tenants.sources()
			if len(srcs) != n {
				b.Fatalf("%d sources for %d tenants", len(srcs), n)
			}
			renew := make([]time.Time, 0, n)
			for _, p := range srcs {
				if st := p.Status(); st.RenewAt != nil {
					renew = append(renew, *st.RenewAt)
				}
			}
			spread, perSecond := renewalSpread(renew)
			for b.Loop() { // the figures below are the benchmark's; this reads one tenant's token
				if _, err := srcs[0].Get(context.Background()); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(heap1-heap0)/float64(n), "B/tenant")
			b.ReportMetric(float64(g1-g0)/float64(n), "goroutines/tenant")
			b.ReportMetric(100*float64(spread)/float64(time.Hour), "renew_spread_%")
			b.ReportMetric(float64(perSecond), "max_renewals_per_s")
		})
	}
}

// settleHeap collects garbage until the heap settles, and counts the
// goroutines once the transient ones (connections closing) are gone.
func settleHeap() (heap uint64, goroutines int) {
	time.Sleep(200 * time.Millisecond)
	var m runtime.MemStats
	for range 3 {
		runtime.GC()
	}
	runtime.ReadMemStats(&m)
	return m.HeapAlloc, runtime.NumGoroutine()
}

// renewalSpread returns the time between the first and the last of
// times, and the most of them in any one-second window.
func renewalSpread(times []time.Time) (spread time.Duration, maxPerSecond int) {
	if len(times) == 0 {
		return 0, 0
	}
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

// TestTenantTableFollowsGlobalValues: a dynamic field's global placeholders
// are expanded at provision; a reload after the {env.*} value changed gets a
// table of its own, whose tenants' token requests carry the new value.
func TestTenantTableFollowsGlobalValues(t *testing.T) {
	t.Setenv("UPSTREAM_OAUTH_TEST_SUFFIX", "one")
	e := newTenantEndpoint(t, 0)
	before := &Handler{Name: t.Name(), ClientID: "{tenant_id}", ClientSecret: "{tenant_secret}-{env.UPSTREAM_OAUTH_TEST_SUFFIX}"}
	provisionTenantHandler(t, before, e)
	if err := before.ServeHTTP(httptest.NewRecorder(), tenantRequest(map[string]any{"tenant_id": "acme", "tenant_secret": "s"}), okNext); err != nil {
		t.Fatal(err)
	}
	// The reload: the new config's handler is provisioned while the old
	// one still runs.
	t.Setenv("UPSTREAM_OAUTH_TEST_SUFFIX", "two")
	after := &Handler{Name: t.Name(), ClientID: "{tenant_id}", ClientSecret: "{tenant_secret}-{env.UPSTREAM_OAUTH_TEST_SUFFIX}"}
	provisionTenantHandler(t, after, e)
	if after.tenants == before.tenants {
		t.Error("the handler after the reload has the table of the one before, though the {env.*} value in its client_secret changed")
	}
	if err := after.ServeHTTP(httptest.NewRecorder(), tenantRequest(map[string]any{"tenant_id": "acme", "tenant_secret": "s"}), okNext); err != nil {
		t.Fatal(err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	var secrets []string
	for _, f := range e.forms {
		secrets = append(secrets, f.Get("client_secret"))
	}
	if want := []string{"s-one", "s-two"}; !slices.Equal(secrets, want) {
		t.Errorf("client_secret of the token requests %q, want %q: after the reload, the secret as the environment now gives it", secrets, want)
	}
}

// TestTenantNameExpandsGlobals: a static name with a global placeholder
// names each tenant's source as expanded, with the tenant's client id.
func TestTenantNameExpandsGlobals(t *testing.T) {
	t.Setenv("UPSTREAM_OAUTH_TEST_NAME", "expanded")
	e := newTenantEndpoint(t, 0)
	h := &Handler{Name: "{env.UPSTREAM_OAUTH_TEST_NAME}", ClientID: "{tenant_id}", ClientSecret: "{tenant_secret}"}
	provisionTenantHandler(t, h, e)
	if err := h.ServeHTTP(httptest.NewRecorder(), tenantRequest(map[string]any{"tenant_id": "acme", "tenant_secret": "s"}), okNext); err != nil {
		t.Fatal(err)
	}
	h.tenants.mu.RLock()
	var names []string
	for _, tn := range h.tenants.entries {
		names = append(names, tn.src.info.Name)
	}
	h.tenants.mu.RUnlock()
	if want := []string{"expanded:acme"}; !slices.Equal(names, want) {
		t.Errorf("tenant sources named %q, want %q: the admin API, events and logs name a tenant's source by the name as expanded", names, want)
	}
}
