package integration

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/caddy-upstream-oauth/upstream_oauth/integration/emulator"
)

// instance is one Caddy process of a fleet.
type instance struct {
	t     *testing.T
	cmd   *exec.Cmd
	addr  string // host:port of the site
	admin string // host:port of the admin endpoint
	log   string
	done  chan struct{}
}

// startInstance runs the xcaddy-built Caddy with the global storage option
// storage and a site that proxies to b with p's token, shared.
func startInstance(t *testing.T, storage string, p *emulator.Provider, b *emulator.Backend) *instance {
	t.Helper()
	return launch(t, func(in *instance) string {
		return fmt.Sprintf(`{
	admin %s
	auto_https off
	%s
	log {
		output file %s
		level DEBUG
	}
}
http://%s {
%s	reverse_proxy %s
}
`, in.admin, storage, in.log, in.addr, block(p, "share"), b.URL())
	})
}

// launch runs the xcaddy-built Caddy with the Caddyfile that config writes
// for in, whose addr, admin and log are set, and waits until it serves.
func launch(t *testing.T, config func(in *instance) string) *instance {
	t.Helper()
	dir := t.TempDir()
	in := &instance{
		t:     t,
		addr:  fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		admin: fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		log:   filepath.Join(logDir, fmt.Sprintf("%s-%d.log", strings.ReplaceAll(t.Name(), "/", "_"), freePort(t))),
		done:  make(chan struct{}),
	}
	file := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(file, []byte(config(in)), 0o600); err != nil {
		t.Fatal(err)
	}
	in.cmd = exec.Command(caddyBinary(t), "run", "--config", file)
	out, err := os.Create(filepath.Join(dir, "stdout.log"))
	if err != nil {
		t.Fatal(err)
	}
	in.cmd.Stdout, in.cmd.Stderr = out, out
	if err := in.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = in.cmd.Wait()
		out.Close()
		close(in.done)
	}()
	t.Cleanup(in.kill)
	if !eventually(20*time.Second, func() bool {
		c, err := net.Dial("tcp", in.addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	}) {
		b, _ := os.ReadFile(filepath.Join(dir, "stdout.log"))
		t.Fatalf("instance did not start:\n%s", b)
	}
	return in
}

// launchFleet launches n instances, each with the Caddyfile that config
// writes for it, one after another, each serving when it is returned.
func launchFleet(t *testing.T, n int, config func(in *instance) string) []*instance {
	t.Helper()
	fleet := make([]*instance, 0, n)
	for range n {
		fleet = append(fleet, launch(t, config))
	}
	return fleet
}

// kill ends the process at once (SIGKILL), as a crash would.
func (in *instance) kill() {
	if in.cmd.Process != nil {
		_ = in.cmd.Process.Signal(syscall.SIGKILL)
	}
	<-in.done
}

// get sends one request through the instance; status 0 on a transport error.
func (in *instance) get(path string) int {
	return getStatus(&http.Client{Timeout: 60 * time.Second}, "http://"+in.addr+path)
}

func (in *instance) logText() string {
	b, _ := os.ReadFile(in.log)
	return string(b)
}

// startRedis runs a redis-server on a free loopback port, without
// persistence, for the test's lifetime; .ci/run installs it.
func startRedis(t *testing.T) string {
	t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	runRedis(t, addr)
	return addr
}

// redisServer is a redis-server process of a test.
type redisServer struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// kill ends it at once.
func (r *redisServer) kill() {
	_ = r.cmd.Process.Kill()
	<-r.done
}

// pause freezes it (SIGSTOP): connections are accepted and never answered,
// as with a server that hangs or a network that drops packets.
func (r *redisServer) pause() { _ = r.cmd.Process.Signal(syscall.SIGSTOP) }

// resume lets it run again (SIGCONT).
func (r *redisServer) resume() { _ = r.cmd.Process.Signal(syscall.SIGCONT) }

// runRedis starts redis-server on addr, killed when the test ends.
func runRedis(t *testing.T, addr string) *redisServer {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redis-server is not installed (apt-get install -y redis-server; .ci/run does): %v", err)
	}
	host, port, _ := net.SplitHostPort(addr)
	cmd := exec.Command(bin, "--bind", host, "--port", port, "--save", "", "--appendonly", "no", "--dir", t.TempDir())
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r := &redisServer{cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(r.done) }()
	t.Cleanup(r.kill)
	if !eventually(10*time.Second, func() bool {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return false
		}
		defer c.Close()
		fmt.Fprint(c, "PING\r\n")
		line, _ := bufio.NewReader(c).ReadString('\n')
		return strings.HasPrefix(line, "+PONG")
	}) {
		t.Fatalf("redis-server did not start on %s", addr)
	}
	return r
}

func fileStorage(dir string) string { return "storage file_system " + dir }

func redisStorage(addr string) string {
	return fmt.Sprintf("storage redis {\n\t\taddress %s\n\t\tkey_prefix upstream-oauth-test\n\t}", addr)
}

// TestFleetOneTokenRequest: 1, 2 and 3 instances sharing one storage
// (file_system, then Redis) make one token request in all for their
// traffic, cold requests to every instance at once included.
func TestFleetOneTokenRequest(t *testing.T) {
	for _, backend := range []string{"file_system", "redis"} {
		for n := 1; n <= 3; n++ {
			t.Run(fmt.Sprintf("%s/%d", backend, n), func(t *testing.T) {
				var storage string
				if backend == "redis" {
					storage = redisStorage(startRedis(t))
				} else {
					storage = fileStorage(t.TempDir())
				}
				p := startProvider(t, emulator.ONEiO)
				p.SetSlowDelay(200 * time.Millisecond)
				p.SetMode(emulator.Slow)
				b := startBackend(t, p)
				fleet := make([]*instance, n)
				for i := range fleet {
					fleet[i] = startInstance(t, storage, p, b)
				}
				// Cold: every instance at once, 5 requests each.
				var wg sync.WaitGroup
				statuses := make(chan int, 5*n)
				for _, in := range fleet {
					for range 5 {
						wg.Add(1)
						go func() { defer wg.Done(); statuses <- in.get("/cold") }()
					}
				}
				wg.Wait()
				close(statuses)
				for st := range statuses {
					if st != http.StatusOK {
						t.Errorf("cold request: status %d", st)
					}
				}
				// Warm: 20 more to each.
				for _, in := range fleet {
					for range 20 {
						if st := in.get("/warm"); st != http.StatusOK {
							t.Fatalf("warm request: status %d", st)
						}
					}
				}
				if got := p.TokenRequests(); got != 1 {
					t.Errorf("%d instance(s) on %s made %d token requests, want 1", n, backend, got)
				}
				if b.Rejected() != 0 {
					t.Errorf("backend rejected %d requests", b.Rejected())
				}
				t.Logf("%s, %d instance(s), %d requests → %d token request(s)", backend, n, 25*n, p.TokenRequests())
			})
		}
	}
}

// TestFleetLockHolderKilled: the instance holding the lock dies in the
// middle of a token request; another takes over once the lock goes stale.
func TestFleetLockHolderKilled(t *testing.T) {
	storage := redisStorage(startRedis(t))
	p := startProvider(t, emulator.Telenor)
	p.SetSlowDelay(30 * time.Second)
	p.SetMode(emulator.Slow)
	b := startBackend(t, p)
	a, other := startInstance(t, storage, p, b), startInstance(t, storage, p, b)
	go a.get("/a") // a takes the lock and waits on the slow provider
	if !eventually(10*time.Second, func() bool { return p.TokenRequests() == 1 }) {
		t.Fatal("the first instance made no token request")
	}
	a.kill()
	p.SetMode(emulator.Up)
	if st := other.get("/b"); st != http.StatusOK {
		t.Fatalf("after the lock holder died: status %d", st)
	}
	if got := p.TokenRequests(); got != 2 {
		t.Errorf("token requests: %d, want 2 (the dead instance's and the survivor's)", got)
	}
	t.Logf("lock holder killed mid-request: survivor got a token; %d token requests in all", p.TokenRequests())
}

// TestFleetRenewOnShared: a token refused upstream is replaced once for the
// fleet: the instance that sees the refusal first gets and stores a new
// token, the next takes it from storage.
func TestFleetRenewOnShared(t *testing.T) {
	storage := fileStorage(t.TempDir())
	p := startProvider(t, emulator.OneNCE)
	b := startBackend(t, p)
	a, c := startInstance(t, storage, p, b), startInstance(t, storage, p, b)
	if a.get("/") != http.StatusOK || c.get("/") != http.StatusOK {
		t.Fatal("warm-up failed")
	}
	p.RevokeAll()
	if st := a.get("/after-revoke"); st != http.StatusOK {
		t.Errorf("first instance after revocation: %d, want 200 (replayed)", st)
	}
	if st := c.get("/after-revoke"); st != http.StatusOK {
		t.Errorf("second instance after revocation: %d, want 200 (replayed)", st)
	}
	if got := p.TokenRequests(); got != 2 {
		t.Errorf("token requests: %d, want 2 (one before, one after the revocation)", got)
	}
	for _, in := range []*instance{a, c} {
		in.kill()
	}
	if n := p.LogoutRequests(); n != 0 {
		t.Errorf("shared tokens were logged out %d times on shutdown", n)
	}
}

// TestFleetStorageOutage: with Redis down, instances fetch on their own and
// say so; when it is back, they share again.
func TestFleetStorageOutage(t *testing.T) {
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	server := runRedis(t, addr)
	p := startProvider(t, emulator.ONEiO)
	b := startBackend(t, p)
	in := startInstance(t, redisStorage(addr), p, b)
	if st := in.get("/"); st != http.StatusOK {
		t.Fatalf("status %d", st)
	}
	server.kill()
	p.RevokeAll()
	if st := in.get("/outage"); st != http.StatusOK {
		t.Fatalf("during the outage: status %d, want 200 (fetched on its own)", st)
	}
	if !eventually(5*time.Second, func() bool { return strings.Contains(in.logText(), "shared storage failed") }) {
		t.Errorf("the outage was not logged")
	}
	runRedis(t, addr)
	// After a failure the storage is left untried for a while (2s at
	// first): renewals until then fetch on their own, and the first one
	// after it finds the storage back.
	back := false
	for deadline := time.Now().Add(20 * time.Second); !back && time.Now().Before(deadline); {
		if st := in.renew("oneio:client-oneio"); st != http.StatusOK {
			t.Fatalf("after the outage: renewal status %d", st)
		}
		back = strings.Contains(in.logText(), "shared storage is back")
		if !back {
			time.Sleep(500 * time.Millisecond)
		}
	}
	if !back {
		t.Errorf("the return to sharing was not logged")
	}
	if st := in.get("/back"); st != http.StatusOK {
		t.Fatalf("after the outage: status %d", st)
	}
	// Sharing again: a second instance takes the stored token.
	before := p.TokenRequests()
	other := startInstance(t, redisStorage(addr), p, b)
	if st := other.get("/"); st != http.StatusOK {
		t.Fatalf("second instance: status %d", st)
	}
	if got := p.TokenRequests(); got != before {
		t.Errorf("second instance after the outage made %d token requests, want 0", got-before)
	}
}

// TestFleetStorageHoldsNoPlaintext: neither the file_system storage nor
// Redis holds a token, a refresh token or a secret in plaintext, and the
// keys name no secret.
func TestFleetStorageHoldsNoPlaintext(t *testing.T) {
	dir := t.TempDir()
	raddr := startRedis(t)
	p := startProvider(t, emulator.Telenor)
	p.SetIssueRefreshTokens(true)
	b := startBackend(t, p)
	for _, storage := range []string{fileStorage(dir), redisStorage(raddr)} {
		in := startInstance(t, storage, p, b)
		if st := in.get("/"); st != http.StatusOK {
			t.Fatalf("status %d", st)
		}
		in.kill()
	}
	leaks := append(append(p.Tokens(), p.RefreshTokens()...), secrets()...)
	leaks = append(leaks, "client-telenor", "user-telenor")
	var blobs []string
	files := 0
	filepath.Walk(dir, func(path string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			data, _ := os.ReadFile(path)
			blobs = append(blobs, path, string(data))
			if strings.Contains(path, "upstream_oauth") {
				files++
			}
		}
		return nil
	})
	if files == 0 {
		t.Fatal("no shared token record in the file_system storage")
	}
	rdb := redis.NewClient(&redis.Options{Addr: raddr})
	defer rdb.Close()
	ctx := context.Background()
	keys, err := rdb.Keys(ctx, "*").Result()
	if err != nil || len(keys) == 0 {
		t.Fatalf("redis keys: %v %v", keys, err)
	}
	for _, k := range keys {
		v, _ := rdb.Get(ctx, k).Result()
		blobs = append(blobs, k, v)
	}
	for _, blob := range blobs {
		for _, leak := range leaks {
			if strings.Contains(blob, leak) {
				t.Errorf("storage holds a token, secret or credential in plaintext")
			}
		}
	}
	t.Logf("checked %d file_system entries and %d redis keys: no plaintext token or secret", files, len(keys))
}

// TestFleetRenewalShared: with short-lived tokens and traffic on every
// instance, the fleet renews once per renewal period, not once per instance:
// each instance picks up the token another renewed before its own runs out.
func TestFleetRenewalShared(t *testing.T) {
	storage := redisStorage(startRedis(t))
	p := startProvider(t, emulator.ONEiO)
	p.SetTTL(4 * time.Second)
	b := startBackend(t, p)
	fleet := []*instance{startInstance(t, storage, p, b), startInstance(t, storage, p, b), startInstance(t, storage, p, b)}
	const run = 10 * time.Second
	deadline := time.Now().Add(run)
	requests, failed := 0, 0
	for time.Now().Before(deadline) {
		for _, in := range fleet {
			if in.get("/") != http.StatusOK {
				failed++
			}
			requests++
		}
		time.Sleep(30 * time.Millisecond)
	}
	if failed != 0 {
		t.Errorf("%d of %d requests failed", failed, requests)
	}
	// ONEiO's expires_in is one second short: 3s lifetimes, renewed 20% (plus
	// up to 5% jitter) ahead: a renewal every ~2.3s at the soonest, so at
	// most 10s/2.25s + 1 = 5 token requests for the fleet (6 allowed for a
	// stalled machine); three instances renewing on their own would make
	// three times as many.
	if got := p.TokenRequests(); got > 6 || got < 2 {
		t.Errorf("3 instances over %s with 3s tokens made %d token requests, want 2..6", run, got)
	}
	if b.Rejected() != 0 {
		t.Errorf("backend rejected %d requests", b.Rejected())
	}
	t.Logf("3 instances, %d requests over %s with 3s tokens → %d token requests, %d failed", requests, run, p.TokenRequests(), failed)
}

// TestFleetInProcessAndBinary: the in-process Caddy (with the Redis storage
// module compiled into the test binary) and an xcaddy-built instance share
// one token through Redis.
func TestFleetInProcessAndBinary(t *testing.T) {
	raddr := startRedis(t)
	p := startProvider(t, emulator.Telenor)
	b := startBackend(t, p)
	g := startGateway(t, proxied(p, b, "share"))
	g.loadRaw(strings.Replace(globalOptions(g.log), "auto_https off", "auto_https off\n\t"+redisStorage(raddr), 1) +
		fmt.Sprintf("http://%s {\n%s\treverse_proxy %s\n}\n", g.addr, block(p, "share"), b.URL()))
	for range 10 {
		if st, _, _ := g.get("/in-process"); st != http.StatusOK {
			t.Fatalf("in-process: status %d", st)
		}
	}
	in := startInstance(t, redisStorage(raddr), p, b)
	for range 10 {
		if st := in.get("/binary"); st != http.StatusOK {
			t.Fatalf("binary: status %d", st)
		}
	}
	if got := p.TokenRequests(); got != 1 {
		t.Errorf("in-process + binary instance on Redis: %d token requests, want 1", got)
	}
}
