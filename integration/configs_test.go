package integration

import (
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/caddy-upstream-oauth/upstream_oauth/integration/emulator"
)

// loadCaddyfile posts a Caddyfile to the in-process Caddy's admin /load and
// returns the answer's status and body (a failed load is an answer, not a
// test failure).
func loadCaddyfile(t *testing.T, config string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, fmt.Sprintf("http://localhost:%d/load", adminPort), strings.NewReader(config))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "text/caddyfile")
	client := &http.Client{Timeout: 60 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("POST /load: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// storedRecords lists the shared token records under a file_system
// storage root.
func storedRecords(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	dir := filepath.Join(root, "upstream_oauth", "tokens")
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			out = append(out, path)
		}
		return nil
	})
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return out
}

// TestFailedReloadKeepsRunningConfig: a reload whose config is provisioned
// and then fails to start (its second site's port is taken) leaves the
// token source on the running config's storage and logger. The source
// outlives the failed config (same settings), and a renewal afterwards
// stores its token in the running config's storage and logs to the running
// config's log, never the failed config's.
func TestFailedReloadKeepsRunningConfig(t *testing.T) {
	p := startProvider(t, emulator.ONEiO)
	b := startBackend(t, p)
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	storeA, storeB := t.TempDir(), t.TempDir()
	logA := filepath.Join(logDir, "failed-reload-running.log")
	logB := filepath.Join(logDir, "failed-reload-failed.log")
	name := opsName("failed-reload")

	running := fmt.Sprintf(`{
	admin localhost:%[1]d
	auto_https off
	grace_period 1s
	storage file_system %[2]s
	log {
		output file %[3]s
		level DEBUG
	}
}
http://%[4]s {
	upstream_oauth oneio {
		name %[5]s
		token_url %[6]s
		client_id client-oneio
		client_secret secret-oneio-Zq8
		share
	}
	reverse_proxy %[7]s
}
`, adminPort, storeA, logA, addr, name, p.TokenURL(), b.URL())
	// The same site and source, with another storage and log, and a second
	// site on a port that is already taken: provisioned, then fails to start.
	failing := fmt.Sprintf(`{
	admin localhost:%[1]d
	auto_https off
	grace_period 1s
	storage file_system %[2]s
	log {
		output file %[3]s
		level DEBUG
	}
}
http://%[4]s {
	upstream_oauth oneio {
		name %[5]s
		token_url %[6]s
		client_id client-oneio
		client_secret secret-oneio-Zq8
		share
	}
	reverse_proxy %[7]s
}
http://%[8]s {
	respond "never served"
}
`, adminPort, storeB, logB, addr, name, p.TokenURL(), b.URL(), busy.Addr())

	caddytest.NewTester(t).InitServer(running, "caddyfile")
	if t.Failed() {
		t.FailNow()
	}
	client := &http.Client{Timeout: 30 * time.Second}
	get := func() int {
		resp, err := client.Get("http://" + addr + "/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if st := get(); st != http.StatusOK {
		t.Fatalf("first request: %d", st)
	}
	if n := len(storedRecords(t, storeA)); n != 1 {
		t.Fatalf("records in the running config's storage after the first token: %d, want 1", n)
	}

	if code, body := loadCaddyfile(t, failing); code == http.StatusOK {
		t.Fatalf("the config with a taken port loaded: %s", body)
	}
	// The running config still serves, with the source it had.
	if st := get(); st != http.StatusOK {
		t.Fatalf("request after the failed reload: %d", st)
	}
	// The admin endpoint is started anew after a failed load: a request
	// just then may find its connection reset, so try until it answers.
	renewed := eventually(10*time.Second, func() bool {
		req, _ := http.NewRequest(http.MethodPost, fmt.Sprintf("http://localhost:%d/upstream_oauth/sources/%s/renew", adminPort, name), nil)
		resp, err := client.Do(req)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	if !renewed {
		t.Fatalf("the forced renewal through the admin API did not succeed")
	}
	if n := p.TokenRequests(); n != 2 {
		t.Errorf("token requests: %d, want 2 (the first token and the forced renewal)", n)
	}
	if recs := storedRecords(t, storeB); len(recs) != 0 {
		t.Errorf("the renewal after a failed reload stored its token in the failed config's storage (%v); the contract: a failed reload leaves the running config's storage in use", recs)
	}
	if n := len(storedRecords(t, storeA)); n != 1 {
		t.Errorf("records in the running config's storage: %d, want 1", n)
	}
	logs := func(path string) int {
		data, _ := os.ReadFile(path)
		return strings.Count(string(data), `"msg":"token obtained"`)
	}
	// A source logs just after it hands out the token: wait for the line.
	eventually(5*time.Second, func() bool { return logs(logA) >= 2 })
	if a, b := logs(logA), logs(logB); a != 2 || b != 0 {
		t.Errorf(`"token obtained" lines: running config's log %d, failed config's %d; want 2 and 0 (sources log through the running config)`, a, b)
	}
	if st := get(); st != http.StatusOK {
		t.Errorf("request after the renewal: %d", st)
	}
}
