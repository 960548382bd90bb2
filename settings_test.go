package upstreamoauth

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"

	"github.com/caddy-upstream-oauth/upstream_oauth/grants"
)

// TestSettingsIssuer: without token_url, issuer names the source (its host,
// then the client id) and the admin API's description; a token_url in the
// block wins over issuer, and issuer over a preset's token_url.
func TestSettingsIssuer(t *testing.T) {
	for _, tc := range []struct {
		name                      string
		h                         Handler
		tokenURL, issuer, srcName string
	}{
		{"issuer alone", Handler{Issuer: "https://idp.example.com/realms/acme", ClientID: "gw", ClientSecret: "s"},
			"", "https://idp.example.com/realms/acme", "idp.example.com:gw"},
		{"token_url wins", Handler{Issuer: "https://idp.example.com", TokenURL: "https://idp.example.com/token", ClientID: "gw", ClientSecret: "s"},
			"https://idp.example.com/token", "", "idp.example.com:gw"},
		{"issuer over preset", Handler{Provider: "oneio", Issuer: "https://idp.example.com", ClientID: "gw", ClientSecret: "s"},
			"", "https://idp.example.com", "oneio:gw"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := tc.h.settings(caddy.NewReplacer())
			if err != nil {
				t.Fatal(err)
			}
			info := describe(s)
			if s.Grants.TokenURL != tc.tokenURL || info.Issuer != tc.issuer || s.Name != tc.srcName {
				t.Errorf("token_url %q, shown issuer %q, name %q; want %q, %q, %q", s.Grants.TokenURL, info.Issuer, s.Name, tc.tokenURL, tc.issuer, tc.srcName)
			}
		})
	}
}

// TestSettingsKeyFollowsKeyFile: the source key changes when the content of
// the assertion key file changes (so that a reload after a key rotation
// makes a source that reads the new key), and not otherwise.
func TestSettingsKeyFollowsKeyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "key.pem")
	writeKey := func() {
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		der, _ := x509.MarshalPKCS8PrivateKey(k)
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	h := Handler{TokenURL: "https://idp.example.com/token", ClientID: "gw", ClientAuth: "private_key_jwt", Assertion: &Assertion{Key: path}}
	key := func() string {
		s, err := h.settings(caddy.NewReplacer())
		if err != nil {
			t.Fatal(err)
		}
		s.digestFiles()
		return s.key()
	}
	writeKey()
	first := key()
	if again := key(); again != first {
		t.Errorf("the same key file gave two source keys")
	}
	writeKey()
	if rotated := key(); rotated == first {
		t.Errorf("a new key in the same file kept the source key: a reload would keep signing with the old key")
	}
}

// writeKeyPair writes a new Ed25519 key and a self-signed certificate of it
// to keyPath and certPath.
func writeKeyPair(t *testing.T, keyPath, certPath string) {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKCS8PrivateKey(k)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "gw"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	cert, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
	if err != nil {
		t.Fatal(err)
	}
	for path, block := range map[string]*pem.Block{keyPath: {Type: "PRIVATE KEY", Bytes: der}, certPath: {Type: "CERTIFICATE", Bytes: cert}} {
		if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// TestShareKeyedByTheKey: with share, the record of a private_key_jwt or
// tls_client_auth source is encrypted with the key's content, not only its
// path (the config holds no other secret): a source with another key in
// the same file finds the same record (its storage key holds no secret)
// and cannot read it.
func TestShareKeyedByTheKey(t *testing.T) {
	if err := benchConfigOnce(); err != nil { // a running config, for the context
		t.Fatal(err)
	}
	ctx, cancel := caddy.NewContext(caddy.ActiveContext())
	t.Cleanup(cancel)
	dir := t.TempDir()
	keyPath, certPath := filepath.Join(dir, "key.pem"), filepath.Join(dir, "cert.pem")
	store := &certmagic.FileStorage{Path: t.TempDir()}
	for _, h := range []Handler{
		{TokenURL: "https://idp.example.com/token", ClientID: "gw", ClientAuth: "private_key_jwt", Share: true, Assertion: &Assertion{Key: keyPath}},
		{TokenURL: "https://idp.example.com/token", ClientID: "gw", ClientAuth: "tls_client_auth", Share: true, TLS: &TLS{ClientCert: certPath, ClientKey: keyPath}},
	} {
		t.Run(h.ClientAuth, func(t *testing.T) {
			source := func() *pooledSource {
				writeKeyPair(t, keyPath, certPath)
				s, err := h.settings(caddy.NewReplacer())
				if err != nil {
					t.Fatal(err)
				}
				s.digestFiles()
				p, err := newPooledSource(ctx, s)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = p.Destruct() })
				p.shared.Storage = func() certmagic.Storage { return store }
				return p
			}
			a, b := source(), source()
			if a.shared.Key() != b.shared.Key() {
				t.Errorf("the storage key depends on the key file's content: it must come from no secret")
			}
			now := time.Now()
			tok := &grants.Token{AccessToken: "share-keyed-token", Lifetime: time.Hour, Obtained: now, Expiry: now.Add(time.Hour)}
			if err := a.shared.Store(context.Background(), tok); err != nil {
				t.Fatal(err)
			}
			if got, err := b.shared.Load(context.Background()); err == nil && got != nil {
				t.Errorf("a source with another key in the same file read the record: anyone who knows the config could read the token")
			}
			if got, err := a.shared.Load(context.Background()); err != nil || got == nil || got.AccessToken != tok.AccessToken {
				t.Errorf("the source that wrote the record cannot read it: %v", err)
			}
		})
	}
}

// TestSchemeCaseOneSource: handlers whose token settings differ only in the
// case of the token_type they expect (Bearer, the default header's scheme;
// bearer, a bare custom header's) share one source and one token.
func TestSchemeCaseOneSource(t *testing.T) {
	a := &Handler{Name: "scheme-case"}
	n := provisionTest(t, a)
	ctx, cancel := caddy.NewContext(caddy.ActiveContext())
	defer cancel()
	b := &Handler{Name: "scheme-case", Header: "X-Token", TokenURL: a.TokenURL, ClientID: a.ClientID, ClientSecret: a.ClientSecret}
	if err := b.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = b.Cleanup() }()
	for _, h := range []*Handler{a, b} {
		if err := h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/", nil), okNext); err != nil {
			t.Fatal(err)
		}
	}
	if a.src != b.src || n.Load() != 1 {
		t.Errorf("same token settings (header Authorization with scheme Bearer, and header X-Token): "+
			"%d token requests, same source %v; handlers with the same token settings share one token source", n.Load(), a.src == b.src)
	}
}
