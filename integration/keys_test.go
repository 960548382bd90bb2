package integration

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-upstream-oauth/upstream_oauth/integration/emulator"
)

// Client authentication with keys: private_key_jwt, client_secret_jwt and
// tls_client_auth against the IdP emulator, which verifies every assertion
// with the standard library, and issuer discovery. Keys are made here, at
// run time, and written to the test's temporary directory.

const keysClient = "gateway-client"

// Keys shared by the tests of one process (RSA generation is slow under
// -race); each test writes them to files of its own.
var (
	keysRSA  = sync.OnceValue(func() *rsa.PrivateKey { return must(rsa.GenerateKey(rand.Reader, 2048)) })
	keysRSA2 = sync.OnceValue(func() *rsa.PrivateKey { return must(rsa.GenerateKey(rand.Reader, 2048)) })
	keysP256 = sync.OnceValue(func() *ecdsa.PrivateKey { return must(ecdsa.GenerateKey(elliptic.P256(), rand.Reader)) })
	keysP384 = sync.OnceValue(func() *ecdsa.PrivateKey { return must(ecdsa.GenerateKey(elliptic.P384(), rand.Reader)) })
	keysEd   = sync.OnceValue(func() ed25519.PrivateKey {
		_, k, err := ed25519.GenerateKey(rand.Reader)
		return must(k, err)
	})
)

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// keyFile writes key as PEM in format (pkcs8, pkcs1 or sec1) to a new file
// and registers its lines with the leak check.
func keyFile(t *testing.T, format string, key crypto.Signer) string {
	t.Helper()
	var block *pem.Block
	switch format {
	case "pkcs1":
		block = &pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key.(*rsa.PrivateKey))}
	case "sec1":
		block = &pem.Block{Type: "EC PRIVATE KEY", Bytes: must(x509.MarshalECPrivateKey(key.(*ecdsa.PrivateKey)))}
	default:
		block = &pem.Block{Type: "PRIVATE KEY", Bytes: must(x509.MarshalPKCS8PrivateKey(key))}
	}
	// Not *.key nor *.crt: caddytest rewrites paths of those names.
	return writeSecretPEM(t, "client-"+format+"-key.pem", pem.EncodeToMemory(block))
}

// writeSecretPEM writes data to a new file and registers its base64 lines
// with the leak check.
func writeSecretPEM(t *testing.T, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	providersMu.Lock()
	runtimeSecrets = append(runtimeSecrets, pemLines(data)...)
	providersMu.Unlock()
	return path
}

// pemLines are the base64 lines of PEM data.
func pemLines(data []byte) []string {
	var out []string
	for line := range strings.SplitSeq(string(data), "\n") {
		if line = strings.TrimSpace(line); len(line) >= 16 && !strings.HasPrefix(line, "-----") && !strings.Contains(line, ":") {
			out = append(out, line)
		}
	}
	return out
}

// holdsKeyMaterial reports whether text holds 16 characters of a line of
// any of the PEM files.
func holdsKeyMaterial(text string, files ...string) bool {
	for _, f := range files {
		data, _ := os.ReadFile(f)
		for _, line := range pemLines(data) {
			for i := 0; i+16 <= len(line); i += 8 {
				if strings.Contains(text, line[i:i+16]) {
					return true
				}
			}
		}
	}
	return false
}

// certFile makes a self-signed certificate for key (as Entra ID takes one)
// and writes it.
func certFile(t *testing.T, key crypto.Signer) (string, *x509.Certificate) {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(42),
		Subject:      pkix.Name{CommonName: "upstream_oauth gateway"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
	}
	der := must(x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key))
	return writePEM(t, t.TempDir(), "client-cert.pem", "CERTIFICATE", der), must(x509.ParseCertificate(der))
}

// startIdP starts an IdP emulator over plain HTTP on loopback; at the end
// of the test it must have seen no violation (logged either way, so that
// -v shows the count).
func startIdP(t *testing.T, cfg emulator.IdPConfig) *emulator.IdP {
	t.Helper()
	return registerIdP(t, emulator.NewIdP(cfg), func(p *emulator.IdP) { p.Start() })
}

func registerIdP(t *testing.T, p *emulator.IdP, start func(*emulator.IdP)) *emulator.IdP {
	t.Helper()
	start(p)
	providersMu.Lock()
	idps = append(idps, p)
	if p.Secret() != "" {
		runtimeSecrets = append(runtimeSecrets, p.Secret())
	}
	providersMu.Unlock()
	t.Cleanup(func() {
		p.Close()
		v := p.Violations()
		t.Logf("IdP emulator: %d token requests, %d metadata requests, %d violations", p.TokenRequests(), p.MetadataRequests(), len(v))
		if len(v) > 0 {
			t.Errorf("the IdP emulator saw malformed requests: %q", v)
		}
	})
	return p
}

func startIdPBackend(t *testing.T, p *emulator.IdP) *emulator.Backend {
	t.Helper()
	b := emulator.NewBackendFor(p)
	b.Start()
	t.Cleanup(b.Close)
	return b
}

// getIdPOK sends n requests through g; each must reach the backend with a
// token of the IdP.
func getIdPOK(t *testing.T, g *gateway, n int) {
	t.Helper()
	for i := range n {
		if status, body, _ := g.get("/api"); status != http.StatusOK || body != "ok idp" {
			t.Fatalf("request %d: %d %q, want 200 \"ok idp\" (a token of the IdP on the request)", i, status, body)
		}
	}
}

// TestKeysPrivateKeyJWT: private_key_jwt with each key type and algorithm
// family. The IdP verifies each assertion with the standard library
// (RSASSA-PKCS1-v1_5, RSASSA-PSS, ECDSA with r||s, Ed25519); the default
// alg follows the key; the key file may be PKCS#1, PKCS#8 or SEC 1.
func TestKeysPrivateKeyJWT(t *testing.T) {
	for _, tc := range []struct {
		name, format, alg, want string
		key                     crypto.Signer
	}{
		{"RSA PKCS#1 default RS256", "pkcs1", "", "RS256", keysRSA()},
		{"RSA RS384", "pkcs8", "RS384", "RS384", keysRSA()},
		{"RSA RS512", "pkcs1", "RS512", "RS512", keysRSA()},
		{"RSA-PSS PS256", "pkcs8", "PS256", "PS256", keysRSA()},
		{"RSA-PSS PS384", "pkcs1", "PS384", "PS384", keysRSA()},
		{"RSA-PSS PS512", "pkcs8", "PS512", "PS512", keysRSA()},
		{"ECDSA P-256 SEC 1 default ES256", "sec1", "", "ES256", keysP256()},
		{"ECDSA P-256 PKCS#8 ES256", "pkcs8", "ES256", "ES256", keysP256()},
		{"ECDSA P-384 default ES384", "pkcs8", "", "ES384", keysP384()},
		{"Ed25519 default EdDSA", "pkcs8", "", "EdDSA", keysEd()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			idp := startIdP(t, emulator.IdPConfig{ClientID: keysClient, Auth: emulator.PrivateKeyJWT, PublicKey: tc.key.Public(), Alg: tc.want})
			b := startIdPBackend(t, idp)
			key := keyFile(t, tc.format, tc.key)
			var site string
			if tc.alg == "" {
				site = fmt.Sprintf(`
	upstream_oauth {
		token_url %s
		client_id gateway-client
		client_auth private_key_jwt
		assertion {
			key %s
		}
	}
	reverse_proxy %s
`, idp.TokenURL(), key, b.URL())
			} else {
				site = fmt.Sprintf(`
	upstream_oauth {
		token_url %s
		client_id gateway-client
		client_auth private_key_jwt
		assertion {
			key %s
			alg %s
		}
	}
	reverse_proxy %s
`, idp.TokenURL(), key, tc.alg, b.URL())
			}
			g := startGateway(t, site)
			getIdPOK(t, g, 3)
			if n := idp.TokenRequests(); n != 1 {
				t.Errorf("token requests: %d, want 1 for 3 requests", n)
			}
			if holdsKeyMaterial(g.logText(), key) {
				t.Errorf("the log holds key material")
			}
		})
	}
}

// TestKeysClientSecretJWT: client_secret_jwt signs with HMAC over the
// client secret (HS256 by default); the secret itself is never sent.
func TestKeysClientSecretJWT(t *testing.T) {
	for _, tc := range []struct{ alg, want string }{{"", "HS256"}, {"HS384", "HS384"}, {"HS512", "HS512"}} {
		t.Run(tc.want, func(t *testing.T) {
			secret := base64.RawURLEncoding.EncodeToString(must(randomBytes(48)))
			idp := startIdP(t, emulator.IdPConfig{ClientID: keysClient, Auth: emulator.ClientSecretJWT, Secret: secret, Alg: tc.want})
			b := startIdPBackend(t, idp)
			var site string
			if tc.alg == "" {
				site = fmt.Sprintf(`
	upstream_oauth {
		token_url %s
		client_id gateway-client
		client_secret %s
		client_auth client_secret_jwt
	}
	reverse_proxy %s
`, idp.TokenURL(), secret, b.URL())
			} else {
				site = fmt.Sprintf(`
	upstream_oauth {
		token_url %s
		client_id gateway-client
		client_secret %s
		client_auth client_secret_jwt
		assertion {
			alg %s
		}
	}
	reverse_proxy %s
`, idp.TokenURL(), secret, tc.alg, b.URL())
			}
			g := startGateway(t, site)
			getIdPOK(t, g, 2)
			if n := idp.TokenRequests(); n != 1 {
				t.Errorf("token requests: %d, want 1", n)
			}
		})
	}
}

func randomBytes(n int) ([]byte, error) {
	b := make([]byte, n)
	_, err := rand.Read(b)
	return b, err
}

// TestKeysHeadersAndClaims: kid, x5t (with x5t#S256) of the key's
// certificate, audience, lifetime and extra claims reach the IdP exactly,
// with a scope as Entra ID takes it. The token request as the IdP decoded
// it is logged (signature elided).
func TestKeysHeadersAndClaims(t *testing.T) {
	key := keysRSA()
	crt, cert := certFile(t, key)
	idp := startIdP(t, emulator.IdPConfig{
		ClientID: keysClient, Auth: emulator.PrivateKeyJWT, PublicKey: key.Public(), Alg: "PS256",
		KeyID: "gw-2025-01", Certificate: cert,
		Audience: "https://login.example.com/tenant-1/v2.0", Lifetime: 2 * time.Minute,
		Claims: map[string]string{"tenant": "acme", "purpose": "gateway"},
		Scope:  "https://graph.example.com/.default",
	})
	b := startIdPBackend(t, idp)
	g := startGateway(t, fmt.Sprintf(`
	upstream_oauth {
		token_url %s
		client_id gateway-client
		client_auth private_key_jwt
		scope https://graph.example.com/.default
		assertion {
			key %s
			alg PS256
			kid gw-2025-01
			x5t %s
			audience https://login.example.com/tenant-1/v2.0
			lifetime 2m
			claim tenant acme
			claim purpose gateway
		}
	}
	reverse_proxy %s
`, idp.TokenURL(), keyFile(t, "pkcs8", key), crt, b.URL()))
	getIdPOK(t, g, 2)
	dec := idp.Decoded()
	if len(dec) != 1 {
		t.Fatalf("%d token requests decoded, want 1", len(dec))
	}
	t.Logf("token request as the IdP decoded it:\n%s", formatDecoded(dec[0]))
	var header map[string]any
	if err := json.Unmarshal(dec[0].Header, &header); err != nil || header["kid"] != "gw-2025-01" || header["x5t"] == nil || header["x5t#S256"] == nil {
		t.Errorf("JOSE header %s lacks kid, x5t or x5t#S256", dec[0].Header)
	}
}

// formatDecoded shows a decoded token request: form fields, JOSE header
// and claims.
func formatDecoded(d emulator.DecodedRequest) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s (application/x-www-form-urlencoded)\n", d.Method, d.Path)
	keys := make([]string, 0, len(d.Form))
	for k := range d.Form {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "  %s=%s\n", k, d.Form.Get(k))
	}
	fmt.Fprintf(&b, "JOSE header:\n%s\nclaims:\n%s", d.Header, d.Claims)
	return b.String()
}

// TestKeysJTIUniqueAcrossRenewals: with 2s tokens and refresh tokens, the
// gateway renews several times in the background, with the refresh_token
// grant first; every token request carries a new assertion, with a jti
// never seen before (the IdP refuses a replay as a violation).
func TestKeysJTIUniqueAcrossRenewals(t *testing.T) {
	key := keysP256()
	idp := startIdP(t, emulator.IdPConfig{
		ClientID: keysClient, Auth: emulator.PrivateKeyJWT, PublicKey: key.Public(), Alg: "ES256",
		TTL: 2 * time.Second, IssueRefreshTokens: true,
	})
	b := startIdPBackend(t, idp)
	g := startGateway(t, fmt.Sprintf(`
	upstream_oauth {
		token_url %s
		client_id gateway-client
		client_auth private_key_jwt
		assertion {
			key %s
		}
	}
	reverse_proxy %s
`, idp.TokenURL(), keyFile(t, "sec1", key), b.URL()))
	failed := 0
	if !eventually(60*time.Second, func() bool {
		if status, _, _ := g.get("/api"); status != http.StatusOK {
			failed++
		}
		return idp.Issued() >= 5
	}) {
		t.Fatalf("only %d tokens issued in 60s with 2s tokens, want 5", idp.Issued())
	}
	if failed > 0 {
		t.Errorf("%d requests failed while renewing in the background", failed)
	}
	if n, jtis := idp.TokenRequests(), idp.JTIs(); int64(jtis) != n {
		t.Errorf("%d token requests carried %d distinct jti, want one each", n, jtis)
	}
	if idp.RefreshGrants() == 0 {
		t.Errorf("no renewal used the refresh_token grant")
	}
	t.Logf("%d token requests (%d refresh_token grants), %d distinct jti", idp.TokenRequests(), idp.RefreshGrants(), idp.JTIs())
}

// TestKeysRefusals: what cannot sign is refused when the config is loaded
// (at adapt, else at provision), with the reason and without a byte of key
// material in the message; nothing reaches the IdP.
func TestKeysRefusals(t *testing.T) {
	idp := startIdP(t, emulator.IdPConfig{ClientID: keysClient, Auth: emulator.PrivateKeyJWT, PublicKey: keysRSA().Public(), Alg: "RS256"})
	dir := t.TempDir()
	rsaKey := keyFile(t, "pkcs8", keysRSA())
	encrypted := writeSecretPEM(t, "encrypted-key.pem", pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: must(x509.MarshalPKCS8PrivateKey(keysRSA2()))}))
	garbage := filepath.Join(dir, "garbage-key.pem")
	if err := os.WriteFile(garbage, []byte("this is no key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	small := writeSecretPEM(t, "small-key.pem", pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY",
		Bytes: x509.MarshalPKCS1PrivateKey(must(rsa.GenerateKey(rand.Reader, 1024)))}))
	otherCert, _ := certFile(t, keysRSA2())
	files := []string{rsaKey, encrypted, small}
	// A warm gateway, so that the admin endpoint is up and a failed load
	// leaves it running.
	g := startGateway(t, "\trespond ok\n")
	for _, tc := range []struct{ name, block, want string }{
		{"alg none", fmt.Sprintf(`upstream_oauth {
		token_url %s
		client_id gateway-client
		client_auth private_key_jwt
		assertion {
			key %s
			alg none
		}
	}`, idp.TokenURL(), rsaKey), "alg none is refused: an unsigned assertion proves nothing"},
		{"key does not fit alg", fmt.Sprintf(`upstream_oauth {
		token_url %s
		client_id gateway-client
		client_auth private_key_jwt
		assertion {
			key %s
			alg ES256
		}
	}`, idp.TokenURL(), rsaKey), "assertion key " + rsaKey + ": alg ES256 needs an ECDSA P-256 key; this is an RSA 2048-bit key"},
		{"missing file", fmt.Sprintf(`upstream_oauth {
		token_url %s
		client_id gateway-client
		client_auth private_key_jwt
		assertion {
			key %s
		}
	}`, idp.TokenURL(), filepath.Join(dir, "missing-key.pem")), "assertion key " + filepath.Join(dir, "missing-key.pem") + ": open: no such file or directory"},
		{"directory", fmt.Sprintf(`upstream_oauth {
		token_url %s
		client_id gateway-client
		client_auth private_key_jwt
		assertion {
			key %s
		}
	}`, idp.TokenURL(), dir), "assertion key " + dir + ": not a regular file"},
		{"encrypted", fmt.Sprintf(`upstream_oauth {
		token_url %s
		client_id gateway-client
		client_auth private_key_jwt
		assertion {
			key %s
		}
	}`, idp.TokenURL(), encrypted), "the key is encrypted"},
		{"not PEM", fmt.Sprintf(`upstream_oauth {
		token_url %s
		client_id gateway-client
		client_auth private_key_jwt
		assertion {
			key %s
		}
	}`, idp.TokenURL(), garbage), "no PEM data"},
		{"RSA 1024", fmt.Sprintf(`upstream_oauth {
		token_url %s
		client_id gateway-client
		client_auth private_key_jwt
		assertion {
			key %s
		}
	}`, idp.TokenURL(), small), "an RSA key of 1024 bits is too small: want at least 2048"},
		{"x5t of another key", fmt.Sprintf(`upstream_oauth {
		token_url %s
		client_id gateway-client
		client_auth private_key_jwt
		assertion {
			key %s
			x5t %s
		}
	}`, idp.TokenURL(), rsaKey, otherCert), "the certificate is not that of the assertion key"},
		{"short HMAC secret", fmt.Sprintf(`upstream_oauth {
		token_url %s
		client_id gateway-client
		client_secret short-secret-Qw7
		client_auth client_secret_jwt
	}`, idp.TokenURL()), "client_auth client_secret_jwt with HS256 needs a client_secret of at least 32 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			config := globalOptions(g.log) + fmt.Sprintf("http://%s {\n\t%s\n\trespond ok\n}\n", g.addr, tc.block)
			status, body := loadCaddyfile(t, config)
			if status == http.StatusOK {
				t.Fatalf("the config was loaded; want it refused with %q", tc.want)
			}
			body = loadError(body)
			if !strings.Contains(body, tc.want) {
				t.Errorf("refusal %q does not say %q", body, tc.want)
			}
			if holdsKeyMaterial(body, files...) || strings.Contains(body, "short-secret-Qw7") {
				t.Errorf("the refusal holds key material or the secret: %s", body)
			}
			t.Logf("refused: %s", strings.TrimSpace(body))
		})
	}
	if n := idp.TokenRequests() + idp.MetadataRequests(); n != 0 {
		t.Errorf("%d requests reached the IdP from refused configs", n)
	}
}

// loadError is the error message of a refused /load answer (JSON), or the
// answer as it is.
func loadError(body string) string {
	var answer struct {
		Error string `json:"error"`
	}
	if json.Unmarshal([]byte(body), &answer) != nil || answer.Error == "" {
		return body
	}
	return answer.Error
}

// keysIssuerPath is the issuer's path in the discovery tests, as Keycloak
// names a realm.
const keysIssuerPath = "/realms/acme"

// TestKeysDiscoveryRFC8414: with issuer and no token_url, no metadata is
// read at load; the first request reads the RFC 8414 document (the
// well-known part before the issuer's path), the token request goes to its
// token_endpoint with that URL as aud, and later requests read nothing
// again. The admin API shows the issuer and the default name.
func TestKeysDiscoveryRFC8414(t *testing.T) {
	key := keysEd()
	idp := startIdP(t, emulator.IdPConfig{ClientID: keysClient, Auth: emulator.PrivateKeyJWT, PublicKey: key.Public(), Alg: "EdDSA",
		IssuerPath: keysIssuerPath, Metadata: emulator.MetadataRFC8414})
	b := startIdPBackend(t, idp)
	g := startGateway(t, fmt.Sprintf(`
	upstream_oauth {
		issuer %s
		client_id gateway-client
		client_auth private_key_jwt
		assertion {
			key %s
		}
	}
	reverse_proxy %s
`, idp.Issuer(), keyFile(t, "pkcs8", key), b.URL()))
	if n := idp.MetadataRequests() + idp.TokenRequests(); n != 0 {
		t.Fatalf("%d requests to the IdP at load time, want none", n)
	}
	getIdPOK(t, g, 4)
	if idp.RFC8414Requests() != 1 || idp.OIDCRequests() != 0 || idp.TokenRequests() != 1 {
		t.Errorf("RFC 8414 %d, OIDC %d, token %d requests; want 1, 0, 1", idp.RFC8414Requests(), idp.OIDCRequests(), idp.TokenRequests())
	}
	if d := idp.Decoded(); len(d) == 1 {
		t.Logf("token request as the IdP decoded it (aud: the discovered token endpoint):\n%s", formatDecoded(d[0]))
	}
	name := "127.0.0.1:" + strings.TrimPrefix(idp.URL(), "http://127.0.0.1:") + ":" + keysClient
	_, body := admin(t, http.MethodGet, "/upstream_oauth/sources")
	var all []struct {
		Name     string `json:"name"`
		Issuer   string `json:"issuer"`
		TokenURL string `json:"token_url"`
	}
	if err := json.Unmarshal([]byte(body), &all); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, s := range all {
		if s.Name == name {
			found = true
			if s.Issuer != idp.Issuer() || s.TokenURL != "" {
				t.Errorf("admin API shows issuer %q, token_url %q; want %q and none", s.Issuer, s.TokenURL, idp.Issuer())
			}
		}
	}
	if !found {
		t.Errorf("no source named %s (the issuer's host and the client id) in %s", name, body)
	}
}

// TestKeysDiscoveryOIDCFallback: without an RFC 8414 document, the OpenID
// Connect one is read.
func TestKeysDiscoveryOIDCFallback(t *testing.T) {
	key := keysP256()
	idp := startIdP(t, emulator.IdPConfig{ClientID: keysClient, Auth: emulator.PrivateKeyJWT, PublicKey: key.Public(), Alg: "ES256",
		IssuerPath: keysIssuerPath, Metadata: emulator.MetadataOIDC})
	b := startIdPBackend(t, idp)
	g := startGateway(t, fmt.Sprintf(`
	upstream_oauth {
		issuer %s
		client_id gateway-client
		client_auth private_key_jwt
		assertion {
			key %s
		}
	}
	reverse_proxy %s
`, idp.Issuer(), keyFile(t, "sec1", key), b.URL()))
	getIdPOK(t, g, 2)
	if idp.RFC8414Requests() != 1 || idp.OIDCRequests() != 1 || idp.TokenRequests() != 1 {
		t.Errorf("RFC 8414 %d, OIDC %d, token %d requests; want 1 (answered 404), 1, 1", idp.RFC8414Requests(), idp.OIDCRequests(), idp.TokenRequests())
	}
}

// keysWarnings waits for the module's warnings in g's log.
func keysWarnings(t *testing.T, g *gateway) string {
	t.Helper()
	var warns []logLine
	if !eventually(10*time.Second, func() bool { warns = moduleWarnings(g.logText()); return len(warns) > 0 }) {
		t.Fatalf("no warning logged; log:\n%s", g.logText())
	}
	var texts []string
	for _, w := range warns {
		texts = append(texts, w.text())
	}
	return strings.Join(texts, "\n")
}

// TestKeysDiscoveryRefused: metadata whose issuer is not the configured
// one, or whose token_endpoint token_url's rules refuse, is a token
// failure: 502, nothing forwarded, no token request, a warning that says
// why, and backoff (more requests do not read the metadata again at once).
func TestKeysDiscoveryRefused(t *testing.T) {
	for _, tc := range []struct {
		name string
		set  func(*emulator.IdP)
		want string
	}{
		{"issuer mismatch", func(p *emulator.IdP) { p.SetMetadataIssuer("https://evil.example.com/realms/acme") },
			`metadata issuer "https://evil.example.com/realms/acme" is not the configured issuer`},
		{"http token_endpoint", func(p *emulator.IdP) { p.SetTokenEndpoint("http://idp.example.com/token") },
			"metadata token_endpoint: http:// is only allowed for a loopback host"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := keysEd()
			idp := startIdP(t, emulator.IdPConfig{ClientID: keysClient, Auth: emulator.PrivateKeyJWT, PublicKey: key.Public(), Alg: "EdDSA", IssuerPath: keysIssuerPath})
			tc.set(idp)
			b := startIdPBackend(t, idp)
			g := startGateway(t, fmt.Sprintf(`
	upstream_oauth {
		issuer %s
		client_id gateway-client
		client_auth private_key_jwt
		assertion {
			key %s
		}
	}
	reverse_proxy %s
`, idp.Issuer(), keyFile(t, "pkcs8", key), b.URL()))
			for range 5 {
				if status, _, _ := g.get("/api"); status != http.StatusBadGateway {
					t.Fatalf("status %d, want 502", status)
				}
			}
			if n := b.Accepted() + b.Rejected(); n != 0 {
				t.Errorf("%d requests reached the backend", n)
			}
			if idp.TokenRequests() != 0 || idp.RFC8414Requests() != 1 || idp.OIDCRequests() != 1 {
				t.Errorf("token %d, RFC 8414 %d, OIDC %d requests; want 0, 1, 1 (one discovery, then backoff)",
					idp.TokenRequests(), idp.RFC8414Requests(), idp.OIDCRequests())
			}
			w := keysWarnings(t, g)
			if !strings.Contains(w, "issuer discovery for "+idp.Issuer()+" failed") || !strings.Contains(w, tc.want) {
				t.Errorf("the warning does not say %q:\n%s", tc.want, w)
			}
			t.Logf("warning: %s", w)
		})
	}
}

// renew forces a renewal of the source named name through the admin API
// and returns the answer's status.
func renew(t *testing.T, name string) (int, string) {
	t.Helper()
	return admin(t, http.MethodPost, "/upstream_oauth/sources/"+name+"/renew")
}

// TestKeysRediscovery: the metadata is read again after a token request
// that answers 404 (the endpoint moved) or gets no answer, and not after
// another failure.
func TestKeysRediscovery(t *testing.T) {
	key := keysP384()
	setup := func(t *testing.T, name string) (*emulator.IdP, *gateway) {
		idp := startIdP(t, emulator.IdPConfig{ClientID: keysClient, Auth: emulator.PrivateKeyJWT, PublicKey: key.Public(), Alg: "ES384", IssuerPath: keysIssuerPath})
		b := startIdPBackend(t, idp)
		g := startGateway(t, fmt.Sprintf(`
	upstream_oauth {
		name %s
		issuer %s
		client_id gateway-client
		client_auth private_key_jwt
		assertion {
			key %s
		}
	}
	reverse_proxy %s
`, name, idp.Issuer(), keyFile(t, "pkcs8", key), b.URL()))
		return idp, g
	}
	t.Run("endpoint moved: 404", func(t *testing.T) {
		idp, g := setup(t, "keys-moved")
		getIdPOK(t, g, 1)
		idp.SetTokenPath(keysIssuerPath + "/v2/token")
		if status, body := renew(t, "keys-moved"); status == http.StatusOK || !strings.Contains(body, "404") {
			t.Fatalf("renewal against the old endpoint: %d %s; want a failure with the 404", status, body)
		}
		if status, body := renew(t, "keys-moved"); status != http.StatusOK {
			t.Fatalf("renewal after the 404: %d %s; want the endpoint found again", status, body)
		}
		getIdPOK(t, g, 1)
		// A background retry may come between the renewals: it finds the
		// new endpoint through the same one reading of the metadata.
		if idp.RFC8414Requests() != 2 || idp.StaleRequests() != 1 || idp.TokenRequests() < 2 {
			t.Errorf("RFC 8414 %d, stale %d, token %d requests; want 2, 1, at least 2", idp.RFC8414Requests(), idp.StaleRequests(), idp.TokenRequests())
		}
	})
	t.Run("endpoint unreachable", func(t *testing.T) {
		idp, g := setup(t, "keys-unreachable")
		idp.SetTokenEndpoint(fmt.Sprintf("http://127.0.0.1:%d/token", freePort(t))) // nothing listens there
		if status, _, _ := g.get("/api"); status != http.StatusBadGateway {
			t.Fatalf("status %d with the token endpoint unreachable, want 502", status)
		}
		if w := keysWarnings(t, g); !strings.Contains(w, "no answer from the token endpoint") {
			t.Errorf("the warning does not say the endpoint did not answer:\n%s", w)
		}
		idp.SetTokenEndpoint("")
		if status, body := renew(t, "keys-unreachable"); status != http.StatusOK {
			t.Fatalf("renewal after no answer: %d %s; want the endpoint found again", status, body)
		}
		getIdPOK(t, g, 1)
		// A background retry may have come first: it reads the metadata
		// again too.
		if idp.RFC8414Requests() < 2 || idp.TokenRequests() < 1 {
			t.Errorf("RFC 8414 %d, token %d requests; want the metadata read again (2) and a token request", idp.RFC8414Requests(), idp.TokenRequests())
		}
	})
	t.Run("other failures keep the metadata", func(t *testing.T) {
		idp, g := setup(t, "keys-kept")
		getIdPOK(t, g, 1)
		idp.SetMode(emulator.Down)
		for range 2 {
			if status, _ := renew(t, "keys-kept"); status == http.StatusOK {
				t.Fatalf("renewal against a 503 succeeded")
			}
		}
		idp.SetMode(emulator.Up)
		if status, body := renew(t, "keys-kept"); status != http.StatusOK {
			t.Fatalf("renewal: %d %s", status, body)
		}
		if idp.MetadataRequests() != 1 || idp.TokenRequests() < 4 {
			t.Errorf("metadata %d, token %d requests; want 1 (kept through the 503s), at least 4", idp.MetadataRequests(), idp.TokenRequests())
		}
	})
}

// TestKeysTokenURLWinsOverIssuer: with token_url in the block, issuer is
// not read.
func TestKeysTokenURLWinsOverIssuer(t *testing.T) {
	key := keysEd()
	idp := startIdP(t, emulator.IdPConfig{ClientID: keysClient, Auth: emulator.PrivateKeyJWT, PublicKey: key.Public(), Alg: "EdDSA", IssuerPath: keysIssuerPath})
	b := startIdPBackend(t, idp)
	g := startGateway(t, fmt.Sprintf(`
	upstream_oauth {
		token_url %s
		issuer %s
		client_id gateway-client
		client_auth private_key_jwt
		assertion {
			key %s
		}
	}
	reverse_proxy %s
`, idp.TokenURL(), idp.Issuer(), keyFile(t, "pkcs8", key), b.URL()))
	getIdPOK(t, g, 2)
	if n := idp.MetadataRequests(); n != 0 {
		t.Errorf("%d metadata requests with token_url set, want 0", n)
	}
}

// TestKeysTLSClientAuth: tls_client_auth against an IdP whose listener
// requires a client certificate of its CA: with the tls block's
// client_cert, the token (and the metadata, through issuer) is obtained
// with client_id alone in the body; a certificate of another CA is refused
// in the handshake (502, nothing forwarded); without client_cert the config
// is refused with its file and line.
func TestKeysTLSClientAuth(t *testing.T) {
	ca := newTestCA(t)
	serverPair, _, _ := ca.issue(t, "idp-server", false, "127.0.0.1")
	_, clientCert, clientKey := ca.issue(t, "gateway-client", true)
	providersMu.Lock()
	runtimeSecrets = append(runtimeSecrets, pemLines(must(os.ReadFile(clientKey)))...)
	providersMu.Unlock()
	idp := registerIdP(t, emulator.NewIdP(emulator.IdPConfig{ClientID: keysClient, Auth: emulator.TLSClientAuth,
		ClientSubject: "CN=gateway-client", IssuerPath: keysIssuerPath}), func(p *emulator.IdP) {
		p.StartTLS(&tls.Config{Certificates: []tls.Certificate{serverPair}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: ca.pool()})
	})
	b := startIdPBackend(t, idp)

	t.Run("with a certificate", func(t *testing.T) {
		g := startGateway(t, fmt.Sprintf(`
	upstream_oauth {
		issuer %s
		client_id gateway-client
		client_auth tls_client_auth
		tls {
			ca %s
			client_cert %s %s
		}
	}
	reverse_proxy %s
`, idp.Issuer(), ca.file, clientCert, clientKey, b.URL()))
		getIdPOK(t, g, 3)
		if idp.TokenRequests() != 1 || idp.MetadataRequests() != 1 || idp.ClientSubject() != "CN=gateway-client" {
			t.Errorf("token %d, metadata %d requests, client subject %q; want 1, 1, CN=gateway-client",
				idp.TokenRequests(), idp.MetadataRequests(), idp.ClientSubject())
		}
		if d := idp.Decoded(); len(d) == 1 {
			t.Logf("token request as the IdP read it:\n%s", formatDecoded(d[0]))
		}
	})
	t.Run("certificate of another CA", func(t *testing.T) {
		other := newTestCA(t)
		_, otherCert, otherKey := other.issue(t, "gateway-client", true)
		b2 := startIdPBackend(t, idp)
		before := idp.TokenRequests() + idp.MetadataRequests()
		g := startGateway(t, fmt.Sprintf(`
	upstream_oauth {
		name keys-other-ca
		issuer %s
		client_id gateway-client
		client_auth tls_client_auth
		tls {
			ca %s
			client_cert %s %s
		}
	}
	reverse_proxy %s
`, idp.Issuer(), ca.file, otherCert, otherKey, b2.URL()))
		if status, _, _ := g.get("/api"); status != http.StatusBadGateway {
			t.Fatalf("status %d, want 502", status)
		}
		if n := b2.Accepted() + b2.Rejected(); n != 0 {
			t.Errorf("%d requests reached the backend", n)
		}
		if n := idp.TokenRequests() + idp.MetadataRequests() - before; n != 0 {
			t.Errorf("%d requests got past the handshake", n)
		}
		t.Logf("warning: %s", keysWarnings(t, g))
	})
	t.Run("without client_cert", func(t *testing.T) {
		g := startGateway(t, "\trespond ok\n")
		config := globalOptions(g.log) + fmt.Sprintf(`http://%s {
	upstream_oauth {
		issuer %s
		client_id gateway-client
		client_auth tls_client_auth
		tls {
			ca %s
		}
	}
	respond ok
}
`, g.addr, idp.Issuer(), ca.file)
		status, body := loadCaddyfile(t, config)
		body = loadError(body)
		want := "client_auth tls_client_auth needs tls { client_cert <cert file> <key file> }"
		if status == http.StatusOK || !strings.Contains(body, want) || !strings.Contains(body, "Caddyfile:") {
			t.Fatalf("load: %d %s; want it refused with %q, file and line", status, body, want)
		}
		t.Logf("refused: %s", strings.TrimSpace(body))
	})
}

// TestBinaryValidateIssuerNoRequest: `caddy adapt` and `caddy validate` of
// a config with issuer and private_key_jwt (the xcaddy binary) succeed
// without one request to the issuer: discovery waits for the first token.
// A key that does not fit alg fails validate with the reason and no key
// material.
func TestBinaryValidateIssuerNoRequest(t *testing.T) {
	key := keysRSA()
	idp := startIdP(t, emulator.IdPConfig{ClientID: keysClient, Auth: emulator.PrivateKeyJWT, PublicKey: key.Public(), Alg: "RS256", IssuerPath: keysIssuerPath})
	keyPath := keyFile(t, "pkcs1", key)
	dir := t.TempDir()
	good := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(good, fmt.Appendf(nil, `{
	admin off
}
:0 {
	upstream_oauth {
		issuer %s
		client_id gateway-client
		client_auth private_key_jwt
		assertion {
			key %s
		}
	}
	respond ok
}
`, idp.Issuer(), keyPath), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []string{"adapt", "validate"} {
		out, err := runCaddy(t, nil, cmd, "--config", good)
		if err != nil {
			t.Fatalf("caddy %s: %v\n%s", cmd, err, out)
		}
		if cmd == "validate" && !strings.Contains(out, "Valid configuration") {
			t.Errorf("caddy validate did not say Valid configuration:\n%s", out)
		}
		if holdsKeyMaterial(out, keyPath) {
			t.Errorf("caddy %s output holds key material", cmd)
		}
	}
	if n := idp.MetadataRequests() + idp.TokenRequests(); n != 0 {
		t.Errorf("adapt and validate made %d requests to the issuer, want none", n)
	}
	bad := filepath.Join(dir, "Caddyfile.bad")
	if err := os.WriteFile(bad, fmt.Appendf(nil, `{
	admin off
}
:0 {
	upstream_oauth {
		issuer %s
		client_id gateway-client
		client_auth private_key_jwt
		assertion {
			key %s
			alg EdDSA
		}
	}
	respond ok
}
`, idp.Issuer(), keyPath), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := runCaddy(t, nil, "validate", "--config", bad)
	want := "alg EdDSA needs an Ed25519 key; this is an RSA 2048-bit key"
	if err == nil || !strings.Contains(out, want) || holdsKeyMaterial(out, keyPath) {
		t.Errorf("caddy validate of a key that does not fit alg: %v; want a failure saying %q, no key material:\n%s", err, want, out)
	}
}

// TestKeysFleetShared: two Caddy processes sharing a file_system storage
// and a private_key_jwt source with issuer make one discovery and one
// token request between them; the second takes the token from storage.
func TestKeysFleetShared(t *testing.T) {
	key := keysEd()
	idp := startIdP(t, emulator.IdPConfig{ClientID: keysClient, Auth: emulator.PrivateKeyJWT, PublicKey: key.Public(), Alg: "EdDSA", IssuerPath: keysIssuerPath})
	b := startIdPBackend(t, idp)
	keyPath := keyFile(t, "pkcs8", key)
	storage := t.TempDir()
	fleet := launchFleet(t, 2, func(in *instance) string {
		return fmt.Sprintf(`{
	admin off
	auto_https off
	storage file_system %s
	log {
		output file %s
		level DEBUG
	}
}
http://%s {
	upstream_oauth /api* {
		issuer %s
		client_id gateway-client
		client_auth private_key_jwt
		assertion {
			key %s
		}
		share
	}
	respond /up "up"
	reverse_proxy %s
}
`, storage, in.log, in.addr, idp.Issuer(), keyPath, b.URL())
	})
	for i, in := range fleet {
		for range 3 {
			if status := in.get("/api"); status != http.StatusOK {
				t.Fatalf("instance %d: status %d, want 200", i, status)
			}
		}
	}
	if idp.TokenRequests() != 1 || idp.RFC8414Requests() != 1 || idp.OIDCRequests() != 0 {
		t.Errorf("token %d, RFC 8414 %d, OIDC %d requests from the fleet; want 1, 1, 0 (one instance fetched, the other shared)",
			idp.TokenRequests(), idp.RFC8414Requests(), idp.OIDCRequests())
	}
	if b.Accepted() != 6 || b.Rejected() != 0 {
		t.Errorf("backend accepted %d and rejected %d of 6 requests", b.Accepted(), b.Rejected())
	}
}
