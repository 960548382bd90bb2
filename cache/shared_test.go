package cache

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

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

func newShared(t *testing.T, material string, st certmagic.Storage) *Shared {
	t.Helper()
	sh, err := NewShared([]byte(material))
	if err != nil {
		t.Fatal(err)
	}
	sh.Storage = func() certmagic.Storage { return st }
	return sh
}

func TestSharedSealOpen(t *testing.T) {
	a := newShared(t, `{"client_secret":"s3cret-material"}`, nil)
	b := newShared(t, `{"client_secret":"other-material"}`, nil)
	if a.Key() == b.Key() {
		t.Fatal("different credentials share a storage key")
	}
	if strings.Contains(a.Key(), "s3cret") || !strings.HasPrefix(a.Key(), Namespace+"/") {
		t.Errorf("storage key %q", a.Key())
	}
	now := time.Now()
	tok := &grants.Token{AccessToken: "tok-plaintext-value", RefreshToken: "refresh-plaintext", Lifetime: time.Hour, Obtained: now, Expiry: now.Add(time.Hour)}
	data, err := a.seal(tok)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(data), "plaintext") {
		t.Fatal("sealed record holds the token in plaintext")
	}
	got, err := a.open(data)
	if err != nil || got.AccessToken != tok.AccessToken || got.RefreshToken != tok.RefreshToken || !got.Expiry.Equal(tok.Expiry) {
		t.Fatalf("round trip: %v", err)
	}
	if _, err := b.open(data); err == nil {
		t.Error("a source with other credentials decrypted the record")
	}
	tampered := append([]byte(nil), data...)
	tampered[len(tampered)-1] ^= 1
	if _, err := a.open(tampered); err == nil {
		t.Error("a tampered record was accepted")
	}
	if _, err := a.open([]byte("garbage")); err == nil {
		t.Error("garbage was accepted")
	}
}

// TestSharedSourcesOneFetch: sources of several "instances" on one storage
// make one token request between them, cold and concurrent.
func TestSharedSourcesOneFetch(t *testing.T) {
	st := &certmagic.FileStorage{Path: t.TempDir()}
	f := &countingFetcher{lifetime: time.Hour}
	var srcs []*Source
	for range 3 {
		s := New(Options{Name: "fleet", Fetcher: f, Shared: newShared(t, "same-material", st)})
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
// ignored and replaced.
func TestSharedUnreadableRecordReplaced(t *testing.T) {
	st := &certmagic.FileStorage{Path: t.TempDir()}
	sh := newShared(t, "material", st)
	if err := st.Store(context.Background(), sh.Key(), []byte("not a sealed record")); err != nil {
		t.Fatal(err)
	}
	f := &countingFetcher{lifetime: time.Hour}
	s := New(Options{Name: "x", Fetcher: f, Shared: sh})
	defer s.Stop(false)
	if _, err := s.Get(context.Background()); err != nil {
		t.Fatal(err)
	}
	data, err := st.Load(context.Background(), sh.Key())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sh.open(data); err != nil {
		t.Errorf("the unreadable record was not replaced: %v", err)
	}
}

// brokenStorage fails every call, like an unreachable Redis.
type brokenStorage struct{ certmagic.Storage }

var errDown = errors.New("storage is down")

func (brokenStorage) Load(context.Context, string) ([]byte, error) { return nil, errDown }
func (brokenStorage) Lock(context.Context, string) error           { return errDown }

// TestSharedStorageDownFallsBack: a source whose storage fails fetches on
// its own, and shares again once the storage works.
func TestSharedStorageDownFallsBack(t *testing.T) {
	f := &countingFetcher{lifetime: time.Hour}
	sh := newShared(t, "material", brokenStorage{})
	s := New(Options{Name: "x", Fetcher: f, Shared: sh})
	defer s.Stop(false)
	tok, err := s.Get(context.Background())
	if err != nil || tok == nil {
		t.Fatalf("with the storage down: %v", err)
	}
	if !sh.degraded {
		t.Error("the outage was not noted")
	}
	st := &certmagic.FileStorage{Path: t.TempDir()}
	sh.Storage = func() certmagic.Storage { return st }
	if !s.Retire(tok) {
		t.Fatal("retire")
	}
	if _, err := s.Get(context.Background()); err != nil {
		t.Fatal(err)
	}
	if sh.degraded {
		t.Error("the storage's return was not noted")
	}
	if _, err := st.Load(context.Background(), sh.Key()); err != nil {
		t.Errorf("no token stored after the storage came back: %v", err)
	}
}
