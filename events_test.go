package upstreamoauth

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddy-upstream-oauth/upstream_oauth/cache"
	"github.com/caddy-upstream-oauth/upstream_oauth/grants"
)

// recorder is an event handler that keeps what it is given.
type recorder struct {
	mu     sync.Mutex
	events []caddy.Event
}

func (r *recorder) Handle(_ context.Context, e caddy.Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, e)
	return nil
}

func (r *recorder) named(name string) []caddy.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []caddy.Event
	for _, e := range r.events {
		if e.Name() == name {
			out = append(out, e)
		}
	}
	return out
}

// testEventApp is a started events app of a config of its own, its events
// going to a recorder, recorded as bindConfig would for a handler. cancel
// ends the config.
func testEventApp(t *testing.T) (rec *recorder, cancel func()) {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	app := new(caddyevents.App)
	if err := app.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	rec = new(recorder)
	if err := app.On("", rec); err != nil {
		t.Fatal(err)
	}
	if err := app.Start(); err != nil {
		t.Fatal(err)
	}
	configs.Lock()
	configs.seq++
	configs.byRegistry[ctx.GetMetricsRegistry()] = &configResources{events: app, ctx: ctx, seq: configs.seq}
	configs.Unlock()
	return rec, cancel
}

// isolateConfigs empties the record of configs for one test.
func isolateConfigs(t *testing.T) {
	configs.Lock()
	saved := configs.byRegistry
	configs.byRegistry = map[*prometheus.Registry]*configResources{}
	configs.Unlock()
	t.Cleanup(func() {
		configs.Lock()
		configs.byRegistry = saved
		configs.Unlock()
	})
}

// TestEventsFromSource: a source's token requests emit token_obtained and
// token_failed, with the provider's reason and without token or secret.
func TestEventsFromSource(t *testing.T) {
	isolateConfigs(t)
	rec, _ := testEventApp(t)
	f := &fakeFetcher{ttl: time.Hour}
	src := uniq("events-src")
	p, _ := testSource(t, src, f)
	if _, err := p.Get(context.Background()); err != nil {
		t.Fatal(err)
	}
	f.fail(&grants.ProviderError{Status: 401, Code: "invalid_client", Description: "Client authentication failed"})
	if err := p.Renew(context.Background()); err == nil {
		t.Fatal("renewal against a failing provider succeeded")
	}

	// OnResult runs just after the waiters are released: wait for it.
	waitFor(t, func() bool { return len(rec.named(eventTokenObtained))+len(rec.named(eventTokenFailed)) == 2 }, "two events")
	ok := rec.named(eventTokenObtained)
	if len(ok) != 1 {
		t.Fatalf("token_obtained events: %d, want 1", len(ok))
	}
	d := ok[0].Data
	if d["source"] != src || d["provider"] != "oneio" || d["grant"] != "client_credentials" ||
		d["lifetime"] != time.Hour || d["scope"] != "read" || d["refresh_grant"] != false {
		t.Errorf("token_obtained data: %v", d)
	}
	if exp, _ := d["expiry"].(time.Time); time.Until(exp) < 59*time.Minute {
		t.Errorf("token_obtained expiry: %v", d["expiry"])
	}
	if d["token_url"] != "https://auth.example/oauth2/token?api_key=REDACTED" {
		t.Errorf("token_url: %v", d["token_url"])
	}

	failed := rec.named(eventTokenFailed)
	if len(failed) != 1 {
		t.Fatalf("token_failed events: %d, want 1", len(failed))
	}
	d = failed[0].Data
	if d["source"] != src || d["result"] != "provider_error" || d["status"] != 401 ||
		d["code"] != "invalid_client" || d["description"] != "Client authentication failed" ||
		!strings.Contains(d["error"].(string), "invalid_client") {
		t.Errorf("token_failed data: %v", d)
	}
	for _, e := range append(ok, failed...) {
		if s := fmt.Sprint(e.Data) + string(e.CloudEvent().Data); strings.Contains(s, "LEAKCHECK") {
			t.Errorf("%s event holds a secret or token: %s", e.Name(), s)
		}
	}
}

// TestEventsGoToOneConfig: with several configs' events apps recorded (a
// reload in progress), an event goes to one: the newest whose config is not
// gone (the running one, in a real Caddy, before that).
func TestEventsGoToOneConfig(t *testing.T) {
	isolateConfigs(t)
	old, _ := testEventApp(t)
	cur, cancelCur := testEventApp(t)
	info := sourceInfo{Name: "reload-src"}
	tok := &grants.Token{AccessToken: "tok-LEAKCHECK", Lifetime: time.Minute, Expiry: time.Now().Add(time.Minute)}
	emitResult(info, cache.Result{Source: "reload-src", Token: tok})
	if len(old.named(eventTokenObtained)) != 0 || len(cur.named(eventTokenObtained)) != 1 {
		t.Errorf("events: old config %d, newest %d; want 0, 1",
			len(old.named(eventTokenObtained)), len(cur.named(eventTokenObtained)))
	}
	cancelCur() // the new config failed, or was stopped
	emitResult(info, cache.Result{Source: "reload-src", Err: errors.New("boom")})
	if len(old.named(eventTokenFailed)) != 1 || len(cur.named(eventTokenFailed)) != 0 {
		t.Errorf("after the newest config ended: old config %d, newest %d; want 1, 0",
			len(old.named(eventTokenFailed)), len(cur.named(eventTokenFailed)))
	}
	configs.Lock()
	var live int
	for _, res := range configs.byRegistry {
		if res.ctx.Err() == nil {
			live++
		}
	}
	configs.Unlock()
	if live != 1 {
		t.Errorf("configs that have not ended: %d recorded, want 1", live)
	}
}

// TestBindConfigBareContext: a context with no config (as in benchmarks)
// has no events app; provisioning goes on without one.
func TestBindConfigBareContext(t *testing.T) {
	isolateConfigs(t)
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	if err := bindConfig(ctx); err != nil {
		t.Fatal(err)
	}
	if res := runningConfig(); res != nil && res.events != nil {
		t.Errorf("an events app recorded for a bare context")
	}
	emitResult(sourceInfo{Name: "x"}, cache.Result{Source: "x", Err: errors.New("boom")}) // no panic
}

func TestDisplayURL(t *testing.T) {
	for in, want := range map[string]string{
		"https://api.1nce.com/management-api/oauth/token": "https://api.1nce.com/management-api/oauth/token",
		"https://h.example/token?api_key=s3cret&x=1#frag": "https://h.example/token?api_key=REDACTED&x=REDACTED",
		"http://127.0.0.1:8080/token":                     "http://127.0.0.1:8080/token",
		"https://user:pw@h.example/t":                     "https://h.example/t",
		"://bad":                                          "(unparsable URL)",
	} {
		if got := displayURL(in); got != want {
			t.Errorf("displayURL(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestEventDataIssuer: a source whose token endpoint is discovered names
// its issuer in its events; one with a token_url does not.
func TestEventDataIssuer(t *testing.T) {
	res := cache.Result{Source: "idp", Err: &grants.DiscoveryError{Issuer: "https://idp.example.com", Reasons: []string{"x: status 404"}}}
	data := eventData(sourceInfo{Name: "idp", Issuer: "https://idp.example.com"}, res)
	if data["issuer"] != "https://idp.example.com" || data["result"] != "invalid_response" {
		t.Errorf("event data %v, want issuer https://idp.example.com and result invalid_response", data)
	}
	if _, ok := eventData(sourceInfo{Name: "p", TokenURL: "https://a.example/t"}, res)["issuer"]; ok {
		t.Errorf("issuer in the event of a source with a token_url")
	}
}
