package upstreamoauth

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

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
