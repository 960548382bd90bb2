package integration

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/caddy-upstream-oauth/upstream_oauth/integration/emulator"
)

// The replay after a refused token is the request as it reached
// upstream_oauth: what the handlers after it changed in the first attempt
// (rewrite, uri, handle_path, request_header, vars, the handle block
// chosen) is done again for the replay, not on top of the first attempt's
// result. And a refusal never makes the gateway wait for, or ask for, a
// request body that the upstream did not read.

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

// startRawGateway loads config, a whole Caddyfile whose first three verbs
// are the admin port, the DEBUG log file and the site's address, followed
// by args.
func startRawGateway(t *testing.T, config string, args ...any) *gateway {
	t.Helper()
	g := newGateway(t)
	g.loadRaw(fmt.Sprintf(config, append([]any{adminPort, g.log, g.addr}, args...)...))
	return g
}

// refuseInvalid answers 401 to a token p does not hold valid, without
// reading the request body; a valid one goes to next.
func refuseInvalid(p *emulator.Provider, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, tok, _ := strings.Cut(r.Header.Get("Authorization"), " "); !p.Valid(tok) {
			w.Header().Set("Www-Authenticate", `Bearer error="invalid_token"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// TestReplayExpectContinueUnreadBody: with a transport that waits for the
// upstream's 100 Continue (expect_continue_timeout), an upstream refusing
// the token answers before it asks for the body. The replay sends the body
// as the client sends it, once the replay's upstream asks for it: the
// gateway does not ask the client for it on its own.
func TestReplayExpectContinueUnreadBody(t *testing.T) {
	p := startProvider(t, emulator.ONEiO)
	up := startHandler(t, refuseInvalid(p, startBackend(t, p)))
	g := startRawGateway(t, `{
	admin localhost:%[1]d
	auto_https off
	log {
		output file %[2]s
		level DEBUG
	}
}
http://%[3]s {
	upstream_oauth oneio {
		token_url %[4]s
		client_id client-oneio
		client_secret secret-oneio-Zq8
	}
	reverse_proxy %[5]s {
		transport http {
			expect_continue_timeout 30s
		}
	}
}
`, p.TokenURL(), up)
	// The client waits for 100 Continue longer than for the whole answer:
	// it sends its body only when asked for it.
	client := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{ExpectContinueTimeout: time.Minute}}
	defer client.CloseIdleConnections()
	payload := bytes.Repeat([]byte("e"), 10<<10)
	send := func() (int, string) { return postExpectContinue(t, client, g.url("/upload"), payload) }
	if status, n := send(); status != http.StatusOK || n != strconv.Itoa(len(payload)) {
		t.Fatalf("warm-up: %d, body %s bytes", status, n)
	}
	p.RevokeAll()
	if status, n := send(); status != http.StatusOK || n != strconv.Itoa(len(payload)) {
		t.Errorf("after the token was revoked: %d, body %s bytes; want the replay's 200 with all %d", status, n, len(payload))
	}
}

// TestReplayWebSocketOverH2C: a WebSocket over HTTP/2 (extended CONNECT),
// whose upgrade the upstream refuses: reverse_proxy keeps the client's
// stream aside and asks the upstream with an HTTP/1.1 upgrade, so nothing
// of the stream was read. The replay takes the stream as it is: the
// gateway does not wait for the stream's end (the client sends only once
// its WebSocket is open). It runs the xcaddy binary: Go's HTTP/2 server
// offers extended CONNECT only with GODEBUG=http2xconnect=1 at start.
func TestReplayWebSocketOverH2C(t *testing.T) {
	p := startProvider(t, emulator.ONEiO)
	echo := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Errorf("upstream: %v", err)
			return
		}
		defer conn.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		brw.Flush()
		io.Copy(conn, brw) // an echo, not WebSocket frames: the gateway only tunnels
	})
	upstream := startHandler(t, refuseInvalid(p, echo))
	t.Setenv("GODEBUG", "http2xconnect=1") // for the Caddy process
	in := launch(t, func(in *instance) string {
		return fmt.Sprintf(`{
	admin %[1]s
	auto_https off
	servers {
		protocols h1 h2c
	}
	log {
		output file %[2]s
		level DEBUG
	}
}
http://%[3]s {
	upstream_oauth oneio {
		token_url %[4]s
		client_id client-oneio
		client_secret secret-oneio-Zq8
	}
	reverse_proxy %[5]s
}
`, in.admin, in.log, in.addr, p.TokenURL(), upstream)
	})
	// net/http's client refuses the :protocol pseudo-header; x/net's
	// HTTP/2 transport sends it (h2c: plain TCP, HTTP/2 from the start).
	tr := &http2.Transport{
		AllowHTTP: true,
		DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		},
	}
	defer tr.CloseIdleConnections()
	open := func() (*http.Response, *io.PipeWriter, error) {
		pr, pw := io.Pipe()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		t.Cleanup(cancel)
		req, _ := http.NewRequestWithContext(ctx, http.MethodConnect, "http://"+in.addr+"/chat", pr)
		req.Header.Set(":protocol", "websocket")
		req.Header.Set("Sec-WebSocket-Version", "13")
		resp, err := tr.RoundTrip(req)
		if err != nil {
			pw.Close()
		}
		return resp, pw, err
	}
	exchange := func(resp *http.Response, pw *io.PipeWriter) string {
		defer pw.Close()
		defer resp.Body.Close()
		if _, err := pw.Write([]byte("hello")); err != nil {
			return err.Error()
		}
		got := make([]byte, len("hello"))
		if _, err := io.ReadFull(resp.Body, got); err != nil {
			return err.Error()
		}
		return string(got)
	}
	resp, pw, err := open()
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("WebSocket with a valid token: %v %v", resp, err)
	}
	if got := exchange(resp, pw); got != "hello" {
		t.Fatalf("WebSocket with a valid token echoed %q, want hello", got)
	}
	p.RevokeAll()
	resp, pw, err = open()
	if err != nil {
		t.Fatalf("WebSocket after the token was revoked: %v; want it opened by the replay (the gateway must not wait for the stream, which the client sends only once it is open)", err)
	}
	if resp.StatusCode != http.StatusOK {
		pw.Close()
		resp.Body.Close()
		t.Fatalf("WebSocket after the token was revoked: %d, want 200 from the replay: nothing of the stream was read, it can go to the replay as it is", resp.StatusCode)
	}
	if got := exchange(resp, pw); got != "hello" {
		t.Errorf("the replayed WebSocket echoed %q, want hello", got)
	}
}

// TestReplayAfterTransportReadsBodyLate: the upstream refuses the token
// before the first attempt's transport has sent the body (the client sends
// it 150 ms after its header), and the transport reads it to its end while
// the gateway waits for the new token. reverse_proxy reads the request's
// trailers on the transport's goroutine at the end of the body: the replay
// must not change the request before the transport is done with the body
// (under -race, a data race otherwise). The replay then sends the whole body.
func TestReplayAfterTransportReadsBodyLate(t *testing.T) {
	p := startProvider(t, emulator.ONEiO)
	backend := startBackend(t, p)
	up := startHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The refusal goes out at once, body unread: with full duplex,
		// net/http does not read the request body first.
		http.NewResponseController(w).EnableFullDuplex()
		if _, tok, _ := strings.Cut(r.Header.Get("Authorization"), " "); !p.Valid(tok) {
			w.WriteHeader(http.StatusUnauthorized)
			io.WriteString(w, "invalid token") // with a body: the transport hands it over before the request is written
			return
		}
		backend.ServeHTTP(w, r)
	}))
	g := startGateway(t, fmt.Sprintf(oneioSite+`
	reverse_proxy %[2]s
`, p.TokenURL(), up))
	if status, body, _ := g.get("/warm-up"); status != http.StatusOK {
		t.Fatalf("warm-up: %d %q", status, body)
	}
	p.RevokeAll()
	p.SetSlowDelay(500 * time.Millisecond) // the new token comes after the body is sent
	p.SetMode(emulator.Slow)
	conn, err := net.Dial("tcp", g.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	body := "0123456789abcdef"
	fmt.Fprintf(conn, "POST /upload HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n", g.addr, len(body))
	time.Sleep(150 * time.Millisecond)
	if _, err := io.WriteString(conn, body); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if n := resp.Header.Get(emulator.BodyLengthHeader); resp.StatusCode != http.StatusOK || n != strconv.Itoa(len(body)) {
		t.Errorf("after the token was revoked: %d, body %q bytes at the backend; want the replay's 200 with all %d", resp.StatusCode, n, len(body))
	}
}
