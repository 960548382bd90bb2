package emulator

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// The IdP emulator's own tests: a well-formed assertion is accepted with no
// violation, and each deviation a client could make is caught. Assertions
// are built here by hand with the standard library.

const idpSecret = "hmac-secret-0123456789abcdefghijklmnopqrstuvwxyz"

// jwtParts signs header and claims (JSON objects) with HS256 over
// idpSecret, or with key when set (ES256, r||s).
func signJWT(t *testing.T, header, claims map[string]any, key *ecdsa.PrivateKey) string {
	t.Helper()
	enc := func(v map[string]any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return base64.RawURLEncoding.EncodeToString(b)
	}
	input := enc(header) + "." + enc(claims)
	var sig []byte
	if key == nil {
		mac := hmac.New(sha256.New, []byte(idpSecret))
		mac.Write([]byte(input))
		sig = mac.Sum(nil)
	} else {
		d := sha256.Sum256([]byte(input))
		r, s, err := ecdsa.Sign(rand.Reader, key, d[:])
		if err != nil {
			t.Fatal(err)
		}
		sig = append(r.FillBytes(make([]byte, 32)), s.FillBytes(make([]byte, 32))...)
	}
	return input + "." + base64.RawURLEncoding.EncodeToString(sig)
}

func goodClaims(aud string) map[string]any {
	now := time.Now().Unix()
	jti := make([]byte, 16)
	_, _ = rand.Read(jti)
	return map[string]any{"iss": "gw", "sub": "gw", "aud": aud, "iat": now, "exp": now + 60, "jti": base64.RawURLEncoding.EncodeToString(jti)}
}

// postAssertion sends a token request with assertion jwt and the given
// changes to the form and header; it returns the status.
func postAssertion(t *testing.T, p *IdP, jwt string, form url.Values, header http.Header) int {
	t.Helper()
	if form == nil {
		form = url.Values{}
	}
	for k, v := range map[string]string{"grant_type": "client_credentials", "client_id": "gw", "client_assertion_type": JWTBearer, "client_assertion": jwt} {
		if _, set := form[k]; !set {
			form.Set(k, v)
		}
	}
	for k, v := range form {
		if len(v) == 1 && v[0] == "-" {
			form.Del(k)
		}
	}
	req, err := http.NewRequest(http.MethodPost, p.TokenURL(), strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

func startTestIdP(t *testing.T, cfg IdPConfig) *IdP {
	t.Helper()
	cfg.ClientID = "gw"
	p := NewIdP(cfg)
	p.Start()
	t.Cleanup(p.Close)
	return p
}

// TestIdPAcceptsGoodAssertion: HS256 and ES256 assertions as RFC 7523
// wants them get a token and no violation; the token is Valid.
func TestIdPAcceptsGoodAssertion(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	for _, tc := range []struct {
		name string
		cfg  IdPConfig
		key  *ecdsa.PrivateKey
	}{
		{"HS256", IdPConfig{Auth: ClientSecretJWT, Secret: idpSecret, Alg: "HS256"}, nil},
		{"ES256", IdPConfig{Auth: PrivateKeyJWT, PublicKey: &key.PublicKey, Alg: "ES256"}, key},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := startTestIdP(t, tc.cfg)
			jwt := signJWT(t, map[string]any{"alg": tc.cfg.Alg, "typ": "JWT"}, goodClaims(p.TokenURL()), tc.key)
			if status := postAssertion(t, p, jwt, nil, nil); status != http.StatusOK {
				t.Fatalf("status %d, violations %q", status, p.Violations())
			}
			if v := p.Violations(); len(v) != 0 {
				t.Fatalf("violations for a good request: %q", v)
			}
			if toks := p.Tokens(); len(toks) != 1 || !p.Valid(toks[0]) {
				t.Errorf("issued %d tokens, valid: %v", len(toks), len(toks) == 1 && p.Valid(toks[0]))
			}
		})
	}
}

// TestIdPCatchesDeviations: each deviation is a violation, answered with an
// error, and the violation never quotes the assertion or the secret.
func TestIdPCatchesDeviations(t *testing.T) {
	cfg := IdPConfig{Auth: ClientSecretJWT, Secret: idpSecret, Alg: "HS256", KeyID: "k1", Claims: map[string]string{"tenant": "acme"}}
	head := func() map[string]any { return map[string]any{"alg": "HS256", "typ": "JWT", "kid": "k1"} }
	claims := func(p *IdP) map[string]any {
		c := goodClaims(p.TokenURL())
		c["tenant"] = "acme"
		return c
	}
	for _, tc := range []struct {
		name   string
		jwt    func(p *IdP) string
		form   url.Values
		header http.Header
		want   string
	}{
		{"wrong signature", func(p *IdP) string {
			j := signJWT(t, head(), claims(p), nil)
			return j[:len(j)-4] + "AAAA"
		}, nil, nil, "HMAC does not verify"},
		{"alg confusion", func(p *IdP) string {
			h := head()
			h["alg"] = "none"
			return signJWT(t, h, claims(p), nil)
		}, nil, nil, `JOSE header alg "none", want "HS256"`},
		{"no typ", func(p *IdP) string { h := head(); delete(h, "typ"); return signJWT(t, h, claims(p), nil) }, nil, nil, "JOSE header has no typ"},
		{"wrong kid", func(p *IdP) string { h := head(); h["kid"] = "k2"; return signJWT(t, h, claims(p), nil) }, nil, nil, `JOSE header kid "k2", want "k1"`},
		{"extra header", func(p *IdP) string { h := head(); h["jku"] = "https://x"; return signJWT(t, h, claims(p), nil) }, nil, nil, `unexpected JOSE header "jku"`},
		{"wrong aud", func(p *IdP) string { c := claims(p); c["aud"] = "https://other"; return signJWT(t, head(), c, nil) }, nil, nil, `aud "https://other"`},
		{"wrong iss", func(p *IdP) string { c := claims(p); c["iss"] = "x"; return signJWT(t, head(), c, nil) }, nil, nil, `iss "x" is not the client id`},
		{"wrong lifetime", func(p *IdP) string {
			c := claims(p)
			c["exp"] = c["iat"].(int64) + 600
			return signJWT(t, head(), c, nil)
		}, nil, nil, "exp - iat = 600s, want 60s"},
		{"expired", func(p *IdP) string {
			c := claims(p)
			c["iat"], c["exp"] = time.Now().Unix()-120, time.Now().Unix()-60
			return signJWT(t, head(), c, nil)
		}, nil, nil, "exp has passed"},
		{"short jti", func(p *IdP) string { c := claims(p); c["jti"] = "abc"; return signJWT(t, head(), c, nil) }, nil, nil, "shorter than 128 bits"},
		{"missing claim", func(p *IdP) string { c := claims(p); delete(c, "tenant"); return signJWT(t, head(), c, nil) }, nil, nil, "no tenant claim"},
		{"extra claim", func(p *IdP) string { c := claims(p); c["nbf"] = 1; return signJWT(t, head(), c, nil) }, nil, nil, `unexpected claim "nbf"`},
		{"wrong assertion type", func(p *IdP) string { return signJWT(t, head(), claims(p), nil) },
			url.Values{"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:saml2-bearer"}}, nil, "client_assertion_type"},
		{"client_secret too", func(p *IdP) string { return signJWT(t, head(), claims(p), nil) },
			url.Values{"client_secret": {idpSecret}}, nil, "client_secret sent with client_secret_jwt"},
		{"Authorization header", func(p *IdP) string { return signJWT(t, head(), claims(p), nil) },
			nil, http.Header{"Authorization": {"Basic Z3c6eA=="}}, "Authorization header with client_secret_jwt"},
		{"no client_id", func(p *IdP) string { return signJWT(t, head(), claims(p), nil) },
			url.Values{"client_id": {"-"}}, nil, "no client_id"},
		{"padded base64", func(p *IdP) string { return signJWT(t, head(), claims(p), nil) + "=" }, nil, nil, "is not unpadded base64url"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := startTestIdP(t, cfg)
			jwt := tc.jwt(p)
			if status := postAssertion(t, p, jwt, tc.form, tc.header); status == http.StatusOK {
				t.Errorf("answered 200 to a deviating request")
			}
			v := strings.Join(p.Violations(), "\n")
			if !strings.Contains(v, tc.want) {
				t.Errorf("violations %q do not say %q", v, tc.want)
			}
			if strings.Contains(v, idpSecret) || strings.Contains(v, strings.Split(jwt, ".")[2]) {
				t.Errorf("a violation quotes the secret or the assertion: %s", v)
			}
		})
	}
}

// TestIdPRefusesReplay: the same assertion twice is a violation the second
// time.
func TestIdPRefusesReplay(t *testing.T) {
	p := startTestIdP(t, IdPConfig{Auth: ClientSecretJWT, Secret: idpSecret, Alg: "HS256"})
	jwt := signJWT(t, map[string]any{"alg": "HS256", "typ": "JWT"}, goodClaims(p.TokenURL()), nil)
	if status := postAssertion(t, p, jwt, nil, nil); status != http.StatusOK {
		t.Fatalf("first use: %d %q", status, p.Violations())
	}
	if status := postAssertion(t, p, jwt, nil, nil); status == http.StatusOK {
		t.Fatalf("replayed assertion accepted")
	}
	if v := p.Violations(); len(v) != 1 || !strings.Contains(v[0], "jti replayed") {
		t.Errorf("violations %q, want one jti replay", v)
	}
}

// TestIdPMetadata: the documents are served as configured, with the
// issuer and token endpoint; an unserved one is 404 without violation.
func TestIdPMetadata(t *testing.T) {
	p := startTestIdP(t, IdPConfig{Auth: PrivateKeyJWT, IssuerPath: "/realms/x", Metadata: MetadataOIDC})
	get := func(path string) (int, map[string]any) {
		req, _ := http.NewRequest(http.MethodGet, p.URL()+path, nil)
		req.Header.Set("Accept", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var doc map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&doc)
		return resp.StatusCode, doc
	}
	if status, _ := get("/.well-known/oauth-authorization-server/realms/x"); status != http.StatusNotFound {
		t.Errorf("RFC 8414 document served with MetadataOIDC: %d", status)
	}
	status, doc := get("/realms/x/.well-known/openid-configuration")
	if status != http.StatusOK || doc["issuer"] != p.Issuer() || doc["token_endpoint"] != p.TokenURL() {
		t.Errorf("OIDC document %d %v, want issuer %s and token_endpoint %s", status, doc, p.Issuer(), p.TokenURL())
	}
	p.SetMetadataIssuer("https://evil.example.com")
	p.SetTokenEndpoint("http://idp.example.com/token")
	if _, doc := get("/realms/x/.well-known/openid-configuration"); doc["issuer"] != "https://evil.example.com" || doc["token_endpoint"] != "http://idp.example.com/token" {
		t.Errorf("overrides not served: %v", doc)
	}
	if p.RFC8414Requests() != 1 || p.OIDCRequests() != 2 || len(p.Violations()) != 0 {
		t.Errorf("RFC 8414 %d, OIDC %d requests, violations %q", p.RFC8414Requests(), p.OIDCRequests(), p.Violations())
	}
}

// TestIdPTLSClientAuthWithoutTLS: tls_client_auth over a connection with
// no client certificate is a violation.
func TestIdPTLSClientAuthWithoutTLS(t *testing.T) {
	p := startTestIdP(t, IdPConfig{Auth: TLSClientAuth, ClientSubject: "CN=gw"})
	status := postAssertion(t, p, "", url.Values{"client_assertion_type": {"-"}, "client_assertion": {"-"}}, nil)
	if status == http.StatusOK {
		t.Errorf("answered 200 without a client certificate")
	}
	if v := strings.Join(p.Violations(), "\n"); !strings.Contains(v, "tls_client_auth without a verified client certificate") {
		t.Errorf("violations %q", v)
	}
}
