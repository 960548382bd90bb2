package upstreamoauth

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// The request path benchmarks: the handler in its steady state (a token
// held, nothing due) against a baseline handler that sets a constant
// Authorization header, in the same harness. bench/gobench.sh runs them in
// alternating rounds and prints the ratios; BENCHMARKS.md has the numbers.
//
//	go test -run=NONE -bench='RequestPath' -benchmem .

// benchTokenLen is the length of the token in the request path benchmarks:
// a JWT-sized access token, so that copying it would show.
const benchTokenLen = 1024

// benchToken returns a token of n visible ASCII characters.
func benchToken(n int) string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	b := make([]byte, n)
	for i := range b {
		b[i] = alphabet[(i*7+i/64)%len(alphabet)]
	}
	return string(b)
}

// constHeader is the baseline: what a handler that costs nothing but its
// header would do.
type constHeader struct{ value string }

func (c constHeader) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	r.Header.Set("Authorization", c.value)
	return next.ServeHTTP(w, r)
}

// benchNext stands for reverse_proxy: it writes a 200 status and nothing
// else, so both handlers see the same answer.
var benchNext = caddyhttp.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) error {
	w.WriteHeader(http.StatusOK)
	return nil
})

// benchWriter is a ResponseWriter that discards the response; its header
// map starts with what Caddy's server puts there.
type benchWriter struct{ h http.Header }

func newBenchWriter() *benchWriter {
	return &benchWriter{h: http.Header{"Server": {"Caddy"}}}
}
func (w *benchWriter) Header() http.Header         { return w.h }
func (w *benchWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *benchWriter) WriteHeader(int)             {}

// benchRequest is a proxied GET as a client sends it, with its own (stale)
// Authorization that the handler must replace. Its empty body is wrapped,
// as Caddy's server wraps every request body (idle timeouts, bytes read).
func benchRequest() *http.Request {
	r := httptest.NewRequest(http.MethodGet, "http://gateway.example/api/v1/sims?page=1", nil)
	r.Header.Set("User-Agent", "device/1.0")
	r.Header.Set("Accept", "application/json")
	r.Header.Set("Authorization", "Bearer client-own-token")
	r.Body = struct{ io.ReadCloser }{http.NoBody}
	return r
}

// benchConfigOnce loads a config with no apps, to provision handlers in
// the way Caddy does (a context of a running config) and to keep the
// sources' log lines (Caddy's default logger) out of the output.
var benchConfigOnce = sync.OnceValue(func() error {
	return caddy.Load([]byte(`{"admin":{"disabled":true},"logging":{"logs":{"default":{"level":"ERROR"}}}}`), true)
})

// benchConfig returns the context of the config that benchConfigOnce loads.
func benchConfig(b *testing.B) caddy.Context {
	b.Helper()
	if err := benchConfigOnce(); err != nil {
		b.Fatal(err)
	}
	return caddy.ActiveContext()
}

// namedHandler is a handler under benchmark.
type namedHandler struct {
	name string
	h    caddyhttp.MiddlewareHandler
}

// benchHandlers returns the baseline (const_header) and provisioned
// upstream_oauth handlers that hold a token of benchTokenLen characters
// from a local token endpoint: upstream_oauth with the default settings
// (renew_on 401, so the answer's status is watched) and
// upstream_oauth_no_renew_on with renew_on [] (JSON only), which shows
// what watching the status costs.
func benchHandlers(b *testing.B) []namedHandler {
	b.Helper()
	token := benchToken(benchTokenLen)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{
			"access_token": token, "token_type": "Bearer", "expires_in": 3600,
		})
	}))
	b.Cleanup(srv.Close)

	ctx, cancel := caddy.NewContext(benchConfig(b))
	b.Cleanup(cancel)
	out := []namedHandler{{"const_header", constHeader{value: "Bearer " + token}}}
	for _, c := range []struct {
		name    string
		renewOn []int
	}{{"upstream_oauth", nil}, {"upstream_oauth_no_renew_on", []int{}}} {
		h := &Handler{
			Name:         "bench",
			TokenURL:     srv.URL + "/oauth/token",
			ClientID:     "bench-client",
			ClientSecret: "bench-secret",
			RenewOn:      c.renewOn,
		}
		if err := h.Provision(ctx); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = h.Cleanup() })
		// Warm it: the first request fetches the token; later ones only
		// read it.
		r, w := benchRequest(), newBenchWriter()
		if err := h.ServeHTTP(w, r, benchNext); err != nil {
			b.Fatal(err)
		}
		if got := r.Header.Get("Authorization"); got != "Bearer "+token {
			b.Fatalf("warm-up request carries %.20q..., want the token", got)
		}
		out = append(out, namedHandler{c.name, h})
	}
	return out
}

// BenchmarkRequestPath is one request through each handler, in one
// goroutine. const_header is the baseline.
func BenchmarkRequestPath(b *testing.B) {
	for _, c := range benchHandlers(b) {
		b.Run(c.name, func(b *testing.B) {
			r, w := benchRequest(), newBenchWriter()
			b.ReportAllocs()
			for b.Loop() {
				if err := c.h.ServeHTTP(w, r, benchNext); err != nil {
					b.Fatal(err)
				}
			}
			checkBenchHeader(b, r)
		})
	}
}

// BenchmarkRequestPathParallel is BenchmarkRequestPath with requests in
// every P (b.RunParallel), each goroutine with its own request.
func BenchmarkRequestPathParallel(b *testing.B) {
	for _, c := range benchHandlers(b) {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				r, w := benchRequest(), newBenchWriter()
				n := 0
				for pb.Next() {
					if err := c.h.ServeHTTP(w, r, benchNext); err != nil {
						b.Error(err)
						return
					}
					n++
				}
				if n > 0 {
					checkBenchHeader(b, r)
				}
			})
		})
	}
}

// BenchmarkRequestPathCaddy is BenchmarkRequestPath with the request as
// Caddy's server prepares it (replacer, vars, route groups in its context)
// and the handler inside a handle block (one route group satisfied): what
// the handler keeps of the request for a replay shows here.
func BenchmarkRequestPathCaddy(b *testing.B) {
	for _, c := range benchHandlers(b) {
		b.Run(c.name, func(b *testing.B) {
			r, w := benchCaddyRequest(), newBenchWriter()
			b.ReportAllocs()
			for b.Loop() {
				if err := c.h.ServeHTTP(w, r, benchNext); err != nil {
					b.Fatal(err)
				}
			}
			checkBenchHeader(b, r)
		})
	}
}

// benchCaddyRequest is benchRequest prepared as Caddy's server prepares
// it, inside a handle block.
func benchCaddyRequest() *http.Request {
	r := caddyhttp.PrepareRequest(benchRequest(), caddy.NewReplacer(), nil, nil)
	r.Context().Value(caddy.CtxKey("route_group")).(map[string]struct{})["group0"] = struct{}{}
	return r
}

func checkBenchHeader(b *testing.B, r *http.Request) {
	if v := r.Header.Values("Authorization"); len(v) != 1 || !strings.HasPrefix(v[0], "Bearer ") || len(v[0]) != len("Bearer ")+benchTokenLen {
		b.Errorf("request ends with Authorization %d values, want one bearer token", len(v))
	}
}
