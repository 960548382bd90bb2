package integration

import (
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"testing"

	"github.com/caddy-upstream-oauth/upstream_oauth/integration/emulator"
)

// The replay after a refused token is the request as it reached
// upstream_oauth: what the handlers after it changed in the first attempt
// (rewrite, uri, handle_path, request_header, vars, the handle block
// chosen) is done again for the replay, not on top of the first attempt's
// result.

// oneioSite is the site's upstream_oauth block for the ONEiO emulator at
// token URL %[1]s; the test's own directives follow it.
const oneioSite = `
	upstream_oauth oneio {
		token_url %[1]s
		client_id client-oneio
		client_secret secret-oneio-Zq8
	}
`

// seenRequest is what an upstream saw of one request.
type seenRequest struct {
	path   string
	header http.Header
}

// recordingUpstream records every request it gets, then lets next answer.
type recordingUpstream struct {
	next http.Handler
	mu   sync.Mutex
	seen []seenRequest
}

func (u *recordingUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	u.mu.Lock()
	u.seen = append(u.seen, seenRequest{path: r.URL.Path, header: r.Header.Clone()})
	u.mu.Unlock()
	u.next.ServeHTTP(w, r)
}

func (u *recordingUpstream) requests() []seenRequest {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Clone(u.seen)
}

// TestReplayChoosesHandleAgain: the refused request went through the first
// of two handle blocks; the replay must go through it again (Caddy marks a
// group of handle blocks as used once one of them matched).
func TestReplayChoosesHandleAgain(t *testing.T) {
	p := startProvider(t, emulator.ONEiO)
	b := startBackend(t, p)
	g := startGateway(t, fmt.Sprintf(oneioSite+`
	handle /api/* {
		reverse_proxy %[2]s
	}
	handle {
		respond "no such API" 404
	}
`, p.TokenURL(), b.URL()))
	if status, body, _ := g.get("/api/warm-up"); status != http.StatusOK {
		t.Fatalf("warm-up: %d %q", status, body)
	}
	p.RevokeAll()
	status, body, _ := g.get("/api/sims")
	if status != http.StatusOK || body != "ok oneio" {
		t.Errorf("after the token was revoked: %d %q; want the backend's 200 %q: the contract replays the refused request once with the new token, through the handle block it matched", status, body, "ok oneio")
	}
	if a, r := b.Accepted(), b.Rejected(); a != 2 || r != 1 {
		t.Errorf("backend accepted %d and refused %d requests; want 2 accepted (warm-up, replay) and 1 refused", a, r)
	}
}

// TestReplayHandlePathStripsOnce: handle_path strips its prefix in the
// first attempt; the replay must strip it from the request as the client
// sent it, and go to the same upstream, not fall through to the site's
// other reverse_proxy with the new token.
func TestReplayHandlePathStripsOnce(t *testing.T) {
	p := startProvider(t, emulator.ONEiO)
	api := &recordingUpstream{next: startBackend(t, p)}
	other := &recordingUpstream{next: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "not the API")
	})}
	g := startGateway(t, fmt.Sprintf(oneioSite+`
	handle_path /api/* {
		reverse_proxy %[2]s
	}
	reverse_proxy %[3]s
`, p.TokenURL(), startHandler(t, api), startHandler(t, other)))
	if status, body, _ := g.get("/api/v1/warm-up"); status != http.StatusOK {
		t.Fatalf("warm-up: %d %q", status, body)
	}
	p.RevokeAll()
	status, body, _ := g.get("/api/v1/sims")
	if status != http.StatusOK || body != "ok oneio" {
		t.Errorf("after the token was revoked: %d %q; want the API's 200 %q from the replay", status, body, "ok oneio")
	}
	var paths []string
	for _, s := range api.requests() {
		paths = append(paths, s.path)
	}
	if want := []string{"/v1/warm-up", "/v1/sims", "/v1/sims"}; !slices.Equal(paths, want) {
		t.Errorf("the API got %q, want %q: the replay is the client's request, handle_path strips /api once", paths, want)
	}
	if n := len(other.requests()); n != 0 {
		t.Errorf("the site's other upstream got %d requests (with the new token), want none: the replay must take the handle_path block the request matched", n)
	}
}

// TestReplayRewritesOnce: uri, rewrite and request_header change the
// request in place in the first attempt; the replay must be rewritten from
// the client's request, so that the upstream sees the same request twice.
// request_header's replace edits header values in place.
func TestReplayRewritesOnce(t *testing.T) {
	p := startProvider(t, emulator.ONEiO)
	up := &recordingUpstream{next: startBackend(t, p)}
	g := startGateway(t, fmt.Sprintf(oneioSite+`
	route {
		uri strip_prefix /api
		rewrite * /v1{uri}
		request_header +X-Added added
		request_header X-Sent a aa
		reverse_proxy %[2]s
	}
`, p.TokenURL(), startHandler(t, up)))
	sent := http.Header{"X-Sent": {"a"}}
	if status, body, _ := g.do(http.MethodGet, "/api/warm-up", sent, nil); status != http.StatusOK {
		t.Fatalf("warm-up: %d %q", status, body)
	}
	p.RevokeAll()
	if status, body, _ := g.do(http.MethodGet, "/api/sims", sent, nil); status != http.StatusOK {
		t.Errorf("after the token was revoked: %d %q; want 200 from the replay", status, body)
	}
	seen := up.requests()
	if len(seen) != 3 {
		t.Fatalf("the upstream got %d requests, want 3 (warm-up, refused, replay)", len(seen))
	}
	for i, s := range seen[1:] {
		attempt := []string{"refused attempt", "replay"}[i]
		if s.path != "/v1/sims" {
			t.Errorf("%s reached the upstream at %q, want %q: the replay is rewritten from the client's request, not from the refused attempt's", attempt, s.path, "/v1/sims")
		}
		if got := s.header.Values("X-Added"); !slices.Equal(got, []string{"added"}) {
			t.Errorf("%s had X-Added %q, want [added]: request_header adds it once to the client's request", attempt, got)
		}
		if got := s.header.Values("X-Sent"); !slices.Equal(got, []string{"aa"}) {
			t.Errorf("%s had X-Sent %q, want [aa]: request_header replaces a with aa in the client's value, once", attempt, got)
		}
	}
}

// TestReplayVarsAsBefore: a var that a handler after upstream_oauth set in
// the refused attempt is not set when the replay starts, neither for the
// vars matcher nor for the {http.vars.*} placeholder.
func TestReplayVarsAsBefore(t *testing.T) {
	p := startProvider(t, emulator.ONEiO)
	up := &recordingUpstream{next: startBackend(t, p)}
	g := startGateway(t, fmt.Sprintf(oneioSite+`
	route {
		@replayed vars attempted yes
		respond @replayed "the replay saw a var of the refused attempt" 500
		request_header X-Attempted "{http.vars.attempted}"
		vars attempted yes
		reverse_proxy %[2]s
	}
`, p.TokenURL(), startHandler(t, up)))
	if status, body, _ := g.get("/warm-up"); status != http.StatusOK {
		t.Fatalf("warm-up: %d %q", status, body)
	}
	p.RevokeAll()
	if status, body, _ := g.get("/sims"); status != http.StatusOK {
		t.Errorf("after the token was revoked: %d %q; want 200 from the replay: the replay starts with the vars the request had when it reached upstream_oauth", status, body)
	}
	for i, s := range up.requests() {
		if got := s.header.Values("X-Attempted"); !slices.Equal(got, []string{""}) {
			t.Errorf("request %d reached the upstream with X-Attempted %q, want one empty value: {http.vars.attempted} is unset until the vars handler runs, in the replay too", i+1, got)
		}
	}
}
