package cache

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddy-upstream-oauth/upstream_oauth/grants"
)

// countingFetcher issues numbered tokens and counts its calls.
type countingFetcher struct {
	calls    atomic.Int64
	lifetime time.Duration
}

func (f *countingFetcher) Token(context.Context) (*grants.Token, error) {
	n := f.calls.Add(1)
	now := time.Now()
	return &grants.Token{
		AccessToken: fmt.Sprintf("shared-access-token-%d-%d", n, now.UnixNano()),
		Lifetime:    f.lifetime, Obtained: now, Expiry: now.Add(f.lifetime),
	}, nil
}

func (f *countingFetcher) Refresh(ctx context.Context, _ string) (*grants.Token, error) {
	return f.Token(ctx)
}

// testConfig is a token configuration with secrets; each test varies it.
func testConfig() grants.Config {
	return grants.Config{
		TokenURL: "https://idp.example/token", Grant: grants.Password,
		ClientID: "gateway", ClientSecret: "client-secret-Qx7",
		Username: "owner", Password: "owner-password-Vb2",
		ClientAuth: grants.AuthBasic, Body: grants.BodyForm,
		Scopes: []string{"read"}, Params: map[string]string{"resource": "api"},
		Headers:   map[string]string{"X-Api-Key": "header-secret-Lm4"},
		TokenType: "Bearer", DefaultTTL: 5 * time.Minute,
	}
}

func newShared(t *testing.T, cfg grants.Config, st certmagic.Storage) *Shared {
	t.Helper()
	sh, err := NewShared(cfg)
	if err != nil {
		t.Fatal(err)
	}
	sh.Storage = func() certmagic.Storage { return st }
	return sh
}

func testToken(lifetime time.Duration) *grants.Token {
	now := time.Now()
	return &grants.Token{AccessToken: "tok-plaintext-value", RefreshToken: "refresh-plaintext", Lifetime: lifetime, Obtained: now, Expiry: now.Add(lifetime)}
}

// observed is a logger whose lines the test reads.
func observed() (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zap.DebugLevel)
	return zap.New(core), logs
}

func TestSharedSealOpen(t *testing.T) {
	ctx := context.Background()
	a := newShared(t, testConfig(), nil)
	other := testConfig()
	other.Password = "another-password"
	b := newShared(t, other, nil)
	tok := testToken(time.Hour)
	data, err := a.seal(ctx, tok)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(data), "plaintext") {
		t.Fatal("sealed record holds the token in plaintext")
	}
	got, err := a.open(ctx, data)
	if err != nil || got.AccessToken != tok.AccessToken || got.RefreshToken != tok.RefreshToken || !got.Expiry.Equal(tok.Expiry) {
		t.Fatalf("round trip: %v", err)
	}
	if _, err := b.open(ctx, data); !errors.Is(err, errUnreadable) {
		t.Errorf("a source with other secrets read the record: %v", err)
	}
	for name, mutate := range map[string]func([]byte){
		"tag":        func(d []byte) { d[len(d)-1] ^= 1 },
		"salt":       func(d []byte) { d[10] ^= 1 },
		"parameters": func(d []byte) { d[2]++ },
		"version":    func(d []byte) { d[0] = 1 },
	} {
		tampered := append([]byte(nil), data...)
		mutate(tampered)
		if _, err := a.open(ctx, tampered); !errors.Is(err, errUnreadable) {
			t.Errorf("a record with its %s changed was accepted: %v", name, err)
		}
	}
	if _, err := a.open(ctx, []byte("garbage")); !errors.Is(err, errUnreadable) {
		t.Error("garbage was accepted")
	}
	huge := append([]byte(nil), data...)
	binary.BigEndian.PutUint32(huge[4:8], 4<<20) // 4 GiB
	before := derivations.Load()
	if _, err := a.open(ctx, huge); !errors.Is(err, errUnreadable) || derivations.Load() != before {
		t.Errorf("a record asking for a 4 GiB derivation: %v, %d derivations", err, derivations.Load()-before)
	}
}

// TestSharedKeyNoSecret: the storage key and the lock name depend on the
// settings that identify the token and on no secret: two configurations
// that differ in a secret alone find the same record, so its name is no
// oracle for a guess at a secret; those that differ in what identifies the
// token find different ones.
func TestSharedKeyNoSecret(t *testing.T) {
	base := newShared(t, testConfig(), nil)
	for name, change := range map[string]func(*grants.Config){
		"client_secret":      func(c *grants.Config) { c.ClientSecret = "guess-1" },
		"password":           func(c *grants.Config) { c.Password = "guess-2" },
		"token_header value": func(c *grants.Config) { c.Headers = map[string]string{"X-Api-Key": "guess-3"} },
	} {
		c := testConfig()
		change(&c)
		if sh := newShared(t, c, nil); sh.Key() != base.Key() || sh.lock != base.lock {
			t.Errorf("a different %s gives another storage key or lock: the name depends on the secret", name)
		}
	}
	for name, change := range map[string]func(*grants.Config){
		"token_url":         func(c *grants.Config) { c.TokenURL = "https://other.example/token" },
		"client_id":         func(c *grants.Config) { c.ClientID = "other" },
		"username":          func(c *grants.Config) { c.Username = "other" },
		"scope":             func(c *grants.Config) { c.Scopes = []string{"write"} },
		"audience":          func(c *grants.Config) { c.Audience = "other" },
		"param value":       func(c *grants.Config) { c.Params = map[string]string{"resource": "other"} },
		"token_header name": func(c *grants.Config) { c.Headers = map[string]string{"X-Other": "header-secret-Lm4"} },
		"grant":             func(c *grants.Config) { c.Grant = grants.ClientCredentials },
	} {
		c := testConfig()
		change(&c)
		if sh := newShared(t, c, nil); sh.Key() == base.Key() || sh.lock == base.lock {
			t.Errorf("a different %s shares the storage key: two tokens would share one record", name)
		}
	}
	for _, secret := range []string{"client-secret-Qx7", "owner-password-Vb2", "header-secret-Lm4"} {
		if strings.Contains(base.Key(), secret) || strings.Contains(base.lock, secret) {
			t.Errorf("storage key %q or lock names a secret", base.Key())
		}
	}
	if !strings.HasPrefix(base.Key(), Namespace+"/") {
		t.Errorf("storage key %q is outside %s", base.Key(), Namespace)
	}
}

// TestIdentityCoversConfig: every field of grants.Config is either part of
// the identity (the storage key) or known to be kept out of it, so that a
// field added later is classified on purpose, and a secret never slips
// into the fast hash.
func TestIdentityCoversConfig(t *testing.T) {
	inIdentity := map[string]bool{}
	it := reflect.TypeFor[identity]()
	for i := range it.NumField() {
		inIdentity[it.Field(i).Name] = true
	}
	keptOut := map[string]string{
		"ClientSecret": "secret",
		"Password":     "secret",
		"Headers":      "values may be secrets: only the names (HeaderNames) are in",
		"AllowHTTP":    "does not change the token",
		"Assertion":    "how the client proves itself, not whose token it is; the key's digest is encryption material (NewShared's secrets)",
	}
	ct := reflect.TypeFor[grants.Config]()
	for i := range ct.NumField() {
		name := ct.Field(i).Name
		if !inIdentity[name] && keptOut[name] == "" {
			t.Errorf("grants.Config.%s is neither in the storage identity nor kept out of it on purpose: classify it in cache/record.go (a secret must stay out)", name)
		}
	}
}

// TestSharedRecordKDF: the record carries a random salt and the Argon2id
// parameters it was sealed with, at least OWASP's 19 MiB and 2 passes;
// testing a guessed secret against it costs one derivation per guess; the
// source that wrote it derives nothing more to renew, and a source that
// reads a record with another salt derives once, then keeps the key.
func TestSharedRecordKDF(t *testing.T) {
	ctx := context.Background()
	st := &certmagic.FileStorage{Path: t.TempDir()}
	a := newShared(t, testConfig(), st)
	if err := a.Store(ctx, testToken(time.Hour)); err != nil {
		t.Fatal(err)
	}
	data, err := st.Load(ctx, a.Key())
	if err != nil {
		t.Fatal(err)
	}
	if data[0] != recordVersion || data[1] != kdfArgon2id {
		t.Fatalf("record version %d, key derivation %d: want %d, Argon2id", data[0], data[1], recordVersion)
	}
	if time, mem := data[2], binary.BigEndian.Uint32(data[4:8]); time < 2 || mem < 19<<10 {
		t.Errorf("Argon2id time %d, memory %d KiB: want at least 2 and 19 MiB", time, mem)
	}
	salt := string(data[8:headerSize])
	if salt == strings.Repeat("\x00", saltSize) {
		t.Error("the salt is zero")
	}

	// Renewals by the writer: no derivation.
	before := derivations.Load()
	for range 5 {
		if err := a.Store(ctx, testToken(time.Hour)); err != nil {
			t.Fatal(err)
		}
		if _, err := a.Load(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n := derivations.Load() - before; n != 0 {
		t.Errorf("5 renewals by the writer ran %d key derivations, want 0", n)
	}
	if d, _ := st.Load(ctx, a.Key()); string(d[8:headerSize]) != salt {
		t.Error("the writer changed its salt between renewals")
	}

	// Another instance with the same secrets: one derivation, then none.
	b := newShared(t, testConfig(), st)
	before = derivations.Load()
	for range 3 {
		if tok, err := b.Load(ctx); err != nil || tok == nil {
			t.Fatalf("another instance reading the record: %v", err)
		}
	}
	if err := b.Store(ctx, testToken(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if n := derivations.Load() - before; n != 1 {
		t.Errorf("another instance reading 3 times and writing once ran %d derivations, want 1", n)
	}
	if d, _ := st.Load(ctx, b.Key()); string(d[8:headerSize]) != salt {
		t.Error("the second instance did not keep the fleet's salt")
	}

	// An attacker who can read the storage and knows every non-secret
	// setting tests guesses: each costs a derivation.
	before = derivations.Load()
	const guesses = 3
	for i := range guesses {
		guess := testConfig()
		guess.Password = fmt.Sprintf("guess-%d", i)
		g := newShared(t, guess, st)
		if g.Key() != a.Key() {
			t.Fatal("a guess finds another record")
		}
		if _, err := g.Load(ctx); !errors.Is(err, errUnreadable) {
			t.Fatalf("a wrong guess opened the record: %v", err)
		}
	}
	if n := derivations.Load() - before; n != guesses {
		t.Errorf("%d guesses ran %d derivations: a guess must cost one", guesses, n)
	}
	if fresh := newShared(t, testConfig(), nil); true {
		d2, err := fresh.seal(ctx, testToken(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		if string(d2[8:headerSize]) == salt {
			t.Error("two sources that read no record chose the same salt")
		}
	}
}

// TestDerivationsBounded: however many sources derive at once, at most
// maxDerivations run together.
func TestDerivationsBounded(t *testing.T) {
	var wg sync.WaitGroup
	var running, peak atomic.Int64
	for i := range 6 {
		wg.Go(func() {
			c := testConfig()
			c.ClientID = fmt.Sprint("client-", i)
			sh := newShared(t, c, nil)
			// Watch the slots while deriving.
			stop := make(chan struct{})
			go func() {
				for {
					select {
					case <-stop:
						return
					default:
						n := int64(len(derivationSlots))
						running.Store(n)
						for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
						}
						time.Sleep(time.Millisecond)
					}
				}
			}()
			if _, err := sh.seal(context.Background(), testToken(time.Hour)); err != nil {
				t.Error(err)
			}
			close(stop)
		})
	}
	wg.Wait()
	if p := peak.Load(); p > maxDerivations || p == 0 {
		t.Errorf("peak derivations at once %d, want 1..%d", p, maxDerivations)
	}
}

// TestSharedSourcesOneFetch: sources of several "instances" on one storage
// make one token request between them, cold and concurrent.
func TestSharedSourcesOneFetch(t *testing.T) {
	st := &certmagic.FileStorage{Path: t.TempDir()}
	f := &countingFetcher{lifetime: time.Hour}
	var srcs []*Source
	for range 3 {
		s := New(Options{Name: "fleet", Fetcher: f, Shared: newShared(t, testConfig(), st)})
		t.Cleanup(func() { s.Stop(false) })
		srcs = append(srcs, s)
	}
	var wg sync.WaitGroup
	tokens := make(chan string, 30)
	for _, s := range srcs {
		for range 10 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				tok, err := s.Get(context.Background())
				if err != nil {
					t.Error(err)
					return
				}
				tokens <- tok.AccessToken
			}()
		}
	}
	wg.Wait()
	close(tokens)
	distinct := map[string]bool{}
	for tok := range tokens {
		distinct[tok] = true
	}
	if n := f.calls.Load(); n != 1 || len(distinct) != 1 {
		t.Errorf("3 sharing sources: %d fetches, %d distinct tokens; want 1, 1", n, len(distinct))
	}
}

// TestSharedUnreadableRecordReplaced: a record that does not decrypt is
// logged once per source (with its key, not its content), counted as
// unreadable, and replaced.
func TestSharedUnreadableRecordReplaced(t *testing.T) {
	ctx := context.Background()
	st := &certmagic.FileStorage{Path: t.TempDir()}
	sh := newShared(t, testConfig(), st)
	var lookups []Lookup
	var mu sync.Mutex
	sh.OnLookup = func(l Lookup) { mu.Lock(); lookups = append(lookups, l); mu.Unlock() }
	log, logs := observed()
	f := &countingFetcher{lifetime: time.Hour}
	s := newSource(t, Options{Name: "x", Fetcher: f, Shared: sh, Logger: log})
	for range 2 {
		if err := st.Store(ctx, sh.Key(), []byte("not a sealed record, content-marker")); err != nil {
			t.Fatal(err)
		}
		if err := s.Renew(ctx); err != nil {
			t.Fatal(err)
		}
		if tok, err := sh.Load(ctx); err != nil || tok == nil {
			t.Errorf("the unreadable record was not replaced: %v", err)
		}
	}
	lines := logs.FilterMessageSnippet("unreadable").All()
	if len(lines) != 1 {
		t.Fatalf("%d log lines about the unreadable record, want 1 per source", len(lines))
	}
	if lines[0].Level != zap.WarnLevel || lines[0].ContextMap()["key"] != sh.Key() {
		t.Errorf("log line %v %v: want WARN with the storage key", lines[0].Level, lines[0].ContextMap())
	}
	for _, l := range logs.All() {
		if strings.Contains(fmt.Sprint(l.ContextMap()), "content-marker") {
			t.Error("a log line carries the record's content")
		}
	}
	if fmt.Sprint(lookups) != "[unreadable unreadable]" {
		t.Errorf("lookups %v, want [unreadable unreadable]", lookups)
	}
}

// TestSharedClockSkew: a token from a record whose writer's clock runs
// ahead is trusted for no longer than its lifetime from the read, its
// renewal scheduled from then; a record whose obtained time lies in the
// future is not trusted past what its expiry allows; the skew is logged
// once.
func TestSharedClockSkew(t *testing.T) {
	ctx := context.Background()
	const lifetime = 10 * time.Minute
	for _, c := range []struct {
		name     string
		obtained time.Duration // from now, by the writer's clock
		expiry   time.Duration
		taken    bool
	}{
		{"expiry far ahead", time.Hour, time.Hour + lifetime, true},
		{"obtained in the future", time.Hour, lifetime, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			st := &certmagic.FileStorage{Path: t.TempDir()}
			sh := newShared(t, testConfig(), st)
			now := time.Now()
			forged := &grants.Token{AccessToken: "forged-access", Lifetime: lifetime,
				Obtained: now.Add(c.obtained), Expiry: now.Add(c.expiry)}
			if err := sh.Store(ctx, forged); err != nil {
				t.Fatal(err)
			}
			log, logs := observed()
			f := &countingFetcher{lifetime: lifetime}
			s := newSource(t, Options{Name: "x", Fetcher: f, Shared: sh, Logger: log})
			tok, err := s.Get(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if c.taken != (tok.AccessToken == "forged-access") {
				t.Fatalf("forged record taken: %v, want %v", tok.AccessToken == "forged-access", c.taken)
			}
			if limit := time.Now().Add(lifetime); tok.Expiry.After(limit) {
				t.Errorf("token trusted until %v, past its lifetime from the read (%v)", tok.Expiry, limit)
			}
			if st := s.Status(); st.RenewAt == nil || st.RenewAt.After(time.Now().Add(lifetime)) {
				t.Errorf("renewal at %v, want within the lifetime from the read", st.RenewAt)
			}
			if c.taken && f.calls.Load() != 0 {
				t.Errorf("%d token requests, want 0", f.calls.Load())
			}
			if err := s.Renew(ctx); err != nil { // reads the record again
				t.Fatal(err)
			}
			lines := logs.FilterMessageSnippet("clock skew").All()
			if len(lines) != 1 {
				t.Fatalf("%d clock skew lines, want 1", len(lines))
			}
			if skew, _ := lines[0].ContextMap()["skew"].(time.Duration); skew < 59*time.Minute {
				t.Errorf("skew logged as %v, want about 1h", skew)
			}
		})
	}
}

// TestSharedRefreshTokenClaimed: the instance that redeems the fleet's
// refresh token first stores the record without it, so that when it dies
// mid-request the next instance does not replay it; a refresh token that
// came through the storage is never used by an instance fetching on its
// own.
func TestSharedRefreshTokenClaimed(t *testing.T) {
	ctx := context.Background()
	st := &certmagic.FileStorage{Path: t.TempDir()}
	f := newFake(time.Hour)
	f.setIssueRefresh(true)
	a := newSource(t, Options{Name: "a", Fetcher: f, Shared: newShared(t, testConfig(), st)})
	if _, err := a.Get(ctx); err != nil { // secret-access-1, secret-refresh-1, stored
		t.Fatal(err)
	}
	// b takes the token from storage, then renews: it redeems the stored
	// refresh token and dies before it has the answer.
	b := newSource(t, Options{Name: "b", Fetcher: f, Shared: newShared(t, testConfig(), st)})
	if _, err := b.Get(ctx); err != nil {
		t.Fatal(err)
	}
	f.setRefreshErr(context.Canceled)
	f.setTokenErr(context.Canceled)
	_ = b.Renew(ctx)
	f.setRefreshErr(nil)
	f.setTokenErr(nil)
	// c takes the token from storage, then renews.
	c := newSource(t, Options{Name: "c", Fetcher: f, Shared: newShared(t, testConfig(), st)})
	if _, err := c.Get(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Renew(ctx); err != nil {
		t.Fatal(err)
	}
	used := map[string]int{}
	for _, call := range f.history() {
		if call.kind == "refresh" {
			used[call.refreshToken]++
		}
	}
	if used["secret-refresh-1"] != 1 || len(used) != 1 {
		t.Errorf("refresh tokens used %v, want secret-refresh-1 once (by b), no other", used)
	}

	// The storage goes down: c's refresh token went through the storage
	// (c stored it), so on its own c uses the configured grant; then the
	// refresh token it obtained on its own, and never stored.
	c.opts.Shared.Storage = func() certmagic.Storage { return brokenStorage{} }
	before := f.refreshes.Load()
	if err := c.Renew(ctx); err != nil {
		t.Fatal(err)
	}
	if f.refreshes.Load() != before {
		t.Error("with the storage down, a refresh token that went through the storage was used")
	}
	if err := c.Renew(ctx); err != nil {
		t.Fatal(err)
	}
	if f.refreshes.Load() != before+1 {
		t.Error("a refresh token obtained on its own and never stored was not used")
	}
}

// brokenStorage fails every call, like an unreachable Redis.
type brokenStorage struct{ certmagic.Storage }

var errDown = errors.New("storage is down")

func (brokenStorage) Load(context.Context, string) ([]byte, error) { return nil, errDown }
func (brokenStorage) Lock(context.Context, string) error           { return errDown }

// countingStorage counts the calls to an inner storage.
type countingStorage struct {
	certmagic.Storage
	loads atomic.Int64
}

func (c *countingStorage) Load(ctx context.Context, key string) ([]byte, error) {
	c.loads.Add(1)
	return c.Storage.Load(ctx, key)
}

// hangingStorage never answers a Load, and ignores its context, like a
// file_system on a mount that hangs.
type hangingStorage struct {
	certmagic.Storage
	release chan struct{}
}

func (h hangingStorage) Load(context.Context, string) ([]byte, error) {
	<-h.release
	return nil, errDown
}

// TestSharedStorageDownFallsBack: a source whose storage fails fetches on
// its own, leaves the storage untried for a while instead of paying for it
// on every renewal, and shares again once the storage works.
func TestSharedStorageDownFallsBack(t *testing.T) {
	f := &countingFetcher{lifetime: time.Hour}
	down := &countingStorage{Storage: brokenStorage{}}
	sh := newShared(t, testConfig(), down)
	s := newSource(t, Options{Name: "x", Fetcher: f, Shared: sh})
	tok, err := s.Get(context.Background())
	if err != nil || tok == nil {
		t.Fatalf("with the storage down: %v", err)
	}
	if sh.downFor == 0 || !sh.isDown(time.Now()) {
		t.Error("the outage was not noted")
	}
	for range 3 {
		if err := s.Renew(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if n := down.loads.Load(); n != 1 {
		t.Errorf("4 token requests with the storage down tried it %d times, want 1 (then remembered)", n)
	}
	st := &certmagic.FileStorage{Path: t.TempDir()}
	sh.Storage = func() certmagic.Storage { return st }
	sh.mu.Lock()
	sh.downUntil = time.Now() // the memory ends: the next renewal probes
	sh.mu.Unlock()
	if err := s.Renew(context.Background()); err != nil {
		t.Fatal(err)
	}
	if sh.downFor != 0 {
		t.Error("the storage's return was not noted")
	}
	if _, err := st.Load(context.Background(), sh.Key()); err != nil {
		t.Errorf("no token stored after the storage came back: %v", err)
	}
	// The memory doubles with failures in a row, up to downMax.
	for range 10 {
		sh.fail(s, "test", errDown)
	}
	if sh.downFor != downMax {
		t.Errorf("after 10 failures in a row the storage is left untried %v, want %v", sh.downFor, downMax)
	}
}

// TestSharedHangingStorage: a storage call that does not return is given
// up on within the step bound, a renewal while the token is still valid
// falls back to a request of its own before the token expires, and no
// second call is made while the first hangs.
func TestSharedHangingStorage(t *testing.T) {
	h := hangingStorage{release: make(chan struct{})}
	defer close(h.release)
	f := &countingFetcher{lifetime: 2 * time.Second}
	sh := newShared(t, testConfig(), h)
	s := newSource(t, Options{Name: "x", Fetcher: f, Shared: sh})
	tok, err := s.Get(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if sh.hung.Load() != 1 {
		t.Errorf("%d storage calls given up on, want 1", sh.hung.Load())
	}
	// A renewal with the token valid for 2s: the step is bounded by a
	// quarter of that.
	if d := s.stepBound(sh, tok.Expiry); d > 500*time.Millisecond {
		t.Errorf("step bound %v with 2s left, want at most a quarter", d)
	}
	sh.mu.Lock()
	sh.downUntil = time.Time{}
	sh.mu.Unlock()
	if err := s.Renew(context.Background()); err != nil {
		t.Fatal(err)
	}
	if sh.hung.Load() != 1 {
		t.Errorf("a second call was made while the first hangs: %d hung", sh.hung.Load())
	}
}

// TestLockWait: the wait for the lock covers what a holder may take.
func TestLockWait(t *testing.T) {
	s := newSource(t, Options{Name: "x", Fetcher: newFake(time.Hour), Timeout: 40 * time.Second})
	sh := newShared(t, testConfig(), nil)
	if got, want := s.lockWait(sh), 2*40*time.Second+5*DefaultStepTimeout+staleLock; got != want {
		t.Errorf("lock wait %v, want %v", got, want)
	}
}

// TestSharedCallAnswers: a storage call that answers in time is never taken
// for one given up on, however close its answer comes to its context's end.
func TestSharedCallAnswers(t *testing.T) {
	sh := newShared(t, testConfig(), nil)
	for i := range 5000 {
		if err := sh.call(context.Background(), time.Second, func(context.Context) error { return nil }); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	if n := sh.hung.Load(); n != 0 {
		t.Errorf("%d calls counted as hanging", n)
	}
}
