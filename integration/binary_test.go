package integration

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-upstream-oauth/upstream_oauth/integration/emulator"
)

var (
	caddyBinOnce sync.Once
	caddyBinPath string
	caddyBinErr  error
)

// caddyBinary returns the path of a Caddy built by xcaddy with this module
// and the Redis storage module (for the fleet tests): $CADDY_BIN when set (.ci/run builds it once), else one built now
// with `go tool xcaddy build` in this module (which holds the xcaddy tool, so
// that the plugin's own go.mod does not).
func caddyBinary(t *testing.T) string {
	t.Helper()
	caddyBinOnce.Do(func() {
		if p := os.Getenv("CADDY_BIN"); p != "" {
			caddyBinPath, caddyBinErr = filepath.Abs(p)
			return
		}
		dir, err := os.MkdirTemp("", "upstream-oauth-caddy-")
		if err != nil {
			caddyBinErr = err
			return
		}
		caddyBinPath = filepath.Join(dir, "caddy")
		cmd := exec.Command("go", "tool", "xcaddy", "build", "v2.11.9",
			"--output", caddyBinPath,
			"--with", "github.com/caddy-upstream-oauth/upstream_oauth@v0.0.0-00010101000000-000000000000=..",
			"--with", "github.com/pberkel/caddy-storage-redis@v1.8.1")
		if out, err := cmd.CombinedOutput(); err != nil {
			caddyBinErr = fmt.Errorf("xcaddy build: %v\n%s", err, out)
		}
	})
	if caddyBinErr != nil {
		t.Fatal(caddyBinErr)
	}
	return caddyBinPath
}

// runCaddy runs the binary with args and returns its combined output.
func runCaddy(t *testing.T, env []string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, caddyBinary(t), args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestBinaryListModules: the xcaddy build lists the module.
func TestBinaryListModules(t *testing.T) {
	out, err := runCaddy(t, nil, "list-modules")
	if err != nil {
		t.Fatalf("list-modules: %v\n%s", err, out)
	}
	if !strings.Contains(out, "http.handlers.upstream_oauth") {
		t.Errorf("list-modules does not show http.handlers.upstream_oauth")
	}
}

// TestBinaryValidateExample: example.Caddyfile validates as it is.
func TestBinaryValidateExample(t *testing.T) {
	out, err := runCaddy(t, nil, "validate", "--config", "../example.Caddyfile")
	if err != nil || !strings.Contains(out, "Valid configuration") {
		t.Fatalf("validate example.Caddyfile: %v\n%s", err, out)
	}
}

// TestBinaryAdaptErrors: bad config fails `caddy adapt` with the file, the
// line and the problem.
func TestBinaryAdaptErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ body, want string }{
		{"upstream_oauth acme", "unknown provider 'acme'"},
		{"upstream_oauth 1nce {\n\t\tusername u\n\t\tpassword p\n\t\tcolour blue\n\t}", "unrecognized subdirective 'colour'"},
		{"upstream_oauth telenor {\n\t\tclient_id a\n\t\tclient_secret b\n\t}", "grant password needs username and password"},
		{"upstream_oauth {\n\t\ttoken_url http://auth.example.com/token\n\t\tclient_id a\n\t\tclient_secret b\n\t}", "http:// is only allowed"},
		{"upstream_oauth 1nce {\n\t\ttimeout forever\n\t}", "bad duration 'forever'"},
		{"upstream_oauth 1nce {\n\t\trenew_on 4o1\n\t}", "'4o1' is not an HTTP status code"},
	} {
		file := filepath.Join(dir, "Caddyfile")
		if err := os.WriteFile(file, []byte(":8080 {\n\t"+tc.body+"\n}\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := runCaddy(t, nil, "adapt", "--config", file)
		if err == nil {
			t.Errorf("adapt accepted %q", tc.body)
			continue
		}
		if !strings.Contains(out, tc.want) || !strings.Contains(out, file+":") {
			t.Errorf("adapt of %q: output does not name %q and the file and line:\n%s", tc.body, tc.want, out)
		}
	}
}

// TestBinaryGateway runs the binary as a gateway in front of the ONEiO
// emulator, with the secret from {env.*}: requests carry the token, one
// token request serves them all, and neither the admin API's config nor the
// log holds the secret or the token.
func TestBinaryGateway(t *testing.T) {
	p := startProvider(t, emulator.ONEiO)
	b := startBackend(t, p)
	dir := t.TempDir()
	port, admin := freePort(t), freePort(t)
	logFile := filepath.Join(logDir, "TestBinaryGateway.log")
	config := fmt.Sprintf(`{
	admin 127.0.0.1:%d
	auto_https off
	log {
		output file %s
		level DEBUG
	}
}
http://127.0.0.1:%d {
	upstream_oauth oneio {
		token_url %s
		client_id client-oneio
		client_secret {env.ONEIO_SECRET}
	}
	reverse_proxy %s
}
`, admin, logFile, port, p.TokenURL(), b.URL())
	file := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(file, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := exec.CommandContext(ctx, caddyBinary(t), "run", "--config", file)
	cmd.Env = append(os.Environ(), "ONEIO_SECRET=secret-oneio-Zq8")
	outFile := filepath.Join(logDir, "TestBinaryGateway.stdout")
	out, err := os.Create(outFile)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	cmd.Stdout, cmd.Stderr = out, out
	output := func() string { b, _ := os.ReadFile(outFile); return string(b) }
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cancel()
		_ = cmd.Wait()
	}()
	url := fmt.Sprintf("http://127.0.0.1:%d/api/v2", port)
	if !eventually(20*time.Second, func() bool {
		resp, err := http.Get(url)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return true
	}) {
		t.Fatalf("caddy did not start:\n%s", output())
	}
	for i := range 10 {
		resp, err := http.Post(url, "application/json", strings.NewReader(`{"id":"123456789"}`))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || string(body) != "ok oneio" {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
	}
	if n := p.TokenRequests(); n != 1 {
		t.Errorf("token requests: %d, want 1", n)
	}
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/config/", admin))
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(cfg), "{env.ONEIO_SECRET}") {
		t.Errorf("admin config does not hold the placeholder")
	}
	logText, _ := os.ReadFile(logFile)
	for _, leak := range append(p.Tokens(), "secret-oneio-Zq8") {
		if strings.Contains(string(cfg), leak) {
			t.Errorf("the admin API's config holds a secret or token")
		}
		if strings.Contains(string(logText), leak) || strings.Contains(output(), leak) {
			t.Errorf("the log holds a secret or token")
		}
	}
}
