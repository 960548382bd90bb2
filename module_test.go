package upstreamoauth

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// provisionTest provisions a handler against a token endpoint that counts
// its requests and issues numbered tokens.
func provisionTest(t *testing.T, h *Handler) *atomic.Int64 {
	t.Helper()
	if err := benchConfigOnce(); err != nil {
		t.Fatal(err)
	}
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{
			"access_token": fmt.Sprintf("module-test-token-%d", n.Add(1)), "token_type": "bearer", "expires_in": 3600,
		})
	}))
	t.Cleanup(srv.Close)
	ctx, cancel := caddy.NewContext(caddy.ActiveContext())
	t.Cleanup(cancel)
	h.TokenURL, h.ClientID, h.ClientSecret = srv.URL+"/token", "module-test", "module-test-secret"
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Cleanup() })
	return &n
}

// TestServeHTTPNothingWritten: a next handler that writes nothing is not a
// refusal: the token stays, no token request follows.
func TestServeHTTPNothingWritten(t *testing.T) {
	h := &Handler{Name: t.Name()}
	n := provisionTest(t, h)
	silent := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })
	for range 5 {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		if err := h.ServeHTTP(httptest.NewRecorder(), r, silent); err != nil {
			t.Fatal(err)
		}
	}
	if got := n.Load(); got != 1 {
		t.Errorf("5 requests answered by a silent handler made %d token requests, want 1", got)
	}
}

// TestServeHTTPHeader: the token goes in the configured header with its
// scheme; a client's Authorization is dropped either way.
func TestServeHTTPHeader(t *testing.T) {
	for _, c := range []struct {
		header, scheme, want string
	}{
		{"", "", "Bearer module-test-token-1"},
		{"X-Api-Token", "", "module-test-token-1"},
	} {
		t.Run(c.header+"/"+c.scheme, func(t *testing.T) {
			h := &Handler{Name: t.Name(), Header: c.header, HeaderScheme: c.scheme}
			provisionTest(t, h)
			var got http.Header
			next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
				got = r.Header.Clone()
				w.WriteHeader(http.StatusNoContent)
				return nil
			})
			r := httptest.NewRequest(http.MethodGet, "/", nil)
			r.Header.Set("Authorization", "Basic Y2xpZW50OnNlY3JldA==")
			if err := h.ServeHTTP(httptest.NewRecorder(), r, next); err != nil {
				t.Fatal(err)
			}
			name := c.header
			if name == "" {
				name = "Authorization"
			}
			if got.Get(name) != c.want {
				t.Errorf("%s: got %q, want %q", name, got.Get(name), c.want)
			}
			if name != "Authorization" && got.Get("Authorization") != "" {
				t.Errorf("the client's Authorization reached the upstream")
			}
		})
	}
}

// TestProvisionRefusesUnworkableJSON: what the Caddyfile refuses at adapt
// time, a JSON config gets refused at provision: a header name that is not
// an HTTP field name, a scheme with a space or newline, a token_header
// whose value would split the request, default_ttl under 1 s or over a
// year.
func TestProvisionRefusesUnworkableJSON(t *testing.T) {
	if err := benchConfigOnce(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		h    Handler
		want string
	}{
		{"header", Handler{Header: "X-Tök"}, `header: "X-Tök" is not a valid HTTP field name`},
		{"scheme", Handler{Header: "X-Token", HeaderScheme: "Be\narer"}, `scheme "Be\narer" has spaces`},
		{"token_header name", Handler{TokenHeader: map[string]string{"X(a)": "v"}}, `"X(a)" is not a valid HTTP field name`},
		{"token_header value", Handler{TokenHeader: map[string]string{"X-Key": "a\r\nX-Evil: 1"}}, `the value has control characters`},
		{"default_ttl 1ns", Handler{DefaultTTL: caddy.Duration(time.Nanosecond)}, `default_ttl 1ns: want 1s to a year`},
		{"default_ttl 100000h", Handler{DefaultTTL: caddy.Duration(100000 * time.Hour)}, `want 1s to a year`},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := c.h
			h.TokenURL, h.ClientID, h.ClientSecret = "https://auth.example/token", "id", "secret"
			ctx, cancel := caddy.NewContext(caddy.ActiveContext())
			defer cancel()
			err := h.Provision(ctx)
			if err == nil {
				_ = h.Cleanup()
				t.Fatalf("provisioned; want an error with %q", c.want)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q, want %q", err, c.want)
			}
		})
	}
}
