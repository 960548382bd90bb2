package integration

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	storageredis "github.com/pberkel/caddy-storage-redis"

	"github.com/caddy-upstream-oauth/upstream_oauth/cache"
	"github.com/caddy-upstream-oauth/upstream_oauth/grants"
	"github.com/caddy-upstream-oauth/upstream_oauth/integration/emulator"
)

// The fleet under faults: clock skew, a slow provider, rotating refresh
// tokens through an outage and a crash, unreadable records, a storage that
// stops answering. Each runs against file_system and Redis storage.

// rotatedSecret is a second 1NCE secret, as during a secret rotation.
const rotatedSecret = "secret-1nce-rotated-Zq9"

// testStore is a storage that the instances reach through its global
// option and the test through certmagic, and that the test can break.
type testStore struct {
	kind   string // file_system or redis
	option string // the Caddyfile global option
	st     certmagic.Storage
	dir    string       // file_system
	redis  *redisServer // redis
}

var storageKinds = []string{"file_system", "redis"}

func newTestStore(t *testing.T, kind string) *testStore {
	t.Helper()
	s := &testStore{kind: kind}
	switch kind {
	case "file_system":
		s.dir = filepath.Join(t.TempDir(), "storage")
		s.option = fileStorage(s.dir)
		s.st = &certmagic.FileStorage{Path: s.dir}
	case "redis":
		addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
		s.redis = runRedis(t, addr)
		s.option = redisStorage(addr)
		rs := storageredis.New()
		rs.Address = []string{addr}
		rs.KeyPrefix = "upstream-oauth-test"
		ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
		t.Cleanup(cancel)
		if err := rs.Provision(ctx); err != nil {
			t.Fatalf("redis storage for the test: %v", err)
		}
		s.st = rs
	default:
		t.Fatalf("unknown storage %q", kind)
	}
	return s
}

// fail makes the storage stop working until restore is called: Redis is
// frozen (SIGSTOP: it accepts connections and answers nothing), the
// file_system directory is replaced by a file.
func (s *testStore) fail(t *testing.T) (restore func()) {
	t.Helper()
	if s.redis != nil {
		s.redis.pause()
		return s.redis.resume
	}
	away := s.dir + ".away"
	if err := os.Rename(s.dir, away); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.dir, []byte("not a directory"), 0o600); err != nil {
		t.Fatal(err)
	}
	return func() {
		if err := os.Remove(s.dir); err != nil {
			t.Error(err)
		}
		if err := os.Rename(away, s.dir); err != nil {
			t.Error(err)
		}
	}
}

// records lists the shared token records in the storage.
func (s *testStore) records(t *testing.T) []string {
	t.Helper()
	keys, err := s.st.List(context.Background(), cache.Namespace, false)
	if err != nil {
		t.Fatalf("listing %s: %v", cache.Namespace, err)
	}
	return keys
}

// shared is the test's own handle on the record of cfg, through the cache
// package's API: the instances' settings for the test's Caddyfile, as the
// handler resolves them.
func (s *testStore) shared(t *testing.T, cfg grants.Config) *cache.Shared {
	t.Helper()
	sh, err := cache.NewShared(cfg)
	if err != nil {
		t.Fatal(err)
	}
	sh.Storage = func() certmagic.Storage { return s.st }
	return sh
}

// oneNCEConfig is what the handler resolves the 1nce block of these tests
// to (username, password and the token URL given; the preset and defaults
// for the rest).
func oneNCEConfig(tokenURL, password string) grants.Config {
	return grants.Config{
		TokenURL: tokenURL, Grant: grants.ClientCredentials,
		Username: "client-1nce", Password: password,
		ClientAuth: grants.AuthBasic, Body: grants.BodyJSON,
		TokenType: "bearer", DefaultTTL: 5 * time.Minute,
	}
}

// sourceState is a source as the admin API shows it.
type sourceState struct {
	Name    string     `json:"name"`
	State   string     `json:"state"`
	Expiry  *time.Time `json:"expiry"`
	RenewAt *time.Time `json:"renew_at"`
}

// sources reads the admin API's list of token sources.
func (in *instance) sources() ([]sourceState, error) {
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get("http://" + in.admin + "/upstream_oauth/sources")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var out []sourceState
	return out, json.NewDecoder(resp.Body).Decode(&out)
}

// renew asks the admin API to renew the sources named name, and waits.
func (in *instance) renew(name string) int {
	client := &http.Client{Timeout: 60 * time.Second}
	resp, err := client.Post("http://"+in.admin+"/upstream_oauth/sources/"+name+"/renew", "application/json", nil)
	if err != nil {
		return 0
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// metric reads a sample of the admin /metrics: the first series of name
// with all of labels ("k", "v" pairs); 0 when there is none.
func (in *instance) metric(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get("http://" + in.admin + "/metrics")
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+"{") {
			continue
		}
		match := true
		for i := 0; i+1 < len(labels); i += 2 {
			match = match && strings.Contains(line, fmt.Sprintf("%s=%q", labels[i], labels[i+1]))
		}
		if match {
			v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
			if err != nil {
				t.Fatalf("metric line %q: %v", line, err)
			}
			return v
		}
	}
	return 0
}

// logLines counts the lines of the instance's log that contain s.
func (in *instance) logLines(s string) int {
	n := 0
	for line := range strings.Lines(in.logText()) {
		if strings.Contains(line, s) {
			n++
		}
	}
	return n
}

// traffic sends GETs to every instance, one after another with pause
// between rounds, until stop is closed; it returns each status's count and
// the longest a request took.
func traffic(fleet []*instance, pause time.Duration, stop <-chan struct{}) (func() (map[int]int, time.Duration), *sync.WaitGroup) {
	var mu sync.Mutex
	statuses := map[int]int{}
	var slowest time.Duration
	var wg sync.WaitGroup
	for _, in := range fleet {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				start := time.Now()
				st := in.get("/traffic")
				took := time.Since(start)
				mu.Lock()
				statuses[st]++
				slowest = max(slowest, took)
				mu.Unlock()
				time.Sleep(pause)
			}
		})
	}
	return func() (map[int]int, time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		out := map[int]int{}
		for k, v := range statuses {
			out[k] = v
		}
		return out, slowest
	}, &wg
}

// onlyOK reports whether statuses holds nothing but 200s.
func onlyOK(statuses map[int]int) bool {
	for st, n := range statuses {
		if st != http.StatusOK && n > 0 {
			return false
		}
	}
	return statuses[http.StatusOK] > 0
}

// TestFleetClockSkew: a record written by an instance whose clock runs an
// hour ahead (forged in the module's own record format: the instance's
// record, read and resealed through the cache package) is trusted for no
// longer than its lifetime from the moment the reader took it, and renewed
// on the reader's clock before the provider lets the token expire; a
// record whose obtained time lies in the future is not trusted past what
// its expiry allows. No expired token is forwarded; the skew is logged
// once.
func TestFleetClockSkew(t *testing.T) {
	const config = `{
	admin %s
	auto_https off
	%s
	log {
		output file %s
		level DEBUG
	}
}
http://%s {
	upstream_oauth 1nce {
		token_url %s
		username client-1nce
		password secret-1nce-Zq8
		refresh_ahead 2s
		renew_on 599
		share
	}
	reverse_proxy %s
}
`
	const lifetime = 6 * time.Second
	for _, kind := range storageKinds {
		for _, c := range []struct {
			name   string
			forge  func(tok *grants.Token)
			taken  bool // the reader takes the forged token
			window time.Duration
		}{
			{"expiry an hour ahead", func(tok *grants.Token) {
				tok.Obtained, tok.Expiry = tok.Obtained.Add(time.Hour), tok.Expiry.Add(time.Hour)
			}, true, 9 * time.Second},
			{"obtained in the future", func(tok *grants.Token) {
				tok.Obtained = tok.Obtained.Add(time.Hour)
			}, false, 4 * time.Second},
		} {
			t.Run(kind+"/"+c.name, func(t *testing.T) {
				store := newTestStore(t, kind)
				p := startProvider(t, emulator.OneNCE)
				p.SetTTL(lifetime)
				tokenURL, times := recordedProvider(t, p)
				b := startBackend(t, p)
				start := func() *instance {
					return launch(t, func(in *instance) string {
						return fmt.Sprintf(config, in.admin, store.option, in.log, in.addr, tokenURL, b.URL())
					})
				}
				writer, reader := start(), start()
				if st := writer.get("/write"); st != http.StatusOK {
					t.Fatalf("writer: status %d", st)
				}
				issued := times()[0]
				sh := store.shared(t, oneNCEConfig(tokenURL, "secret-1nce-Zq8"))
				tok, err := sh.Load(context.Background())
				if err != nil || tok == nil || tok.AccessToken != p.Tokens()[0] {
					t.Fatalf("the test's settings do not open the writer's record at %s (%v): oneNCEConfig must match what the handler resolves", sh.Key(), err)
				}
				c.forge(tok)
				if err := sh.Store(context.Background(), tok); err != nil {
					t.Fatal(err)
				}

				read := time.Now()
				if st := reader.get("/read"); st != http.StatusOK {
					t.Fatalf("reader: status %d", st)
				}
				taken := time.Now() // the reader took the token between read and taken
				srcs, err := reader.sources()
				if err != nil || len(srcs) != 1 || srcs[0].RenewAt == nil {
					t.Fatalf("reader's sources: %v %+v", err, srcs)
				}
				renewAt := *srcs[0].RenewAt
				stop := make(chan struct{})
				result, wg := traffic([]*instance{reader}, 20*time.Millisecond, stop)
				time.Sleep(c.window)
				close(stop)
				wg.Wait()
				statuses, slowest := result()

				if !onlyOK(statuses) || b.Rejected() != 0 {
					t.Errorf("statuses %v, backend refused %d requests: no expired token may be forwarded", statuses, b.Rejected())
				}
				if n := reader.logLines("clock skew"); n != 1 {
					t.Errorf("%d clock skew lines in the reader's log, want 1", n)
				}
				if c.taken {
					if renewAt.Before(read) || renewAt.After(taken.Add(lifetime-2*time.Second)) {
						t.Errorf("renewal scheduled at %v, %v after the read: want within the lifetime less refresh_ahead (4s) of the read", renewAt, renewAt.Sub(read))
					}
				}
				var after []time.Time
				for _, at := range times() {
					if at.After(read) {
						after = append(after, at)
					}
				}
				if len(after) == 0 || !after[0].Before(issued.Add(lifetime)) {
					t.Errorf("token requests after the read %v: the first must come before the forged token expires (%v)", after, issued.Add(lifetime))
				}
				t.Logf("%s, %s: reader statuses %v (slowest %v), backend refused %d, skew lines %d, renewal scheduled %v after the read, token requests after it at %v after issue",
					kind, c.name, statuses, slowest.Round(time.Millisecond), b.Rejected(), reader.logLines("clock skew"),
					renewAt.Sub(read).Round(time.Millisecond), sinceAll(after, issued))
			})
		}
	}
}

// sinceAll lists how long after from each of times came.
func sinceAll(times []time.Time, from time.Time) []string {
	out := make([]string, 0, len(times))
	for _, at := range times {
		out = append(out, at.Sub(from).Round(10*time.Millisecond).String())
	}
	return out
}

// TestFleetSlowProvider: with timeout 40s and a provider that takes 32s
// (longer than a lock wait fixed at 30s), three cold instances make one
// token request between them: the others wait for the holder, which is
// within what it may take, and every client is answered.
func TestFleetSlowProvider(t *testing.T) {
	const config = `{
	admin %s
	auto_https off
	%s
	log {
		output file %s
		level DEBUG
	}
}
http://%s {
	upstream_oauth oneio {
		token_url %s
		client_id client-oneio
		client_secret secret-oneio-Zq8
		timeout 40s
		share
	}
	reverse_proxy %s
}
`
	for _, kind := range storageKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			store := newTestStore(t, kind)
			p := startProvider(t, emulator.ONEiO)
			p.SetSlowDelay(32 * time.Second)
			p.SetMode(emulator.Slow)
			b := startBackend(t, p)
			fleet := launchFleet(t, 3, func(in *instance) string {
				return fmt.Sprintf(config, in.admin, store.option, in.log, in.addr, p.TokenURL(), b.URL())
			})
			client := &http.Client{Timeout: 120 * time.Second}
			var mu sync.Mutex
			statuses := map[int]int{}
			var slowest time.Duration
			var wg sync.WaitGroup
			begin := time.Now()
			for _, in := range fleet {
				for range 3 {
					wg.Go(func() {
						st := getStatus(client, "http://"+in.addr+"/cold")
						mu.Lock()
						statuses[st]++
						slowest = max(slowest, time.Since(begin))
						mu.Unlock()
					})
				}
			}
			wg.Wait()
			if statuses[http.StatusOK] != 9 {
				t.Errorf("statuses %v: every one of the 9 clients must be answered 200", statuses)
			}
			if got := p.MaxInFlight(); got != 1 {
				t.Errorf("%d token requests in flight at once fleet-wide, want 1", got)
			}
			if got := p.TokenRequests(); got != 1 {
				t.Errorf("%d token requests, want 1", got)
			}
			t.Logf("%s: 3 cold instances, provider 32s, timeout 40s: %d token request(s), at most %d in flight, statuses %v, slowest client %v",
				kind, p.TokenRequests(), p.MaxInFlight(), statuses, slowest.Round(100*time.Millisecond))
		})
	}
}

// TestFleetRotatingRefreshTokens: a provider that rotates refresh tokens
// and detects reuse (a second use of one is a violation). The instance
// renewing with the fleet's refresh token is killed after the provider
// redeemed it and before the answer came; the survivors do not replay it.
// Then the storage stops working, and the instances, fetching on their
// own, use only refresh tokens they obtained on their own: no refresh
// token is ever sent twice.
func TestFleetRotatingRefreshTokens(t *testing.T) {
	const config = `{
	admin %s
	auto_https off
	%s
	log {
		output file %s
		level DEBUG
	}
}
http://%s {
	upstream_oauth telenor {
		token_url %s
		client_id client-telenor
		client_secret secret-telenor-Zq8
		username user-telenor
		password password-telenor-Xk3
		logout_url %s
		share
	}
	reverse_proxy %s
}
`
	for _, kind := range storageKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			store := newTestStore(t, kind)
			p := startProvider(t, emulator.Telenor)
			p.SetIssueRefreshTokens(true)
			p.SetTTL(4 * time.Second)
			b := startBackend(t, p)
			start := func() *instance {
				return launch(t, func(in *instance) string {
					return fmt.Sprintf(config, in.admin, store.option, in.log, in.addr, p.TokenURL(), p.LogoutURL(), b.URL())
				})
			}
			a, survivor1, survivor2 := start(), start(), start()
			for _, in := range []*instance{a, survivor1, survivor2} {
				if st := in.get("/warm"); st != http.StatusOK {
					t.Fatalf("warm-up: status %d", st)
				}
			}

			// a renews with the fleet's refresh token; the provider
			// redeems it and the answer is lost; a dies.
			p.SetMode(emulator.LoseAnswer)
			stopA := make(chan struct{})
			_, wgA := traffic([]*instance{a}, 50*time.Millisecond, stopA)
			if !eventually(15*time.Second, func() bool { return p.RefreshGrants() >= 1 }) {
				t.Fatal("the first instance did not renew with the refresh token")
			}
			a.kill()
			close(stopA)
			wgA.Wait()
			p.SetMode(emulator.Up)

			survivors := []*instance{survivor1, survivor2}
			stop := make(chan struct{})
			result, wg := traffic(survivors, 50*time.Millisecond, stop)
			time.Sleep(12 * time.Second) // the dead lock goes stale (Redis 5s, file_system 10s), renewals follow
			afterCrash, _ := result()
			crashReuses := reuses(p)

			// The storage stops working: each survivor fetches on its own.
			restore := store.fail(t)
			grantsBefore := p.RefreshGrants()
			time.Sleep(10 * time.Second) // 4s tokens: two renewals or more each
			restore()
			close(stop)
			wg.Wait()
			statuses, slowest := result()

			if n := reuses(p); n != 0 {
				t.Errorf("%d reused refresh tokens (%d after the crash, %d in the outage): want 0", n, crashReuses, n-crashReuses)
			}
			if !onlyOK(statuses) {
				t.Errorf("statuses %v (after the crash %v): want only 200", statuses, afterCrash)
			}
			if p.RefreshGrants() == grantsBefore {
				t.Errorf("no refresh_token grant during the outage: instances on their own should rotate refresh tokens they obtained themselves")
			}
			t.Logf("%s: reused refresh tokens %d (crash %d, outage %d); refresh grants %d (%d in the outage), token requests %d; statuses %v, slowest %v",
				kind, reuses(p), crashReuses, reuses(p)-crashReuses, p.RefreshGrants(), p.RefreshGrants()-grantsBefore, p.TokenRequests(),
				statuses, slowest.Round(time.Millisecond))
		})
	}
}

// reuses counts the provider's violations for a refresh token used twice,
// and clears nothing: the test's cleanup still fails on them.
func reuses(p *emulator.Provider) int {
	n := 0
	for _, v := range p.Violations() {
		if strings.Contains(v, "already used") {
			n++
		}
	}
	return n
}

// TestFleetUnreadableRecord: a corrupt record, and one sealed by an
// instance with other secrets, are each replaced; the reader logs it once
// (WARN, with the storage key, not the content) and counts each in
// storage_lookups_total as unreadable.
func TestFleetUnreadableRecord(t *testing.T) {
	const config = `{
	admin %s
	auto_https off
	%s
	log {
		output file %s
		level DEBUG
	}
}
http://%s {
	upstream_oauth 1nce {
		token_url %s
		username client-1nce
		password secret-1nce-Zq8
		share
	}
	reverse_proxy %s
}
`
	for _, kind := range storageKinds {
		t.Run(kind, func(t *testing.T) {
			store := newTestStore(t, kind)
			p := startProvider(t, emulator.OneNCE)
			b := startBackend(t, p)
			start := func() *instance {
				return launch(t, func(in *instance) string {
					return fmt.Sprintf(config, in.admin, store.option, in.log, in.addr, p.TokenURL(), b.URL())
				})
			}
			writer := start()
			if st := writer.get("/"); st != http.StatusOK {
				t.Fatalf("writer: status %d", st)
			}
			keys := store.records(t)
			if len(keys) != 1 {
				t.Fatalf("records %q, want 1", keys)
			}
			key := keys[0]
			ctx := context.Background()
			const marker = "corrupt-record-content-7d1"
			if err := store.st.Store(ctx, key, []byte(marker)); err != nil {
				t.Fatal(err)
			}

			reader := start()
			if st := reader.get("/"); st != http.StatusOK {
				t.Fatalf("reader after a corrupt record: status %d", st)
			}
			const unreadable = "caddy_upstream_oauth_storage_lookups_total"
			if got := reader.metric(t, unreadable, "result", "unreadable"); got != 1 {
				t.Errorf("storage_lookups_total{result=unreadable} = %v after a corrupt record, want 1", got)
			}

			// A record sealed with other secrets (same settings otherwise,
			// so the same storage key): unreadable to the reader as well.
			other := store.shared(t, oneNCEConfig(p.TokenURL(), rotatedSecret))
			if other.Key() != key {
				t.Fatalf("the test's settings give key %s, the instances use %s", other.Key(), key)
			}
			now := time.Now()
			if err := other.Store(ctx, &grants.Token{AccessToken: "sealed-by-another-instance", Lifetime: time.Hour, Obtained: now, Expiry: now.Add(time.Hour)}); err != nil {
				t.Fatal(err)
			}
			if st := reader.renew("1nce:client-1nce"); st != http.StatusOK {
				t.Fatalf("renewal through the admin API: %d", st)
			}
			if got := reader.metric(t, unreadable, "result", "unreadable"); got != 2 {
				t.Errorf("storage_lookups_total{result=unreadable} = %v after a second unreadable record, want 2", got)
			}
			logText := reader.logText()
			lines := 0
			for line := range strings.Lines(logText) {
				if strings.Contains(line, "record is unreadable") {
					lines++
					if !strings.Contains(line, `"level":"warn"`) || !strings.Contains(line, key) {
						t.Errorf("log line %q: want WARN with the storage key", line)
					}
				}
			}
			if lines != 1 {
				t.Errorf("%d log lines about unreadable records, want 1 per source", lines)
			}
			if strings.Contains(logText, marker) || strings.Contains(logText, "sealed-by-another-instance") {
				t.Error("the log carries a record's content")
			}
			if tok, err := store.shared(t, oneNCEConfig(p.TokenURL(), "secret-1nce-Zq8")).Load(ctx); err != nil || !p.Valid(tok.AccessToken) {
				t.Errorf("the unreadable record was not replaced by a token of the provider's: %v", err)
			}
			t.Logf("%s: unreadable lookups %v, log lines %d, token requests %d",
				kind, reader.metric(t, unreadable, "result", "unreadable"), lines, p.TokenRequests())
		})
	}
}

// TestFleetStorageDown: the storage stops answering (Redis frozen, the
// file_system directory gone) while two instances serve traffic with 6s
// tokens. Renewals fall back to the instances' own token requests in
// time: no moment without a valid token, so no request waits for the
// storage, and no request fails. The storage is left untried for a while
// after it failed, then probed again: the instances share once it is back.
func TestFleetStorageDown(t *testing.T) {
	const config = `{
	admin %s
	auto_https off
	%s
	log {
		output file %s
		level DEBUG
	}
}
http://%s {
	upstream_oauth 1nce {
		token_url %s
		username client-1nce
		password secret-1nce-Zq8
		share
	}
	reverse_proxy %s
}
`
	for _, kind := range storageKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			store := newTestStore(t, kind)
			p := startProvider(t, emulator.OneNCE)
			p.SetTTL(6 * time.Second)
			b := startBackend(t, p)
			fleet := launchFleet(t, 2, func(in *instance) string {
				return fmt.Sprintf(config, in.admin, store.option, in.log, in.addr, p.TokenURL(), b.URL())
			})
			for _, in := range fleet {
				if st := in.get("/warm"); st != http.StatusOK {
					t.Fatalf("warm-up: status %d", st)
				}
			}
			// Watch the sources: a moment without a valid token is a
			// moment when a request waits.
			var lapses, samples int
			var watchMu sync.Mutex
			stopWatch := make(chan struct{})
			var watch sync.WaitGroup
			for _, in := range fleet {
				watch.Go(func() {
					for {
						select {
						case <-stopWatch:
							return
						case <-time.After(100 * time.Millisecond):
						}
						srcs, err := in.sources()
						now := time.Now()
						watchMu.Lock()
						samples++
						if err != nil || len(srcs) != 1 || srcs[0].Expiry == nil || !srcs[0].Expiry.After(now) {
							lapses++
						}
						watchMu.Unlock()
					}
				})
			}
			stop := make(chan struct{})
			result, wg := traffic(fleet, 50*time.Millisecond, stop)
			time.Sleep(time.Second)
			before := p.TokenRequests()
			restore := store.fail(t)
			time.Sleep(14 * time.Second)
			restore()
			during := p.TokenRequests() - before
			close(stopWatch)
			watch.Wait()
			back := eventually(40*time.Second, func() bool {
				for _, in := range fleet {
					if in.logLines("shared storage is back") == 0 {
						return false
					}
				}
				return true
			})
			close(stop)
			wg.Wait()
			statuses, slowest := result()

			if !onlyOK(statuses) || b.Rejected() != 0 {
				t.Errorf("statuses %v, backend refused %d: want only 200", statuses, b.Rejected())
			}
			if lapses != 0 {
				t.Errorf("%d of %d samples of the sources without a valid token during the outage: renewals must fall back in time", lapses, samples)
			}
			for i, in := range fleet {
				if n := in.logLines("shared storage failed"); n != 1 {
					t.Errorf("instance %d logged the outage %d times, want once", i, n)
				}
			}
			if !back {
				t.Error("the instances did not return to sharing after the storage came back: it must be probed again")
			}
			t.Logf("%s down 14s, 6s tokens, 2 instances: statuses %v, slowest request %v, samples without a valid token %d of %d, token requests during the outage %d, back to sharing: %v",
				kind, statuses, slowest.Round(time.Millisecond), lapses, samples, during, back)
		})
	}
}

// TestFleetStorageKeyNoSecret: two instances with the same settings but
// different secrets (a secret being rotated: the provider accepts both)
// find the same record, since its key holds no secret, and neither can
// read what the other sealed: each replaces it with a token of its own,
// saying so once. The record carries the salt and the Argon2id parameters
// that make every guess at a secret cost a derivation.
func TestFleetStorageKeyNoSecret(t *testing.T) {
	const config = `{
	admin %s
	auto_https off
	%s
	log {
		output file %s
		level DEBUG
	}
}
http://%s {
	upstream_oauth 1nce {
		token_url %s
		username client-1nce
		password %s
		share
	}
	reverse_proxy %s
}
`
	store := newTestStore(t, "file_system")
	oldSecret := startProvider(t, emulator.OneNCE)
	newSecret := startProviderConfig(t, emulator.Config{Kind: emulator.OneNCE, ClientID: "client-1nce", ClientSecret: rotatedSecret})
	// One token endpoint that accepts both secrets: each goes to the
	// emulator configured with it.
	front := startHandler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, pass, _ := r.BasicAuth(); pass == rotatedSecret {
			newSecret.ServeHTTP(w, r)
			return
		}
		oldSecret.ServeHTTP(w, r)
	}))
	tokenURL := front + emulator.OneNCETokenPath
	b := startBackend(t, oldSecret, newSecret)
	start := func(password string) *instance {
		return launch(t, func(in *instance) string {
			return fmt.Sprintf(config, in.admin, store.option, in.log, in.addr, tokenURL, password, b.URL())
		})
	}
	a, c := start("secret-1nce-Zq8"), start(rotatedSecret)
	if st := a.get("/"); st != http.StatusOK {
		t.Fatalf("first instance: status %d", st)
	}
	if st := c.get("/"); st != http.StatusOK {
		t.Fatalf("instance with the other secret: status %d", st)
	}
	keys := store.records(t)
	if len(keys) != 1 {
		t.Errorf("records %q: instances that differ in a secret alone must find one record (a key that depends on the secret is an oracle for it)", keys)
	}
	if oldSecret.TokenRequests() != 1 || newSecret.TokenRequests() != 1 {
		t.Errorf("token requests with each secret: %d, %d; want 1, 1 (neither can read the other's token)",
			oldSecret.TokenRequests(), newSecret.TokenRequests())
	}
	if n := c.logLines("record is unreadable"); n != 1 {
		t.Errorf("the instance with the other secret logged %d unreadable records, want 1", n)
	}
	if len(keys) == 1 {
		data, err := store.st.Load(context.Background(), keys[0])
		if err != nil {
			t.Fatal(err)
		}
		// Record layout (cache/record.go): version 2, Argon2id, time,
		// threads, memory (KiB), 16 bytes of salt.
		if len(data) < 24 || data[0] != 2 || data[1] != 1 || data[2] < 2 || binary.BigEndian.Uint32(data[4:8]) < 19<<10 {
			t.Errorf("record header % x: want version 2, Argon2id with at least 2 passes and 19 MiB", data[:min(len(data), 8)])
		}
		for _, s := range []string{"secret-1nce-Zq8", rotatedSecret, "client-1nce"} {
			if strings.Contains(keys[0], s) || strings.Contains(string(data), s) {
				t.Errorf("the record or its key holds %q", s)
			}
		}
	}
	t.Logf("records %q; token requests with the first secret %d, with the second %d; unreadable lines: first %d, second %d",
		keys, oldSecret.TokenRequests(), newSecret.TokenRequests(), a.logLines("record is unreadable"), c.logLines("record is unreadable"))
}
