package grants

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// Keys made once per test process (RSA generation is slow under -race).
var (
	rsaKey    = sync.OnceValue(func() *rsa.PrivateKey { return mustRSA(2048) })
	rsaKey2   = sync.OnceValue(func() *rsa.PrivateKey { return mustRSA(2048) })
	rsaSmall  = sync.OnceValue(func() *rsa.PrivateKey { return mustRSA(1024) })
	p256Key   = sync.OnceValue(func() *ecdsa.PrivateKey { return mustEC(elliptic.P256()) })
	p384Key   = sync.OnceValue(func() *ecdsa.PrivateKey { return mustEC(elliptic.P384()) })
	p521Key   = sync.OnceValue(func() *ecdsa.PrivateKey { return mustEC(elliptic.P521()) })
	edKey     = sync.OnceValue(func() ed25519.PrivateKey { _, k, _ := ed25519.GenerateKey(rand.Reader); return k })
	hmacKey32 = strings.Repeat("k", 32)
)

func mustRSA(bits int) *rsa.PrivateKey {
	// GODEBUG rsa1024min would refuse to generate a 1024-bit key; the
	// test of the size refusal parses one, made here the old way.
	k, err := rsa.GenerateKey(rand.Reader, bits) //nolint:gosec // the size refusal is under test
	if err != nil {
		panic(err)
	}
	return k
}

func mustEC(c elliptic.Curve) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(c, rand.Reader)
	if err != nil {
		panic(err)
	}
	return k
}

func pemOf(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func pkcs8(t testing.TB, key any) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pemOf("PRIVATE KEY", der)
}

func sec1(t testing.TB, key *ecdsa.PrivateKey) []byte {
	t.Helper()
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pemOf("EC PRIVATE KEY", der)
}

func writeFile(t testing.TB, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// selfSigned makes a certificate for key's public key.
func selfSigned(t testing.TB, key crypto.Signer) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7),
		Subject:      pkix.Name{CommonName: "upstream_oauth test client"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// assertNoKeyMaterial fails when msg holds 12 or more characters of any
// line of the PEM data's base64 bodies.
func assertNoKeyMaterial(t *testing.T, msg string, pemData []byte) {
	t.Helper()
	for line := range strings.SplitSeq(string(pemData), "\n") {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "-----") || strings.Contains(line, ":") {
			continue
		}
		for i := 0; i+12 <= len(line); i += 4 {
			if strings.Contains(msg, line[i:i+12]) {
				t.Fatalf("error message carries key material: %s", msg)
			}
		}
	}
}

// TestParsePrivateKey reads each accepted PEM form, and refuses the others
// with the reason and without key material.
func TestParsePrivateKey(t *testing.T) {
	rsaDER := x509.MarshalPKCS1PrivateKey(rsaKey())
	ecParams := pemOf("EC PARAMETERS", []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07})
	cert := pemOf("CERTIFICATE", selfSigned(t, p256Key()).Raw)
	xkey, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	legacy := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Headers: map[string]string{
		"Proc-Type": "4,ENCRYPTED", "DEK-Info": "AES-256-CBC,00112233445566778899AABBCCDDEEFF",
	}, Bytes: rsaDER})
	corrupt := pemOf("PRIVATE KEY", append(slices.Clone(rsaDER[:40]), 0xff, 0xfe))
	for _, tc := range []struct {
		name    string
		data    []byte
		want    string // type of the key, or the refusal
		refused bool
	}{
		{"PKCS#8 RSA", pkcs8(t, rsaKey()), "*rsa.PrivateKey", false},
		{"PKCS#1 RSA", pemOf("RSA PRIVATE KEY", rsaDER), "*rsa.PrivateKey", false},
		{"PKCS#8 P-256", pkcs8(t, p256Key()), "*ecdsa.PrivateKey", false},
		{"SEC 1 P-256", sec1(t, p256Key()), "*ecdsa.PrivateKey", false},
		{"SEC 1 P-384 after EC PARAMETERS (openssl ecparam -genkey)", append(ecParams, sec1(t, p384Key())...), "*ecdsa.PrivateKey", false},
		{"PKCS#8 Ed25519", pkcs8(t, edKey()), "ed25519.PrivateKey", false},
		{"certificate and key in one file", append(slices.Clone(cert), pkcs8(t, edKey())...), "ed25519.PrivateKey", false},
		{"encrypted PKCS#8", pemOf("ENCRYPTED PRIVATE KEY", rsaDER), "the key is encrypted", true},
		{"legacy encrypted PEM", legacy, "the key is encrypted", true},
		{"garbage", []byte("not a key at all\x00\x01"), "no PEM data", true},
		{"DER without PEM", rsaDER, "no PEM data", true},
		{"empty", nil, "no PEM data", true},
		{"certificate only", cert, "no private key, only PEM blocks CERTIFICATE", true},
		{"OpenSSH key", pemOf("OPENSSH PRIVATE KEY", rsaDER), "ssh-keygen -p -m PKCS8", true},
		{"corrupt PKCS#8", corrupt, "PEM block PRIVATE KEY is not a valid PKCS#8 private key", true},
		{"PKCS#8 label on PKCS#1 data", pemOf("PRIVATE KEY", rsaDER), "is not a valid PKCS#8 private key", true},
		{"RSA 1024", pkcs8(t, rsaSmall()), "an RSA key of 1024 bits is too small: want at least 2048", true},
		{"P-521", pkcs8(t, p521Key()), "an ECDSA P-521 key is not supported", true},
		{"X25519", pkcs8(t, xkey), "an X25519 key cannot sign", true},
		{"two keys", append(pkcs8(t, edKey()), pkcs8(t, p256Key())...), "more than one private key", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key, err := parsePrivateKey(tc.data)
			if tc.refused {
				if err == nil {
					t.Fatalf("accepted, want refusal %q", tc.want)
				}
				if !strings.Contains(err.Error(), tc.want) {
					t.Errorf("error %q, want it to say %q", err, tc.want)
				}
				assertNoKeyMaterial(t, err.Error(), tc.data)
				return
			}
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			if got := typeName(key); got != tc.want {
				t.Errorf("key type %s, want %s", got, tc.want)
			}
		})
	}
}

func typeName(v any) string {
	switch v.(type) {
	case *rsa.PrivateKey:
		return "*rsa.PrivateKey"
	case *ecdsa.PrivateKey:
		return "*ecdsa.PrivateKey"
	case ed25519.PrivateKey:
		return "ed25519.PrivateKey"
	}
	return "other"
}

// TestLoadPrivateKeyFile refuses files that are not one small regular file.
func TestLoadPrivateKeyFile(t *testing.T) {
	dir := t.TempDir()
	big := writeFile(t, "big.pem", append(pkcs8(t, edKey()), bytes.Repeat([]byte("#"), maxKeyFile)...))
	for _, tc := range []struct{ name, path, want string }{
		{"missing", filepath.Join(dir, "nope.pem"), "open: no such file or directory"},
		{"directory", dir, "not a regular file"},
		{"over 1 MiB", big, "larger than 1048576 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := loadPrivateKey(tc.path)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
}

// keyConfig is a private_key_jwt config with the key written to a file.
func keyConfig(t testing.TB, keyPEM []byte, alg Alg) Config {
	t.Helper()
	c := validConfig()
	c.ClientSecret, c.Password = "", ""
	c.ClientAuth = AuthPrivateKeyJWT
	c.Assertion = &Assertion{Key: writeFile(t, "key.pem", keyPEM), Alg: alg}
	return c
}

// TestAlgFitsKey: the default alg follows the key; an alg that does not fit
// the key is refused when the client is made, naming both.
func TestAlgFitsKey(t *testing.T) {
	keys := map[string][]byte{
		"RSA":     pkcs8(t, rsaKey()),
		"P-256":   sec1(t, p256Key()),
		"P-384":   pkcs8(t, p384Key()),
		"Ed25519": pkcs8(t, edKey()),
	}
	defaults := map[string]Alg{"RSA": RS256, "P-256": ES256, "P-384": ES384, "Ed25519": EdDSA}
	fit := map[Alg]string{
		RS256: "RSA", RS384: "RSA", RS512: "RSA", PS256: "RSA", PS384: "RSA", PS512: "RSA",
		ES256: "P-256", ES384: "P-384", EdDSA: "Ed25519",
	}
	need := map[string]string{"RSA": "an RSA key", "P-256": "an ECDSA P-256 key", "P-384": "an ECDSA P-384 key", "Ed25519": "an Ed25519 key"}
	is := map[string]string{"RSA": "an RSA 2048-bit key", "P-256": "an ECDSA P-256 key", "P-384": "an ECDSA P-384 key", "Ed25519": "an Ed25519 key"}
	for kind, data := range keys {
		t.Run(kind+" default", func(t *testing.T) {
			c, err := NewClient(keyConfig(t, data, ""), nil)
			if err != nil {
				t.Fatal(err)
			}
			if c.assert.alg != defaults[kind] {
				t.Errorf("default alg %s, want %s", c.assert.alg, defaults[kind])
			}
		})
		for alg, fits := range fit {
			t.Run(kind+" "+string(alg), func(t *testing.T) {
				_, err := NewClient(keyConfig(t, data, alg), nil)
				if fits == kind {
					if err != nil {
						t.Fatalf("refused: %v", err)
					}
					return
				}
				want := "alg " + string(alg) + " needs " + need[fits] + "; this is " + is[kind]
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Fatalf("error %v, want %q", err, want)
				}
				assertNoKeyMaterial(t, err.Error(), data)
			})
		}
	}
	t.Run("HS256 with a key", func(t *testing.T) {
		_, err := NewClient(keyConfig(t, keys["RSA"], HS256), nil)
		if err == nil || !strings.Contains(err.Error(), "alg HS256 signs with the client secret") {
			t.Fatalf("error %v, want the HMAC alg refused with a key", err)
		}
	})
}

// TestParseAlg knows every listed alg and refuses none in any case.
func TestParseAlg(t *testing.T) {
	for _, a := range Algs {
		if got, err := ParseAlg(string(a)); err != nil || got != a {
			t.Errorf("ParseAlg(%s) = %s, %v", a, got, err)
		}
	}
	for _, s := range []string{"none", "None", "NONE"} {
		if _, err := ParseAlg(s); err == nil || !strings.Contains(err.Error(), "alg none is refused") {
			t.Errorf("ParseAlg(%s) = %v, want the refusal of none", s, err)
		}
	}
	if _, err := ParseAlg("ES512"); err == nil || !strings.Contains(err.Error(), `unknown alg "ES512"`) {
		t.Errorf("ParseAlg(ES512) = %v", err)
	}
	if _, err := ParseAlg("rs256"); err == nil {
		t.Errorf("ParseAlg(rs256) accepted: names are case-sensitive (RFC 7518)")
	}
}

// decodeJWT splits a compact JWS into its decoded header and claims.
func decodeJWT(t *testing.T, jwt string) (header, claims map[string]any) {
	t.Helper()
	parts := strings.Split(jwt, ".")
	if len(parts) != 3 {
		t.Fatalf("assertion has %d parts, want 3", len(parts))
	}
	for i, dst := range []*map[string]any{&header, &claims} {
		raw, err := base64.RawURLEncoding.DecodeString(parts[i])
		if err != nil {
			t.Fatalf("part %d is not base64url without padding: %v", i, err)
		}
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.UseNumber()
		if err := dec.Decode(dst); err != nil {
			t.Fatalf("part %d is not a JSON object: %v", i, err)
		}
	}
	return header, claims
}

// TestAssertionClaimsAndHeaders checks every claim and header of an
// assertion with kid, x5t, audience, lifetime and claims, and that the
// signature verifies with the public key.
func TestAssertionClaimsAndHeaders(t *testing.T) {
	key := p256Key()
	cert := selfSigned(t, key)
	c := keyConfig(t, sec1(t, key), "")
	c.ClientID = "client-42"
	c.Assertion.KeyID = "key-2024"
	c.Assertion.X5T = writeFile(t, "cert.pem", pemOf("CERTIFICATE", cert.Raw))
	c.Assertion.Audience = "https://idp.example.com/realms/x"
	c.Assertion.Lifetime = 90 * time.Second
	c.Assertion.Claims = map[string]string{"tenant": "acme", "scope_hint": "read"}
	cl, err := NewClient(c, nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1_700_000_000, 0)
	cl.assert.now = func() time.Time { return now }
	jwt, err := cl.assert.assertion("https://ignored.example.com/token")
	if err != nil {
		t.Fatal(err)
	}
	header, claims := decodeJWT(t, jwt)
	sha1Sum, sha256Sum := sha1.Sum(cert.Raw), sha256.Sum256(cert.Raw)
	wantHeader := map[string]any{
		"alg": "ES256", "typ": "JWT", "kid": "key-2024",
		"x5t":      base64.RawURLEncoding.EncodeToString(sha1Sum[:]),
		"x5t#S256": base64.RawURLEncoding.EncodeToString(sha256Sum[:]),
	}
	if !equalJSON(header, wantHeader) {
		t.Errorf("JOSE header %v, want exactly %v", header, wantHeader)
	}
	jti, _ := claims["jti"].(string)
	wantClaims := map[string]any{
		"iss": "client-42", "sub": "client-42", "aud": "https://idp.example.com/realms/x",
		"iat": json.Number("1700000000"), "exp": json.Number("1700000090"), "jti": jti,
		"tenant": "acme", "scope_hint": "read",
	}
	if !equalJSON(claims, wantClaims) {
		t.Errorf("claims %v, want exactly %v", claims, wantClaims)
	}
	if raw, err := base64.RawURLEncoding.DecodeString(jti); err != nil || len(raw) < 16 {
		t.Errorf("jti %q is not 128 random bits (%d bytes, %v)", jti, len(raw), err)
	}
	sig := strings.Split(jwt, ".")[2]
	if raw, _ := base64.RawURLEncoding.DecodeString(sig); len(raw) != 64 {
		t.Errorf("ES256 signature of %d bytes, want 64 (r||s, RFC 7518 section 3.4)", len(raw))
	}
	verify(t, jwt, ES256, key.Public())
}

func equalJSON(a, b map[string]any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return bytes.Equal(x, y)
}

// verify checks jwt's signature with go-jose (the emulator checks them
// again with the standard library alone).
func verify(t *testing.T, jwt string, alg Alg, key any) {
	t.Helper()
	jws, err := jose.ParseSigned(jwt, []jose.SignatureAlgorithm{jose.SignatureAlgorithm(alg)})
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	if _, err := jws.Verify(key); err != nil {
		t.Fatalf("%s signature does not verify: %v", alg, err)
	}
}

// TestAssertionEveryAlg signs with each algorithm and verifies; the default
// audience is the token URL and the lifetime 60s.
func TestAssertionEveryAlg(t *testing.T) {
	rsaPEM := pemOf("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(rsaKey()))
	for _, tc := range []struct {
		alg Alg
		key []byte
		pub any
	}{
		{RS256, rsaPEM, rsaKey().Public()}, {RS384, rsaPEM, rsaKey().Public()}, {RS512, rsaPEM, rsaKey().Public()},
		{PS256, rsaPEM, rsaKey().Public()}, {PS384, rsaPEM, rsaKey().Public()}, {PS512, rsaPEM, rsaKey().Public()},
		{ES256, sec1(t, p256Key()), p256Key().Public()}, {ES384, sec1(t, p384Key()), p384Key().Public()},
		{EdDSA, pkcs8(t, edKey()), edKey().Public()},
		{HS256, nil, []byte(hmacKey32)}, {HS384, nil, []byte(strings.Repeat("k", 48))}, {HS512, nil, []byte(strings.Repeat("k", 64))},
	} {
		t.Run(string(tc.alg), func(t *testing.T) {
			var c Config
			if tc.key != nil {
				c = keyConfig(t, tc.key, tc.alg)
			} else {
				c = validConfig()
				c.ClientAuth, c.ClientSecret = AuthClientSecretJWT, string(tc.pub.([]byte))
				c.Assertion = &Assertion{Alg: tc.alg}
			}
			cl, err := NewClient(c, nil)
			if err != nil {
				t.Fatal(err)
			}
			jwt, err := cl.assert.assertion("https://auth.example.com/oauth/token")
			if err != nil {
				t.Fatal(err)
			}
			verify(t, jwt, tc.alg, tc.pub)
			header, claims := decodeJWT(t, jwt)
			if header["alg"] != string(tc.alg) || header["typ"] != "JWT" || len(header) != 2 {
				t.Errorf("header %v, want only alg %s and typ JWT", header, tc.alg)
			}
			if claims["aud"] != "https://auth.example.com/oauth/token" {
				t.Errorf("aud %v, want the token URL", claims["aud"])
			}
			iat, _ := claims["iat"].(json.Number).Int64()
			exp, _ := claims["exp"].(json.Number).Int64()
			if exp-iat != 60 {
				t.Errorf("exp - iat = %d, want the default 60", exp-iat)
			}
		})
	}
}

// TestClientSecretJWTKeySize: HMAC keys shorter than the hash are refused
// at NewClient (RFC 7518 section 3.2), without quoting the secret; HS256 is
// the default.
func TestClientSecretJWTKeySize(t *testing.T) {
	c := validConfig()
	c.ClientAuth = AuthClientSecretJWT
	_, err := NewClient(c, nil) // secretClient is 21 bytes
	if err == nil || !strings.Contains(err.Error(), "client_secret_jwt with HS256 needs a client_secret of at least 32 bytes") {
		t.Fatalf("error %v, want the short secret refused", err)
	}
	assertNoSecret(t, err.Error())
	c.ClientSecret = hmacKey32
	cl, err := NewClient(c, nil)
	if err != nil || cl.assert.alg != HS256 {
		t.Fatalf("32-byte secret: %v, alg %v; want HS256", err, cl)
	}
	c.Assertion = &Assertion{Alg: HS512}
	if _, err := NewClient(c, nil); err == nil || !strings.Contains(err.Error(), "at least 64 bytes") {
		t.Fatalf("HS512 with 32 bytes: %v, want refused", err)
	}
}

// TestJTIUnique: every assertion has its own jti.
func TestJTIUnique(t *testing.T) {
	c := validConfig()
	c.ClientAuth, c.ClientSecret = AuthClientSecretJWT, hmacKey32
	cl, err := NewClient(c, nil)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for range 2000 {
		jwt, err := cl.assert.assertion("https://auth.example.com/t")
		if err != nil {
			t.Fatal(err)
		}
		_, claims := decodeJWT(t, jwt)
		jti := claims["jti"].(string)
		if seen[jti] {
			t.Fatalf("jti %s repeated", jti)
		}
		seen[jti] = true
	}
}

// TestX5TRefusals: a certificate of another key, or no certificate, is
// refused with the file named.
func TestX5TRefusals(t *testing.T) {
	c := keyConfig(t, pkcs8(t, rsaKey()), "")
	c.Assertion.X5T = writeFile(t, "other.pem", pemOf("CERTIFICATE", selfSigned(t, rsaKey2()).Raw))
	_, err := NewClient(c, nil)
	if err == nil || !strings.Contains(err.Error(), "the certificate is not that of the assertion key") {
		t.Fatalf("error %v, want the mismatched certificate refused", err)
	}
	c.Assertion.X5T = writeFile(t, "key-not-cert.pem", pkcs8(t, rsaKey()))
	_, err = NewClient(c, nil)
	if err == nil || !strings.Contains(err.Error(), "no PEM CERTIFICATE block") || !strings.Contains(err.Error(), "key-not-cert.pem") {
		t.Fatalf("error %v, want the missing certificate refused with the file", err)
	}
}

// TestValidateAssertion checks what Validate refuses without reading a file.
func TestValidateAssertion(t *testing.T) {
	keyed := func(c *Config) {
		c.ClientSecret, c.Password = "", ""
		c.ClientAuth = AuthPrivateKeyJWT
		c.Assertion = &Assertion{Key: "/etc/keys/client.pem"}
	}
	for _, tc := range []struct {
		name    string
		mod     func(c *Config)
		wantErr string
	}{
		{"private_key_jwt valid", keyed, ""},
		{"private_key_jwt without key", func(c *Config) { keyed(c); c.Assertion.Key = "" }, "client_auth private_key_jwt needs assertion { key <pem file> }"},
		{"private_key_jwt without block", func(c *Config) { keyed(c); c.Assertion = nil }, "needs assertion { key"},
		{"private_key_jwt with client_secret", func(c *Config) { keyed(c); c.ClientSecret = secretClient }, "client_auth private_key_jwt sends no secret: remove client_secret"},
		{"private_key_jwt with HS256", func(c *Config) { keyed(c); c.Assertion.Alg = HS256 }, "alg HS256 signs with the client secret"},
		{"private_key_jwt with alg none", func(c *Config) { keyed(c); c.Assertion.Alg = "none" }, "alg none is refused"},
		{"private_key_jwt password grant", func(c *Config) { keyed(c); c.Grant = Password; c.Password = secretPassword }, ""},
		{"private_key_jwt password grant without client_id", func(c *Config) { keyed(c); c.Grant = Password; c.Password = secretPassword; c.ClientID = "" }, "needs client_id"},
		{"client_secret_jwt valid", func(c *Config) { c.ClientAuth = AuthClientSecretJWT }, ""},
		{"client_secret_jwt without secret", func(c *Config) { c.ClientAuth = AuthClientSecretJWT; c.ClientSecret = "" }, "needs client_secret"},
		{"client_secret_jwt with key", func(c *Config) { c.ClientAuth = AuthClientSecretJWT; c.Assertion = &Assertion{Key: "/k.pem"} }, "assertion key is for private_key_jwt"},
		{"client_secret_jwt with x5t", func(c *Config) { c.ClientAuth = AuthClientSecretJWT; c.Assertion = &Assertion{X5T: "/c.pem"} }, "x5t names the certificate of a key"},
		{"client_secret_jwt with RS256", func(c *Config) { c.ClientAuth = AuthClientSecretJWT; c.Assertion = &Assertion{Alg: RS256} }, "signs with HMAC (HS256, HS384 or HS512), not RS256"},
		{"assertion with basic", func(c *Config) { c.Assertion = &Assertion{Key: "/k.pem"} }, "assertion is only used with client_auth private_key_jwt or client_secret_jwt"},
		{"lifetime under a second", func(c *Config) { keyed(c); c.Assertion.Lifetime = time.Millisecond }, "at least 1s"},
		{"lifetime over an hour", func(c *Config) { keyed(c); c.Assertion.Lifetime = 2 * time.Hour }, "at most 1h0m0s"},
		{"negative lifetime", func(c *Config) { keyed(c); c.Assertion.Lifetime = -time.Second }, "must be positive"},
		{"reserved claim", func(c *Config) { keyed(c); c.Assertion.Claims = map[string]string{"aud": "x"} }, `assertion claim "aud" is set by the module itself`},
		{"reserved claim nbf", func(c *Config) { keyed(c); c.Assertion.Claims = map[string]string{"nbf": "0"} }, `claim "nbf"`},
		{"free claim", func(c *Config) { keyed(c); c.Assertion.Claims = map[string]string{"tenant": "x"} }, ""},
		{"Authorization header with private_key_jwt", func(c *Config) { keyed(c); c.Headers = map[string]string{"Authorization": "x"} }, `token_header "Authorization" is set by the module itself`},
		{"reserved param client_assertion", func(c *Config) { keyed(c); c.Params = map[string]string{"client_assertion": "x"} }, `param "client_assertion" is set by the module itself`},
		{"tls_client_auth valid", func(c *Config) { c.ClientAuth = AuthTLSClient; c.ClientSecret, c.Password = "", "" }, ""},
		{"tls_client_auth with client_secret", func(c *Config) { c.ClientAuth = AuthTLSClient }, "client_auth tls_client_auth sends no secret"},
		{"tls_client_auth with assertion", func(c *Config) {
			c.ClientAuth = AuthTLSClient
			c.ClientSecret, c.Password = "", ""
			c.Assertion = &Assertion{}
		}, "assertion is only used with"},
		{"issuer instead of token_url", func(c *Config) { c.TokenURL = ""; c.Issuer = "https://idp.example.com/realms/x" }, ""},
		{"neither token_url nor issuer", func(c *Config) { c.TokenURL = "" }, "token_url is required (or issuer, or a provider preset)"},
		{"issuer with query", func(c *Config) { c.TokenURL = ""; c.Issuer = "https://idp.example.com/?tenant=1" }, "issuer: an issuer identifier has no query or fragment"},
		{"issuer http", func(c *Config) { c.TokenURL = ""; c.Issuer = "http://idp.example.com" }, "issuer: http:// is only allowed for a loopback host"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := validConfig()
			tc.mod(&c)
			err := c.Validate()
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Validate() = %v, want it to say %q", err, tc.wantErr)
			}
			assertNoSecret(t, err.Error())
		})
	}
}

// TestAssertionRequests: with private_key_jwt, the token request and the
// refresh_token grant each carry client_id, client_assertion_type and a new
// client_assertion, and neither an Authorization header nor client_secret;
// tls_client_auth sends client_id alone.
func TestAssertionRequests(t *testing.T) {
	c := keyConfig(t, pkcs8(t, edKey()), "")
	c.Scopes = []string{"read"}
	var jtis []string
	for _, call := range []struct {
		name string
		fn   func(context.Context, *Client) (*Token, error)
		want map[string]string
	}{
		{"client_credentials", grantCall, map[string]string{"grant_type": "client_credentials", "scope": "read"}},
		{"refresh_token", func(ctx context.Context, c *Client) (*Token, error) { return c.Refresh(ctx, "rt-1") },
			map[string]string{"grant_type": "refresh_token", "refresh_token": "rt-1"}},
	} {
		t.Run(call.name, func(t *testing.T) {
			r := capture(t, c, "/oauth/token", call.fn)
			assertCommon(t, r, "/oauth/token")
			if v := r.Header.Values("Authorization"); len(v) != 0 {
				t.Errorf("Authorization header sent with private_key_jwt")
			}
			fields := bodyFields(t, r)
			jwt := fields["client_assertion"]
			want := map[string]string{"client_id": "client-id", "client_assertion_type": JWTBearer, "client_assertion": jwt}
			for k, v := range call.want {
				want[k] = v
			}
			assertFields(t, fields, want)
			verify(t, jwt, EdDSA, edKey().Public())
			_, claims := decodeJWT(t, jwt)
			if !strings.HasSuffix(claims["aud"].(string), "/oauth/token") {
				t.Errorf("aud %v, want the token URL", claims["aud"])
			}
			jtis = append(jtis, claims["jti"].(string))
		})
	}
	if len(jtis) == 2 && jtis[0] == jtis[1] {
		t.Errorf("the two requests carried the same jti")
	}
	t.Run("tls_client_auth", func(t *testing.T) {
		c := validConfig()
		c.ClientAuth, c.ClientSecret, c.Password = AuthTLSClient, "", ""
		r := capture(t, c, "/token", grantCall)
		if v := r.Header.Values("Authorization"); len(v) != 0 {
			t.Errorf("Authorization header sent with tls_client_auth")
		}
		assertFields(t, bodyFields(t, r), map[string]string{"grant_type": "client_credentials", "client_id": "client-id"})
	})
}

// BenchmarkAssertion is the cost of one client assertion per algorithm:
// claims, jti, signature and serialization. It is paid once per token
// request, not per proxied request.
func BenchmarkAssertion(b *testing.B) {
	rsaPEM := pkcs8(b, rsaKey())
	for _, tc := range []struct {
		alg Alg
		key []byte
	}{
		{RS256, rsaPEM}, {PS256, rsaPEM}, {ES256, sec1(b, p256Key())}, {ES384, sec1(b, p384Key())},
		{EdDSA, pkcs8(b, edKey())}, {HS256, nil},
	} {
		b.Run(string(tc.alg), func(b *testing.B) {
			var c Config
			if tc.key != nil {
				c = keyConfig(b, tc.key, tc.alg)
			} else {
				c = validConfig()
				c.ClientAuth, c.ClientSecret = AuthClientSecretJWT, hmacKey32
			}
			cl, err := NewClient(c, nil)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := cl.assert.assertion("https://auth.example.com/oauth/token"); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestAssertionEchoWithheld: a provider error that quotes the assertion
// it was sent (an echoing endpoint) reaches the caller without it.
func TestAssertionEchoWithheld(t *testing.T) {
	var s *server
	s = newServer(t, func(w http.ResponseWriter, r *http.Request) {
		reqs := s.requests() // the body is read by the recorder
		form, _ := url.ParseQuery(string(reqs[len(reqs)-1].Body))
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		jwt := form.Get("client_assertion")
		sig := jwt[strings.LastIndexByte(jwt, '.')+1:]
		_ = json.NewEncoder(w).Encode(map[string]string{"error": "invalid_client", "error_description": "bad signature " + sig[:40]})
	})
	c := keyConfig(t, pkcs8(t, edKey()), "")
	c.TokenURL = s.URL + "/token"
	_, err := newClient(t, c).Token(context.Background())
	pe, ok := errors.AsType[*ProviderError](err)
	if !ok || pe.Code != "invalid_client" || pe.Description != withheld {
		t.Fatalf("error %v, want invalid_client with the description withheld", err)
	}
}
