// Package integration runs a real Caddy with the upstream_oauth module
// against emulators of the three providers and a backend that accepts only
// currently valid tokens. Caddy runs in this test process (caddytest) and, in
// binary_test.go, as the binary that xcaddy builds.
package integration

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"
	_ "github.com/pberkel/caddy-storage-redis" // storage redis, for the in-process fleet member

	_ "github.com/caddy-upstream-oauth/upstream_oauth"
	"github.com/caddy-upstream-oauth/upstream_oauth/integration/emulator"
)

// adminPort is the in-process Caddy's admin port: a free one per test
// process, so that test binaries running at once do not share a Caddy.
var adminPort int

// logDir collects the log of every in-process Caddy run, at DEBUG level,
// for the leak checks.
var logDir string

func TestMain(m *testing.M) {
	// caddytest skips (rather than fails) when its TLS fixtures are missing;
	// these tests use none, so require none.
	caddytest.Default.Certificates = nil
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	adminPort = l.Addr().(*net.TCPAddr).Port
	l.Close()
	caddytest.Default.AdminPort = adminPort
	caddytest.Default.LoadRequestTimeout = 30 * time.Second
	caddytest.Default.TestRequestTimeout = 30 * time.Second
	dir, err := os.MkdirTemp("", "upstream-oauth-logs-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	logDir = dir
	code := m.Run()
	if err := checkLogsForLeaks(); err != nil {
		fmt.Fprintln(os.Stderr, "FAIL: leak check:", err)
		code = 1
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

// providers and idps are all emulators the tests started, and
// runtimeSecrets the secrets tests made at run time (private keys' PEM
// lines, HMAC secrets), for the leak check.
var (
	providersMu    sync.Mutex
	providers      []*emulator.Provider
	idps           []*emulator.IdP
	runtimeSecrets []string
	// tenantProviders counts the TenantProviders started (tenants_test.go).
	tenantProviders int
)

// checkLogsForLeaks reads every log that every Caddy of the run wrote (all
// at DEBUG level) and fails if any holds a token any emulator issued or a
// configured secret.
func checkLogsForLeaks() error {
	providersMu.Lock()
	var leaks []string
	for _, p := range providers {
		leaks = append(append(leaks, p.Tokens()...), p.RefreshTokens()...)
	}
	for _, p := range idps {
		leaks = append(append(append(leaks, p.Tokens()...), p.RefreshTokens()...), p.Assertions()...)
	}
	if tenantProviders > 0 {
		// Every token a TenantProvider issues starts tnt-, and every
		// tenant secret the tests configure ends -Qv7: any occurrence is a
		// leak (thousands of tenants, so no list of each).
		leaks = append(leaks, emulator.TenantTokenPrefix, tenantSecretMark)
	}
	tokens := len(leaks)
	leaks = append(append(leaks, secrets()...), runtimeSecrets...)
	providersMu.Unlock()
	files, lines := 0, 0
	err := filepath.Walk(logDir, func(path string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		files++
		lines += bytes.Count(data, []byte("\n"))
		for _, leak := range leaks {
			if bytes.Contains(data, []byte(leak)) {
				return fmt.Errorf("%s holds a token or secret", filepath.Base(path))
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	fmt.Printf("leak check: %d DEBUG log files, %d lines, %d tokens and assertions and %d secrets looked for: none found\n", files, lines, tokens, len(leaks)-tokens)
	return nil
}

// gateway is a Caddy config loaded into the in-process Caddy.
type gateway struct {
	t      *testing.T
	tester *caddytest.Tester
	addr   string // host:port of the site
	log    string // path of the DEBUG log file
}

// globalOptions are the options every test config starts with.
func globalOptions(logFile string) string {
	return fmt.Sprintf(`{
	admin localhost:%d
	auto_https off
	grace_period 1s
	log {
		output file %s
		level DEBUG
	}
}
`, adminPort, logFile)
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// newGateway is a gateway of the in-process Caddy, not loaded yet, with a
// fresh loopback port for its site and a DEBUG log named after the test.
func newGateway(t *testing.T) *gateway {
	t.Helper()
	g := &gateway{t: t, tester: caddytest.NewTester(t), addr: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
	g.log = filepath.Join(logDir, strings.ReplaceAll(t.Name(), "/", "_")+".log")
	return g
}

// startGateway loads a config whose site serves site (the body of the site
// block) on a fresh loopback port.
func startGateway(t *testing.T, site string) *gateway {
	t.Helper()
	g := newGateway(t)
	g.load(site)
	return g
}

// load (re)loads the config with site as the body of the site block.
func (g *gateway) load(site string) {
	g.t.Helper()
	g.loadRaw(globalOptions(g.log) + fmt.Sprintf("http://%s {\n%s\n}\n", g.addr, site))
}

func (g *gateway) loadRaw(config string) {
	g.t.Helper()
	g.tester.InitServer(config, "caddyfile")
	if g.t.Failed() {
		g.t.FailNow()
	}
}

// url is the gateway's URL for path.
func (g *gateway) url(path string) string { return "http://" + g.addr + path }

// do sends a request through the gateway and returns status, body and
// headers.
func (g *gateway) do(method, path string, header http.Header, body []byte) (int, string, http.Header) {
	g.t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, g.url(path), rd)
	if err != nil {
		g.t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := g.tester.Client.Do(req)
	if err != nil {
		g.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

func (g *gateway) get(path string) (int, string, http.Header) {
	g.t.Helper()
	return g.do(http.MethodGet, path, nil, nil)
}

// getStatus sends a GET of url with client and returns its status, with
// the body read; 0 on a transport error.
func getStatus(client *http.Client, url string) int {
	resp, err := client.Get(url)
	if err != nil {
		return 0
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// concurrently runs n GETs of path at once and returns how many got each
// status.
func (g *gateway) concurrently(n int, path string) map[int]int {
	g.t.Helper()
	var (
		mu     sync.Mutex
		counts = map[int]int{}
		wg     sync.WaitGroup
		start  = make(chan struct{})
	)
	client := &http.Client{
		Timeout:   30 * time.Second,
		Transport: &http.Transport{MaxIdleConnsPerHost: n, MaxConnsPerHost: 0},
	}
	defer client.CloseIdleConnections()
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			status := getStatus(client, g.url(path))
			mu.Lock()
			counts[status]++
			mu.Unlock()
		}()
	}
	close(start)
	wg.Wait()
	return counts
}

// logText returns the gateway's log so far.
func (g *gateway) logText() string {
	b, _ := os.ReadFile(g.log)
	return string(b)
}

// startProvider starts an emulator of kind with fixed test credentials.
func startProvider(t *testing.T, kind emulator.Kind) *emulator.Provider {
	t.Helper()
	return startProviderConfig(t, emulator.Config{
		Kind:         kind,
		ClientID:     "client-" + string(kind),
		ClientSecret: "secret-" + string(kind) + "-Zq8",
		Username:     "user-" + string(kind),
		Password:     "password-" + string(kind) + "-Xk3",
	})
}

// startProviderConfig starts an emulator of cfg, whose tokens the leak
// check looks for, and fails the test on any violation it saw.
func startProviderConfig(t *testing.T, cfg emulator.Config) *emulator.Provider {
	t.Helper()
	kind := cfg.Kind
	p := emulator.New(cfg)
	p.Start()
	providersMu.Lock()
	providers = append(providers, p)
	providersMu.Unlock()
	t.Cleanup(func() {
		p.Close()
		if v := p.Violations(); len(v) > 0 {
			t.Errorf("%s emulator saw malformed token requests: %q", kind, v)
		}
	})
	return p
}

func startBackend(t *testing.T, providers ...*emulator.Provider) *emulator.Backend {
	t.Helper()
	b := emulator.NewBackend(providers...)
	b.Start()
	t.Cleanup(b.Close)
	return b
}

// block returns the upstream_oauth directive for p's kind, with its
// preset, its test credentials and the emulator's URLs, plus extra lines.
func block(p *emulator.Provider, extra ...string) string {
	kind := string(p.Kind())
	var b strings.Builder
	fmt.Fprintf(&b, "\tupstream_oauth %s {\n\t\ttoken_url %s\n", kind, p.TokenURL())
	switch p.Kind() {
	case emulator.OneNCE:
		fmt.Fprintf(&b, "\t\tusername client-%[1]s\n\t\tpassword secret-%[1]s-Zq8\n", kind)
	case emulator.ONEiO:
		fmt.Fprintf(&b, "\t\tclient_id client-%[1]s\n\t\tclient_secret secret-%[1]s-Zq8\n", kind)
	case emulator.Telenor:
		fmt.Fprintf(&b, "\t\tclient_id client-%[1]s\n\t\tclient_secret secret-%[1]s-Zq8\n\t\tusername user-%[1]s\n\t\tpassword password-%[1]s-Xk3\n\t\tlogout_url %[2]s\n", kind, p.LogoutURL())
	}
	for _, e := range extra {
		fmt.Fprintf(&b, "\t\t%s\n", e)
	}
	b.WriteString("\t}\n")
	return b.String()
}

// proxied is a site body: p's upstream_oauth block (plus extra lines) in
// front of reverse_proxy to b.
func proxied(p *emulator.Provider, b *emulator.Backend, extra ...string) string {
	return block(p, extra...) + "\treverse_proxy " + b.URL() + "\n"
}

// startWarm starts an emulator of kind, a backend trusting it, and a gateway
// between them (with extra lines in the block), and sends one request
// through, which must succeed: the source then holds a token.
func startWarm(t *testing.T, kind emulator.Kind, extra ...string) (*emulator.Provider, *emulator.Backend, *gateway) {
	t.Helper()
	p := startProvider(t, kind)
	b := startBackend(t, p)
	g := startGateway(t, proxied(p, b, extra...))
	if status, body, _ := g.get("/warm-up"); status != http.StatusOK {
		t.Fatalf("warm-up request: %d %q", status, body)
	}
	return p, b, g
}

// secrets are the credentials the tests configure, for leak checks.
func secrets() []string {
	var out []string
	for _, k := range []emulator.Kind{emulator.OneNCE, emulator.ONEiO, emulator.Telenor} {
		out = append(out, "secret-"+string(k)+"-Zq8", "password-"+string(k)+"-Xk3")
	}
	return append(out, rotatedSecret)
}

// eventually polls cond every 20ms until it holds or d passes.
func eventually(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cond() {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return cond()
}

// startHandler serves h on a loopback httptest server and returns its URL.
func startHandler(t *testing.T, h http.Handler) string {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.URL
}
