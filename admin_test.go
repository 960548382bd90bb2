package upstreamoauth

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddy-upstream-oauth/upstream_oauth/grants"
)

// adminCall sends a request to the admin module's route for path and
// returns the status and body, as Caddy's admin endpoint would answer.
func adminCall(t *testing.T, method, path string) (int, string) {
	t.Helper()
	a := &adminSources{logger: zap.NewNop()}
	var h caddy.AdminHandler
	for _, rt := range a.Routes() {
		if path == rt.Pattern || (strings.HasSuffix(rt.Pattern, "/") && strings.HasPrefix(path, rt.Pattern)) {
			h = rt.Handler
		}
	}
	if h == nil {
		t.Fatalf("no admin route for %s", path)
	}
	w := httptest.NewRecorder()
	r := httptest.NewRequest(method, path, nil)
	if err := h.ServeHTTP(w, r); err != nil {
		var ae caddy.APIError
		if !errors.As(err, &ae) {
			t.Fatalf("%s %s: %v is not an APIError", method, path, err)
		}
		return ae.HTTPStatus, ae.Err.Error()
	}
	return w.Code, w.Body.String()
}

// find returns the statuses named name in a JSON answer.
func find(t *testing.T, body, name string) []sourceStatus {
	t.Helper()
	var all []sourceStatus
	if err := json.Unmarshal([]byte(body), &all); err != nil {
		t.Fatalf("answer is not a JSON array of sources: %v\n%s", err, body)
	}
	var out []sourceStatus
	for _, s := range all {
		if s.Name == name {
			out = append(out, s)
		}
	}
	return out
}

// TestAdminList: GET /upstream_oauth/sources lists every source with its
// settings and state, and nothing secret.
func TestAdminList(t *testing.T) {
	name := uniq("admin-src")
	p, _ := testSource(t, name, &fakeFetcher{ttl: time.Hour})

	code, body := adminCall(t, http.MethodGet, "/upstream_oauth/sources")
	if code != http.StatusOK {
		t.Fatalf("GET: %d %s", code, body)
	}
	got := find(t, body, name)
	if len(got) != 1 {
		t.Fatalf("source %s listed %d times in %s", name, len(got), body)
	}
	s := got[0]
	if s.Provider != "oneio" || s.TokenURL != "https://auth.example/oauth2/token?api_key=REDACTED" ||
		s.Grant != "client_credentials" || s.ClientID != "client-1" || strings.Join(s.Scopes, " ") != "read write" ||
		s.State != "idle" || s.Expiry != nil || s.Requests != 0 {
		t.Errorf("before any token: %+v", s)
	}

	if _, err := p.Get(context.Background()); err != nil {
		t.Fatal(err)
	}
	_, body = adminCall(t, http.MethodGet, "/upstream_oauth/sources")
	s = find(t, body, name)[0]
	if s.State != "valid" || s.Expiry == nil || s.LastSuccess == nil || s.Requests != 1 || s.Failures != 0 {
		t.Errorf("with a token: %+v", s)
	}
	if strings.Contains(body, "LEAKCHECK") {
		t.Errorf("the answer holds a secret or token: %s", body)
	}
}

// TestAdminRenew: POST .../<name>/renew makes a token request now and
// answers with the source; a failure answers 502 with the provider's
// reason; an unknown name 404; a wrong method 405.
func TestAdminRenew(t *testing.T) {
	name := uniq("renew-src")
	f := &fakeFetcher{ttl: time.Hour}
	p, _ := testSource(t, name, f)
	if _, err := p.Get(context.Background()); err != nil {
		t.Fatal(err)
	}

	code, body := adminCall(t, http.MethodPost, "/upstream_oauth/sources/"+name+"/renew")
	if code != http.StatusOK || f.calls.Load() != 2 {
		t.Fatalf("renew: %d %s, %d token requests (want 200, 2)", code, body, f.calls.Load())
	}
	if s := find(t, body, name); len(s) != 1 || s[0].Requests != 2 || s[0].State != "valid" {
		t.Errorf("renew answer: %s", body)
	}

	f.fail(&grants.ProviderError{Status: 401, Code: "invalid_client", Description: "Client authentication failed"})
	code, body = adminCall(t, http.MethodPost, "/upstream_oauth/sources/"+name+"/renew")
	if code != http.StatusBadGateway || !strings.Contains(body, "invalid_client: Client authentication failed") {
		t.Errorf("failed renewal: %d %s; want 502 with the provider's reason", code, body)
	}
	code, body = adminCall(t, http.MethodGet, "/upstream_oauth/sources/"+name)
	if s := find(t, body, name); code != http.StatusOK || len(s) != 1 || s[0].State != "backoff" ||
		!strings.Contains(s[0].LastError, "invalid_client") || s[0].Expiry == nil || s[0].RetryAt == nil {
		t.Errorf("after a failed renewal (token still valid): %d %s", code, body)
	}

	for _, c := range []struct {
		method, path string
		want         int
	}{
		{http.MethodPost, "/upstream_oauth/sources/no-such-source/renew", http.StatusNotFound},
		{http.MethodGet, "/upstream_oauth/sources/no-such-source", http.StatusNotFound},
		{http.MethodGet, "/upstream_oauth/sources/" + name + "/renew", http.StatusMethodNotAllowed},
		{http.MethodDelete, "/upstream_oauth/sources/" + name, http.StatusMethodNotAllowed},
		{http.MethodPost, "/upstream_oauth/sources", http.StatusMethodNotAllowed},
	} {
		if code, body := adminCall(t, c.method, c.path); code != c.want {
			t.Errorf("%s %s: %d %s, want %d", c.method, c.path, code, body, c.want)
		}
	}
}

// TestAdminRenewSameName: sources that share a name are renewed together.
func TestAdminRenewSameName(t *testing.T) {
	name := uniq("twin-src")
	f1, f2 := &fakeFetcher{ttl: time.Hour}, &fakeFetcher{ttl: time.Hour}
	testSource(t, name, f1)
	testSource(t, name, f2)
	code, body := adminCall(t, http.MethodPost, "/upstream_oauth/sources/"+name+"/renew")
	if code != http.StatusOK || f1.calls.Load() != 1 || f2.calls.Load() != 1 || len(find(t, body, name)) != 2 {
		t.Errorf("renew of two sources named %s: %d %s; token requests %d, %d", name, code, body, f1.calls.Load(), f2.calls.Load())
	}
}

// TestAdminProvisionRegistersMetrics: the admin module puts the metrics on
// the config's registry, which /metrics serves.
func TestAdminProvisionRegistersMetrics(t *testing.T) {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	a := new(adminSources)
	if err := a.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	src := uniq("admin-metrics-src")
	metricNoToken(src)
	if v, ok := sample(t, ctx.GetMetricsRegistry(), "caddy_upstream_oauth_no_token_responses_total", "source", src); !ok || v != 1 {
		t.Errorf("metric on the admin's registry: %v (present %v)", v, ok)
	}
}

// TestAdminRenewKeepsRetryAfter: a forced renewal keeps to the provider's
// own Retry-After, as every token request does: it answers 429 with what
// is left of it, and no token request goes out.
func TestAdminRenewKeepsRetryAfter(t *testing.T) {
	name := uniq("wait-src")
	f := &fakeFetcher{ttl: time.Hour}
	testSource(t, name, f)
	f.fail(&grants.ProviderError{Status: http.StatusTooManyRequests, Code: "slow_down", RetryAfter: 30 * time.Second})
	if code, body := adminCall(t, http.MethodPost, "/upstream_oauth/sources/"+name+"/renew"); code != http.StatusBadGateway {
		t.Fatalf("renewal answered 429 by the provider: %d %s, want 502", code, body)
	}
	a := &adminSources{logger: zap.NewNop()}
	w := httptest.NewRecorder()
	err := a.handleSource(w, httptest.NewRequest(http.MethodPost, "/upstream_oauth/sources/"+name+"/renew", nil))
	var ae caddy.APIError
	if !errors.As(err, &ae) || ae.HTTPStatus != http.StatusTooManyRequests || w.Header().Get("Retry-After") == "" {
		t.Errorf("forced renewal during the provider's Retry-After: %v, Retry-After %q; want 429 with a Retry-After", err, w.Header().Get("Retry-After"))
	}
	if n := f.calls.Load(); n != 1 {
		t.Errorf("%d token requests, want 1: none goes out before the provider's Retry-After", n)
	}
}
