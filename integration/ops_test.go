package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-upstream-oauth/upstream_oauth/integration/emulator"
)

// Operations: the metrics on the admin /metrics, the admin API at
// /upstream_oauth/sources, the events, the logs, as an on-call engineer
// meets them in a running Caddy.

var opsSeq atomic.Int64

// opsName names a source uniquely in this test process: the metrics are
// the process's and outlive a test.
func opsName(what string) string { return fmt.Sprintf("ops-%s-%d", what, opsSeq.Add(1)) }

// admin sends a request to the in-process Caddy's admin endpoint.
func admin(t *testing.T, method, path string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, fmt.Sprintf("http://localhost:%d%s", adminPort, path), nil)
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Timeout: 30 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// scrape returns the admin /metrics text.
func scrape(t *testing.T) string {
	t.Helper()
	code, body := admin(t, http.MethodGet, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d %s", code, body)
	}
	return body
}

// metricLines are the lines of text about this module's series of source.
func metricLines(text, source string) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		l := sc.Text()
		if strings.HasPrefix(l, "caddy_upstream_oauth_") && strings.Contains(l, `source="`+source+`"`) &&
			!strings.Contains(l, "_bucket{") {
			out = append(out, l)
		}
	}
	return out
}

// value finds the series name{labels...} in a scraped text.
func value(text, name string, labels ...string) (float64, bool) {
	sc := bufio.NewScanner(strings.NewReader(text))
lines:
	for sc.Scan() {
		l := sc.Text()
		series, v, ok := strings.Cut(l, " ")
		if !ok || !strings.HasPrefix(series, name+"{") {
			continue
		}
		for i := 0; i+1 < len(labels); i += 2 {
			if !strings.Contains(series, labels[i]+`="`+labels[i+1]+`"`) {
				continue lines
			}
		}
		f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		return f, err == nil
	}
	return 0, false
}

// noLeaks fails the test if any text holds a token p issued or a secret.
func noLeaks(t *testing.T, what string, texts []string, ps ...*emulator.Provider) {
	t.Helper()
	leaks := secrets()
	for _, p := range ps {
		leaks = append(append(leaks, p.Tokens()...), p.RefreshTokens()...)
	}
	if len(leaks) == len(secrets()) {
		t.Fatalf("%s: no tokens issued: the leak check would check nothing", what)
	}
	for _, text := range texts {
		for _, l := range leaks {
			if strings.Contains(text, l) {
				t.Errorf("%s holds a token or secret", what)
				return
			}
		}
	}
}

// TestOpsMetrics: the metrics scraped from Caddy's admin /metrics follow a
// token request, a failed renewal, an upstream refusal answered 502, and
// keep their counts across reloads, one that keeps the source and one that
// replaces it under the same name.
func TestOpsMetrics(t *testing.T) {
	p := startProvider(t, emulator.ONEiO)
	b := startBackend(t, p)
	name := opsName("metrics")
	site := proxied(p, b, "name "+name)
	g := startGateway(t, site)
	var scrapes []string
	expect := func(step string, want map[string]float64) string {
		t.Helper()
		var text string
		ok := eventually(3*time.Second, func() bool {
			text = scrape(t)
			for k, w := range want {
				n, labels, _ := strings.Cut(k, "|")
				var ls []string
				if labels != "" {
					ls = strings.Split(labels, "|")
				}
				if v, _ := value(text, n, append([]string{"source", name}, ls...)...); v != w {
					return false
				}
			}
			return true
		})
		scrapes = append(scrapes, text)
		if !ok {
			t.Fatalf("%s: metrics are not as expected %v:\n%s", step, want, strings.Join(metricLines(text, name), "\n"))
		}
		return text
	}
	const (
		success     = "caddy_upstream_oauth_token_requests_total|result|success"
		providerErr = "caddy_upstream_oauth_token_requests_total|result|provider_error"
		duration    = "caddy_upstream_oauth_token_request_duration_seconds_count"
		noToken     = "caddy_upstream_oauth_no_token_responses_total"
		renewals401 = "caddy_upstream_oauth_upstream_renewals_total|status|401"
		expiry      = "caddy_upstream_oauth_token_expiry_timestamp_seconds"
	)

	text := expect("provisioned", map[string]float64{success: 0, providerErr: 0, noToken: 0})
	if _, ok := value(text, expiry, "source", name); ok {
		t.Errorf("expiry reported before any token")
	}

	// A token request.
	if status, body, _ := g.get("/"); status != http.StatusOK {
		t.Fatalf("first request: %d %s", status, body)
	}
	text = expect("after a token request", map[string]float64{success: 1, providerErr: 0, duration: 1})
	exp, ok := value(text, expiry, "source", name)
	if want := float64(time.Now().Add(time.Hour).Unix()); !ok || exp < want-10 || exp > want+1 {
		t.Errorf("expiry %v (present %v), want about now+1h (%v)", exp, ok, want)
	}

	// A failed renewal, forced through the admin API: the token stays.
	p.SetMode(emulator.RejectCredentials)
	if code, body := admin(t, http.MethodPost, "/upstream_oauth/sources/"+name+"/renew"); code != http.StatusBadGateway {
		t.Fatalf("forced renewal against a refusing provider: %d %s", code, body)
	}
	text = expect("after a failed renewal", map[string]float64{success: 1, providerErr: 1, duration: 2})
	if _, ok := value(text, expiry, "source", name); !ok {
		t.Errorf("expiry gone while the token is still valid")
	}

	// The upstream refuses the token: it is retired, and with the provider
	// refusing too (backing off), the client gets 502.
	p.RevokeAll()
	if status, _, _ := g.get("/"); status != http.StatusBadGateway {
		t.Fatalf("request with a revoked token and a refusing provider: %d, want 502", status)
	}
	text = expect("after a 502", map[string]float64{success: 1, providerErr: 1, noToken: 1, renewals401: 1})
	if _, ok := value(text, expiry, "source", name); ok {
		t.Errorf("expiry still reported for a retired token")
	}

	// A reload that keeps the source: the counts stay.
	g.load("\trespond /health 200\n" + site)
	if _, cfg := admin(t, http.MethodGet, "/config/"); !strings.Contains(cfg, "/health") {
		t.Fatalf("the reloaded config is not active")
	}
	expect("after a reload", map[string]float64{success: 1, providerErr: 1, noToken: 1, renewals401: 1, duration: 2})

	// The provider is back; a forced renewal succeeds.
	p.SetMode(emulator.Up)
	if code, body := admin(t, http.MethodPost, "/upstream_oauth/sources/"+name+"/renew"); code != http.StatusOK {
		t.Fatalf("forced renewal: %d %s", code, body)
	}
	if status, _, _ := g.get("/"); status != http.StatusOK {
		t.Fatalf("request after renewal: %d", status)
	}
	expect("after recovery", map[string]float64{success: 2, providerErr: 1, noToken: 1})

	// A reload that changes a setting makes a new source of the same name:
	// its counts add to the old ones.
	g.load(proxied(p, b, "name "+name, "timeout 7s"))
	if status, _, _ := g.get("/"); status != http.StatusOK {
		t.Fatalf("request after a changed reload: %d", status)
	}
	text = expect("after a changed reload", map[string]float64{success: 3, providerErr: 1, noToken: 1, renewals401: 1, duration: 4})
	noLeaks(t, "/metrics", scrapes, p)
	t.Logf("metrics of source %s after a token request, a failed renewal, a 502, two reloads:\n%s",
		name, strings.Join(metricLines(text, name), "\n"))
}

// sourceJSON is a source as the admin API answers it.
type sourceJSON struct {
	Name        string     `json:"name"`
	Provider    string     `json:"provider"`
	TokenURL    string     `json:"token_url"`
	Grant       string     `json:"grant"`
	ClientID    string     `json:"client_id"`
	Scopes      []string   `json:"scopes"`
	Share       bool       `json:"share"`
	State       string     `json:"state"`
	Expiry      *time.Time `json:"expiry"`
	RenewAt     *time.Time `json:"renew_at"`
	RetryAt     *time.Time `json:"retry_at"`
	LastSuccess *time.Time `json:"last_success"`
	LastError   string     `json:"last_error"`
	Requests    int64      `json:"token_requests"`
	Failures    int64      `json:"token_failures"`
}

// sourcesAnswer decodes an admin answer and picks the source named name.
func sourcesAnswer(t *testing.T, body, name string) sourceJSON {
	t.Helper()
	var all []sourceJSON
	if err := json.Unmarshal([]byte(body), &all); err != nil {
		t.Fatalf("admin answer is not a JSON array of sources: %v\n%s", err, body)
	}
	var found []sourceJSON
	for _, s := range all {
		if s.Name == name {
			found = append(found, s)
		}
	}
	if len(found) != 1 {
		t.Fatalf("source %s appears %d times in %s", name, len(found), body)
	}
	return found[0]
}

// TestOpsAdminAPI: GET /upstream_oauth/sources lists every source as the
// README documents; POST .../<name>/renew makes a token request now (and
// answers 502 with the provider's reason when it fails); no answer holds a
// token or a secret.
func TestOpsAdminAPI(t *testing.T) {
	p1 := startProvider(t, emulator.OneNCE)
	p2 := startProvider(t, emulator.Telenor)
	b := startBackend(t, p1, p2)
	n1, n2 := opsName("admin-1nce"), opsName("admin-telenor")
	g := startGateway(t, "\thandle /a/* {\n"+block(p1, "name "+n1)+"\t\treverse_proxy "+b.URL()+"\n\t}\n"+
		"\thandle {\n"+block(p2, "name "+n2)+"\t\treverse_proxy "+b.URL()+"\n\t}\n")
	var answers []string
	get := func(path string) string {
		t.Helper()
		code, body := admin(t, http.MethodGet, path)
		if code != http.StatusOK {
			t.Fatalf("GET %s: %d %s", path, code, body)
		}
		answers = append(answers, body)
		return body
	}

	body := get("/upstream_oauth/sources")
	s1, s2 := sourcesAnswer(t, body, n1), sourcesAnswer(t, body, n2)
	if s1.Provider != "1nce" || s1.TokenURL != p1.TokenURL() || s1.Grant != "client_credentials" ||
		s1.ClientID != "client-1nce" || s1.State != "idle" || s1.Requests != 0 || s1.Expiry != nil {
		t.Errorf("1nce source before any request: %+v", s1)
	}
	if s2.Provider != "telenor" || s2.TokenURL != p2.TokenURL() || s2.Grant != "password" ||
		s2.ClientID != "client-telenor" || s2.State != "idle" {
		t.Errorf("telenor source before any request: %+v", s2)
	}

	for _, path := range []string{"/a/x", "/b"} {
		if status, body, _ := g.get(path); status != http.StatusOK {
			t.Fatalf("%s: %d %s", path, status, body)
		}
	}
	body = get("/upstream_oauth/sources")
	for _, s := range []sourceJSON{sourcesAnswer(t, body, n1), sourcesAnswer(t, body, n2)} {
		if s.State != "valid" || s.Expiry == nil || s.RenewAt == nil || s.LastSuccess == nil ||
			s.Requests != 1 || s.Failures != 0 || s.LastError != "" {
			t.Errorf("source with a token: %+v", s)
		}
	}
	firstExpiry := *sourcesAnswer(t, body, n2).Expiry

	// Force the Telenor source to renew: one token request, a new token
	// that the next request carries.
	time.Sleep(1100 * time.Millisecond) // expiry has a resolution of a second
	code, body := admin(t, http.MethodPost, "/upstream_oauth/sources/"+n2+"/renew")
	answers = append(answers, body)
	if code != http.StatusOK {
		t.Fatalf("renew: %d %s", code, body)
	}
	s2 = sourcesAnswer(t, body, n2)
	if p2.TokenRequests() != 2 || s2.Requests != 2 || s2.State != "valid" || !s2.Expiry.After(firstExpiry) {
		t.Errorf("after a forced renewal: provider saw %d token requests; answer %+v", p2.TokenRequests(), s2)
	}
	if p1.TokenRequests() != 1 {
		t.Errorf("renewing %s made the other source request a token too", n2)
	}
	if status, _, _ := g.get("/b"); status != http.StatusOK {
		t.Errorf("request after the forced renewal: %d", status)
	}

	// A renewal the provider refuses: 502 with its reason; the source keeps
	// its valid token, and says why the renewal failed.
	p1.SetMode(emulator.RejectCredentials)
	code, body = admin(t, http.MethodPost, "/upstream_oauth/sources/"+n1+"/renew")
	answers = append(answers, body)
	if code != http.StatusBadGateway || !strings.Contains(body, "BadCredentials") {
		t.Errorf("refused renewal: %d %s; want 502 with the provider's errorCode", code, body)
	}
	s1 = sourcesAnswer(t, get("/upstream_oauth/sources/"+n1), n1)
	if s1.State != "backoff" || !strings.Contains(s1.LastError, "BadCredentials") || s1.Expiry == nil ||
		s1.RetryAt == nil || s1.Requests != 2 || s1.Failures != 1 {
		t.Errorf("after a refused renewal: %+v", s1)
	}
	if status, _, _ := g.get("/a/still-valid"); status != http.StatusOK {
		t.Errorf("the still valid token is no longer used: %d", status)
	}

	for _, c := range []struct {
		method, path string
		want         int
	}{
		{http.MethodPost, "/upstream_oauth/sources/no-such-source/renew", http.StatusNotFound},
		{http.MethodGet, "/upstream_oauth/sources/" + n1 + "/renew", http.StatusMethodNotAllowed},
		{http.MethodPost, "/upstream_oauth/sources", http.StatusMethodNotAllowed},
	} {
		code, body := admin(t, c.method, c.path)
		answers = append(answers, body)
		if code != c.want {
			t.Errorf("%s %s: %d %s, want %d", c.method, c.path, code, body, c.want)
		}
	}
	for _, n := range []string{n1, n2} {
		var out bytes.Buffer
		json.Indent(&out, []byte(get("/upstream_oauth/sources/"+n)), "", "  ")
		t.Logf("GET /upstream_oauth/sources/%s:\n%s", n, out.String())
	}
	noLeaks(t, "admin answers", answers, p1, p2)
}

// recorded are the events the recorder module received, in all configs.
var recorded struct {
	sync.Mutex
	events []caddy.Event
}

func init() {
	caddy.RegisterModule(eventRecorder{})
}

// eventRecorder is a test-only event handler module (standard Caddy has
// none that could be observed): `events { on <event> upstream_oauth_test_recorder }`.
type eventRecorder struct{}

func (eventRecorder) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "events.handlers.upstream_oauth_test_recorder",
		New: func() caddy.Module { return new(eventRecorder) },
	}
}

func (*eventRecorder) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	return nil
}

func (*eventRecorder) Handle(_ context.Context, e caddy.Event) error {
	recorded.Lock()
	defer recorded.Unlock()
	recorded.events = append(recorded.events, e)
	return nil
}

// eventsOf returns the events named name recorded for source.
func eventsOf(name, source string) []caddy.Event {
	recorded.Lock()
	defer recorded.Unlock()
	var out []caddy.Event
	for _, e := range recorded.events {
		if e.Name() == name && e.Data["source"] == source {
			out = append(out, e)
		}
	}
	return out
}

// TestOpsEvents: token_obtained and token_failed reach handlers subscribed
// with the events global option, from http.handlers.upstream_oauth, with
// the provider's reason and no token or secret; after a reload, each event
// reaches the running config's handlers once.
func TestOpsEvents(t *testing.T) {
	p := startProvider(t, emulator.ONEiO)
	b := startBackend(t, p)
	name := opsName("events")
	g := newGateway(t)
	events := "\tevents {\n\t\ton token_obtained upstream_oauth_test_recorder\n\t\ton token_failed upstream_oauth_test_recorder\n\t}\n"
	load := func(site string) {
		t.Helper()
		global := strings.Replace(globalOptions(g.log), "\tauto_https off\n", "\tauto_https off\n"+events, 1)
		g.loadRaw(global + fmt.Sprintf("http://%s {\n%s\n}\n", g.addr, site))
	}
	site := proxied(p, b, "name "+name)
	load(site)

	if status, body, _ := g.get("/"); status != http.StatusOK {
		t.Fatalf("request: %d %s", status, body)
	}
	if !eventually(3*time.Second, func() bool { return len(eventsOf("token_obtained", name)) == 1 }) {
		t.Fatalf("token_obtained events: %d, want 1", len(eventsOf("token_obtained", name)))
	}
	e := eventsOf("token_obtained", name)[0]
	if e.Origin() == nil || e.Origin().CaddyModule().ID != "http.handlers.upstream_oauth" {
		t.Errorf("token_obtained origin: %v", e.Origin())
	}
	d := e.Data
	if d["provider"] != "oneio" || d["token_url"] != p.TokenURL() || d["grant"] != "client_credentials" ||
		d["lifetime"] != 3599*time.Second || d["scope"] != "ROLE_INTEGRATION" || d["refresh_grant"] != false {
		t.Errorf("token_obtained data: %v", d)
	}
	if exp, _ := d["expiry"].(time.Time); time.Until(exp) < 59*time.Minute {
		t.Errorf("token_obtained expiry: %v", d["expiry"])
	}

	// Reload (the source stays), then a failed token request: the event
	// reaches the running config's handler, once.
	load("\trespond /health 200\n" + site)
	p.SetMode(emulator.RejectCredentials)
	if code, body := admin(t, http.MethodPost, "/upstream_oauth/sources/"+name+"/renew"); code != http.StatusBadGateway {
		t.Fatalf("refused renewal: %d %s", code, body)
	}
	if !eventually(3*time.Second, func() bool { return len(eventsOf("token_failed", name)) >= 1 }) {
		t.Fatal("no token_failed event after a reload")
	}
	time.Sleep(200 * time.Millisecond) // a duplicate would come now
	failed := eventsOf("token_failed", name)
	if len(failed) != 1 {
		t.Fatalf("token_failed events: %d, want 1", len(failed))
	}
	d = failed[0].Data
	if d["result"] != "provider_error" || d["status"] != 401 || d["code"] != "invalid_client" ||
		!strings.Contains(fmt.Sprint(d["error"]), "invalid_client") {
		t.Errorf("token_failed data: %v", d)
	}
	if n := len(eventsOf("token_obtained", name)); n != 1 {
		t.Errorf("token_obtained events: %d, want still 1", n)
	}

	var texts []string
	for _, e := range append(eventsOf("token_obtained", name), failed...) {
		texts = append(texts, fmt.Sprint(e.Data), string(e.CloudEvent().Data))
	}
	noLeaks(t, "event data", texts, p)
	t.Logf("token_obtained: %s", eventsOf("token_obtained", name)[0].CloudEvent().Data)
	t.Logf("token_failed: %s", failed[0].CloudEvent().Data)
}

// logEntry is one line of Caddy's JSON log.
type logEntry struct {
	Level  string `json:"level"`
	Logger string `json:"logger"`
	Msg    string `json:"msg"`
	Source string `json:"source"`
	Error  string `json:"error"`
	Scope  string `json:"scope"`
	Life   any    `json:"lifetime"`
}

// entries reads the gateway's log lines of this module about source.
func entries(t *testing.T, g *gateway, source string) []logEntry {
	t.Helper()
	var out []logEntry
	for _, l := range strings.Split(g.logText(), "\n") {
		var e logEntry
		if json.Unmarshal([]byte(l), &e) != nil || e.Source != source || !strings.Contains(e.Logger, "upstream_oauth") {
			continue
		}
		out = append(out, e)
	}
	return out
}

// TestOpsLogs: one info line per token obtained (source, lifetime, scope);
// a warning per failed token request with the provider's reason; an error
// when the source is left without a valid token; nothing per request at
// info level or above.
func TestOpsLogs(t *testing.T) {
	p := startProvider(t, emulator.OneNCE)
	b := startBackend(t, p)
	name := opsName("logs")
	g := startGateway(t, proxied(p, b, "name "+name))
	for i := range 50 {
		if status, _, _ := g.get(fmt.Sprintf("/r%d", i)); status != http.StatusOK {
			t.Fatalf("request %d: %d", i, status)
		}
	}
	count := func(level, msg string) int {
		n := 0
		for _, e := range entries(t, g, name) {
			if e.Level == level && strings.Contains(e.Msg, msg) {
				n++
			}
		}
		return n
	}
	eventually(2*time.Second, func() bool { return count("info", "token obtained") == 1 })
	var infos []logEntry
	for _, e := range entries(t, g, name) {
		if e.Level != "debug" {
			infos = append(infos, e)
		}
	}
	if len(infos) != 1 || infos[0].Msg != "token obtained" || infos[0].Scope != "all" || infos[0].Life == nil {
		t.Errorf("50 requests, one token: log lines above debug %+v, want one 'token obtained' with lifetime and scope", infos)
	}

	// The token is refused upstream and the provider refuses a new one.
	p.SetMode(emulator.RejectCredentials)
	p.RevokeAll()
	for i := range 5 {
		if status, _, _ := g.get(fmt.Sprintf("/down%d", i)); status != http.StatusBadGateway {
			t.Fatalf("request %d without a token: %d, want 502", i, status)
		}
	}
	eventually(2*time.Second, func() bool { return count("warn", "token request failed") == 1 })
	if n := count("warn", "token request failed"); n != 1 {
		t.Errorf("warnings for one failed token request: %d, want 1", n)
	}
	for _, e := range entries(t, g, name) {
		if e.Level == "warn" && !strings.Contains(e.Error, "BadCredentials") {
			t.Errorf("warning without the provider's reason: %+v", e)
		}
	}
	if n := count("error", "no valid token"); n != 1 {
		t.Errorf("errors for a source left without a token: %d, want 1", n)
	}
	if n := len(entries(t, g, name)) - count("debug", ""); n > 4 {
		t.Errorf("%d log lines above debug for 5 requests answered 502 and one failure; a line per request?", n)
	}
}
