package emulator

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rsa"
	"crypto/sha1" //nolint:gosec // x5t is the SHA-1 thumbprint (RFC 7515)
	"crypto/sha256"
	_ "crypto/sha512" // SHA-384 and SHA-512 for crypto.Hash.New
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// IdP emulates an OAuth 2.0 authorization server of the kind enterprise
// identity providers run (Entra ID, Okta, Keycloak) for a client that
// proves itself with a key: private_key_jwt or client_secret_jwt (RFC 7523
// section 2.2, OpenID Connect Core section 9), or tls_client_auth (RFC 8705
// section 2). It serves the token endpoint and the issuer's metadata (RFC
// 8414 and OpenID Connect Discovery).
//
// It checks every detail of a token request and records each deviation as a
// violation (see [IdP.Violations]), answered with an RFC 6749 error:
// method, query, Accept, Content-Type, no Authorization header, the exact
// set of form fields (never client_secret), grant_type, client_id, and for
// an assertion: client_assertion_type exactly
// urn:ietf:params:oauth:client-assertion-type:jwt-bearer, the compact JWS
// form, the JOSE header (alg as configured, typ JWT, kid and x5t/x5t#S256 as
// configured and nothing else), the signature (verified with the standard
// library alone, never with the library the module signs with), the claims
// iss and sub (the client id), aud, iat (now), exp (iat plus the configured
// lifetime, not past), a jti of at least 128 bits never seen before, and the
// configured extra claims, exactly. For tls_client_auth: a verified client
// certificate with the configured subject on the connection.
//
// Violation strings never carry credential values.
type IdP struct {
	cfg IdPConfig

	tokenRequests, issued, refreshGrants atomic.Int64
	rfc8414Requests, oidcRequests, stale atomic.Int64

	mu            sync.Mutex
	srv           *httptest.Server
	mode          Mode
	tokenPath     string
	oldPaths      []string             // token paths before SetTokenPath: 404, not a violation
	endpoint      string               // advertised token_endpoint, when not our own
	issuer        string               // advertised issuer, when not our own
	tokenStore                         // the tokens issued
	assertions    []string             // every client_assertion received, for leak checks
	jtis          map[string]time.Time // jti -> exp, for replay detection
	decoded       []DecodedRequest
	violations    []string
	clientSubject string
}

// ClientAuth is the client authentication an [IdP] requires.
type ClientAuth string

// Client authentication methods.
const (
	PrivateKeyJWT   ClientAuth = "private_key_jwt"
	ClientSecretJWT ClientAuth = "client_secret_jwt"
	TLSClientAuth   ClientAuth = "tls_client_auth"
)

// Metadata says which metadata documents an [IdP] serves; the others
// answer 404 (which a client probing for them may get without violation).
type Metadata int

const (
	// MetadataBoth serves RFC 8414's and OpenID Connect's. The default.
	MetadataBoth Metadata = iota
	// MetadataRFC8414 serves only /.well-known/oauth-authorization-server.
	MetadataRFC8414
	// MetadataOIDC serves only /.well-known/openid-configuration.
	MetadataOIDC
)

// JWTBearer is the client_assertion_type of RFC 7523.
const JWTBearer = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" //nolint:gosec // G101: a URN, not a credential

// IdPKind is what an [IdP]'s Kind returns, and what [Backend] answers for
// its tokens ("ok idp"). Untyped: it is no provider kind of [New].
const IdPKind = "idp"

// IdPConfig describes the client an [IdP] accepts.
type IdPConfig struct {
	ClientID string
	Auth     ClientAuth
	// PublicKey verifies private_key_jwt signatures: *rsa.PublicKey,
	// *ecdsa.PublicKey or ed25519.PublicKey.
	PublicKey crypto.PublicKey
	// Secret is the HMAC key of client_secret_jwt.
	Secret string
	// Alg is the alg the JOSE header must name (and the one the signature
	// is verified with, whatever the header says).
	Alg string
	// KeyID, when set, is the kid the header must carry; unset, there must
	// be none.
	KeyID string
	// Certificate, when set, is the certificate whose SHA-1 and SHA-256
	// thumbprints x5t and x5t#S256 must be; unset, there must be none.
	Certificate *x509.Certificate
	// Audience is the aud the assertion must carry; unset, the URL of the
	// token endpoint the request was sent to.
	Audience string
	// Lifetime is exp - iat (default 60s).
	Lifetime time.Duration
	// Claims are the extra claims the assertion must carry, exactly.
	Claims map[string]string
	// ClientSubject is, for tls_client_auth, the subject DN
	// (x509.Certificate.Subject.String()) of the client certificate.
	ClientSubject string
	// IssuerPath is the path of the issuer identifier, e.g. "/realms/acme"
	// (default none: the issuer is the server's URL). The token endpoint is
	// IssuerPath + "/protocol/openid-connect/token".
	IssuerPath string
	// Metadata says which metadata documents are served.
	Metadata Metadata
	// Scope, when set, must be sent exactly; unset, none may be.
	Scope string
	// TTL is the lifetime of access tokens (default 1h).
	TTL time.Duration
	// IssueRefreshTokens adds a refresh_token (rotating) to every answer.
	IssueRefreshTokens bool
}

// DecodedRequest is a token request as the IdP read it, with the
// assertion's signature elided, for a test to show.
type DecodedRequest struct {
	Method, Path string
	Form         url.Values      // client_assertion replaced by a note
	Header       json.RawMessage // JOSE header (indented JSON)
	Claims       json.RawMessage // claims (indented JSON)
}

// NewIdP returns an IdP for cfg, in mode Up.
func NewIdP(cfg IdPConfig) *IdP {
	if cfg.TTL <= 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.Lifetime <= 0 {
		cfg.Lifetime = time.Minute
	}
	return &IdP{
		cfg:        cfg,
		tokenPath:  cfg.IssuerPath + "/protocol/openid-connect/token",
		tokenStore: tokenStore{tokens: map[string]*tokenState{}},
		jtis:       map[string]time.Time{},
	}
}

// Kind returns IdPKind.
func (p *IdP) Kind() Kind { return Kind(IdPKind) }

// Start serves p over plain HTTP on 127.0.0.1.
func (p *IdP) Start() *httptest.Server { return p.start(httptest.NewServer(p)) }

// StartTLS serves p over TLS with cfg on 127.0.0.1 (for tls_client_auth, a
// cfg that requires and verifies client certificates).
func (p *IdP) StartTLS(cfg *tls.Config) *httptest.Server {
	srv := httptest.NewUnstartedServer(p)
	srv.TLS = cfg
	srv.StartTLS()
	return p.start(srv)
}

func (p *IdP) start(srv *httptest.Server) *httptest.Server {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.srv != nil {
		srv.Close()
		panic("emulator: IdP already started")
	}
	p.srv = srv
	return srv
}

// Close closes the server.
func (p *IdP) Close() {
	p.mu.Lock()
	srv := p.srv
	p.mu.Unlock()
	if srv != nil {
		srv.Close()
	}
}

// URL is the server's base URL.
func (p *IdP) URL() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.srv == nil {
		return ""
	}
	return p.srv.URL
}

// Issuer is the issuer identifier: URL() + IssuerPath.
func (p *IdP) Issuer() string { return p.URL() + p.cfg.IssuerPath }

// TokenURL is the token endpoint's URL.
func (p *IdP) TokenURL() string {
	p.mu.Lock()
	path := p.tokenPath
	p.mu.Unlock()
	return p.URL() + path
}

// RFC8414Path is the path of the RFC 8414 metadata document.
func (p *IdP) RFC8414Path() string {
	return "/.well-known/oauth-authorization-server" + p.cfg.IssuerPath
}

// OIDCPath is the path of the OpenID Connect Discovery document.
func (p *IdP) OIDCPath() string { return p.cfg.IssuerPath + "/.well-known/openid-configuration" }

// SetMode sets how the token endpoint and the metadata answer: Up, or
// Down (503). Other modes answer as Up.
func (p *IdP) SetMode(m Mode) {
	p.mu.Lock()
	p.mode = m
	p.mu.Unlock()
}

// SetTokenPath moves the token endpoint to path: the metadata names it from
// now on, and the old path answers 404 (counted by StaleRequests, not a
// violation: a client learns of the move from that answer).
func (p *IdP) SetTokenPath(path string) {
	p.mu.Lock()
	p.oldPaths = append(p.oldPaths, p.tokenPath)
	p.tokenPath = path
	p.mu.Unlock()
}

// SetTokenEndpoint makes the metadata name u as token_endpoint instead of
// the IdP's own ("" for its own again).
func (p *IdP) SetTokenEndpoint(u string) {
	p.mu.Lock()
	p.endpoint = u
	p.mu.Unlock()
}

// SetMetadataIssuer makes the metadata name issuer instead of the IdP's
// own ("" for its own again).
func (p *IdP) SetMetadataIssuer(issuer string) {
	p.mu.Lock()
	p.issuer = issuer
	p.mu.Unlock()
}

// Secret is the configured HMAC secret, for leak checks.
func (p *IdP) Secret() string { return p.cfg.Secret }

// TokenRequests counts requests to the token endpoint, whatever the outcome.
func (p *IdP) TokenRequests() int64 { return p.tokenRequests.Load() }

// Issued counts access tokens issued.
func (p *IdP) Issued() int64 { return p.issued.Load() }

// RefreshGrants counts successful refresh_token grants.
func (p *IdP) RefreshGrants() int64 { return p.refreshGrants.Load() }

// RFC8414Requests counts requests for the RFC 8414 document, served or not.
func (p *IdP) RFC8414Requests() int64 { return p.rfc8414Requests.Load() }

// OIDCRequests counts requests for the OpenID Connect document, served or
// not.
func (p *IdP) OIDCRequests() int64 { return p.oidcRequests.Load() }

// MetadataRequests counts requests for either metadata document.
func (p *IdP) MetadataRequests() int64 { return p.RFC8414Requests() + p.OIDCRequests() }

// StaleRequests counts token requests to a path the endpoint moved from.
func (p *IdP) StaleRequests() int64 { return p.stale.Load() }

// Violations returns every violation recorded so far, oldest first.
func (p *IdP) Violations() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.violations)
}

// Valid reports whether token is a current access token of p.
func (p *IdP) Valid(token string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.validLocked(token)
}

// Tokens returns every access token issued, for leak checks.
func (p *IdP) Tokens() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.accessOrder)
}

// RefreshTokens returns every refresh token issued, for leak checks.
func (p *IdP) RefreshTokens() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.refreshOrder)
}

// Assertions returns every client_assertion received (up to 10000), for
// leak checks: an assertion is a credential while it lives.
func (p *IdP) Assertions() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.assertions)
}

// JTIs returns the distinct jti values received.
func (p *IdP) JTIs() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.jtis)
}

// Decoded returns the last token requests as read (at most 100).
func (p *IdP) Decoded() []DecodedRequest {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.decoded)
}

// ClientSubject returns the subject of the last client certificate seen.
func (p *IdP) ClientSubject() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.clientSubject
}

// ServeHTTP routes the token endpoint and the metadata documents; any
// other path is a violation, answered 404.
func (p *IdP) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	tokenPath, old := p.tokenPath, slices.Contains(p.oldPaths, r.URL.Path)
	p.mu.Unlock()
	switch r.URL.Path {
	case tokenPath:
		p.serveToken(w, r)
		return
	case p.RFC8414Path():
		p.rfc8414Requests.Add(1)
		p.serveMetadata(w, r, p.cfg.Metadata != MetadataOIDC)
		return
	case p.OIDCPath():
		p.oidcRequests.Add(1)
		p.serveMetadata(w, r, p.cfg.Metadata != MetadataRFC8414)
		return
	}
	if old {
		p.stale.Add(1)
		oauthError(http.StatusNotFound, "invalid_request", "No such endpoint")(w)
		return
	}
	c := &check{}
	c.violation(oauthError(http.StatusNotFound, "invalid_request", "No such endpoint"),
		"no such endpoint (token endpoint is POST %s)", tokenPath)
	p.finish(w, r, c, c.resp)
}

// serveMetadata answers a metadata request: the document if served is
// true, else 404.
func (p *IdP) serveMetadata(w http.ResponseWriter, r *http.Request, served bool) {
	c := &check{}
	invalid := oauthError(http.StatusBadRequest, "invalid_request", "Bad metadata request")
	if c.method(r, http.MethodGet, func(status int, msg string) response { return oauthError(status, "invalid_request", msg) }) {
		c.noQuery(r, invalid)
		c.acceptJSON(r, invalid)
		if len(r.Header.Values("Authorization")) > 0 {
			c.violation(invalid, "Authorization header on a metadata request")
		}
	}
	p.mu.Lock()
	mode, issuer, endpoint, tokenPath := p.mode, p.issuer, p.endpoint, p.tokenPath
	p.mu.Unlock()
	resp := c.resp
	switch {
	case resp != nil:
	case mode == Down:
		resp = down
	case !served:
		resp = oauthError(http.StatusNotFound, "invalid_request", "No such document")
	default:
		if issuer == "" {
			issuer = p.Issuer()
		}
		if endpoint == "" {
			endpoint = p.URL() + tokenPath
		}
		doc := map[string]any{
			"issuer":                                issuer,
			"token_endpoint":                        endpoint,
			"token_endpoint_auth_methods_supported": []string{string(p.cfg.Auth)},
			"grant_types_supported":                 []string{"client_credentials", "refresh_token"},
			"jwks_uri":                              p.Issuer() + "/protocol/openid-connect/certs",
		}
		if p.cfg.Alg != "" {
			doc["token_endpoint_auth_signing_alg_values_supported"] = []string{p.cfg.Alg}
		}
		resp = func(w http.ResponseWriter) { writeJSON(w, http.StatusOK, doc) }
	}
	p.finish(w, r, c, resp)
}

func (p *IdP) serveToken(w http.ResponseWriter, r *http.Request) {
	p.tokenRequests.Add(1)
	c := &check{}
	refresh := p.checkToken(c, w, r)
	p.mu.Lock()
	mode := p.mode
	p.mu.Unlock()
	resp := c.resp
	switch {
	case resp != nil:
	case mode == Down:
		resp = down
	default:
		resp = p.grant(c, refresh)
	}
	p.finish(w, r, c, resp)
}

// checkToken inspects a token request; it returns the refresh token of a
// refresh_token grant.
func (p *IdP) checkToken(c *check, w http.ResponseWriter, r *http.Request) (refresh string) {
	invalid := func(status int, desc string) response { return oauthError(status, "invalid_request", desc) }
	badClient := oauthError(http.StatusUnauthorized, "invalid_client", "Client authentication failed")
	if !c.method(r, http.MethodPost, invalid) {
		return ""
	}
	c.noQuery(r, invalid(http.StatusBadRequest, "Query parameters are not supported"))
	c.acceptJSON(r, invalid(http.StatusBadRequest, "Accept must allow application/json"))
	if len(r.Header.Values("Authorization")) > 0 {
		c.violation(invalid(http.StatusBadRequest, "Use only one client authentication method"),
			"Authorization header with %s (one client authentication method per request)", p.cfg.Auth)
	}
	c.contentType(r, "application/x-www-form-urlencoded", invalid(http.StatusBadRequest, "Content-Type must be application/x-www-form-urlencoded"))
	body, ok := c.body(w, r, invalid(http.StatusRequestEntityTooLarge, "Request body too large"))
	if !ok {
		return ""
	}
	allowed := []string{"grant_type", "client_id", "refresh_token"}
	if p.cfg.Scope != "" {
		allowed = append(allowed, "scope")
	}
	if p.cfg.Auth != TLSClientAuth {
		allowed = append(allowed, "client_assertion_type", "client_assertion")
	}
	form := c.form(body, allowed, invalid(http.StatusBadRequest, "Malformed or unexpected parameters"))
	if form.Has("client_secret") {
		c.violation(badClient, "client_secret sent with %s", p.cfg.Auth)
	}
	switch grant := form.Get("grant_type"); grant {
	case "client_credentials":
		if form.Has("refresh_token") {
			c.violation(invalid(http.StatusBadRequest, "Unexpected refresh_token"), "refresh_token with grant_type client_credentials")
		}
		if p.cfg.Scope != "" && form.Get("scope") != p.cfg.Scope {
			c.violation(oauthError(http.StatusBadRequest, "invalid_scope", "Invalid scope"), "scope %q, want %q", clip(form.Get("scope")), p.cfg.Scope)
		}
	case "refresh_token":
		refresh = form.Get("refresh_token")
		if refresh == "" {
			c.violation(invalid(http.StatusBadRequest, "Missing refresh_token"), "refresh_token grant without refresh_token")
		}
	case "":
		c.violation(invalid(http.StatusBadRequest, "Missing grant_type"), "no grant_type")
	default:
		c.violation(oauthError(http.StatusBadRequest, "unsupported_grant_type", "Unsupported grant type"), "grant_type %q", clip(grant))
	}
	switch id := form.Get("client_id"); {
	case id == "":
		c.violation(badClient, "no client_id")
	case id != p.cfg.ClientID:
		c.violation(badClient, "client_id %q is not the configured one", clip(id))
	}
	dec := DecodedRequest{Method: r.Method, Path: r.URL.Path, Form: url.Values{}}
	for k, v := range form {
		dec.Form[k] = slices.Clone(v)
	}
	switch p.cfg.Auth {
	case PrivateKeyJWT, ClientSecretJWT:
		if typ := form.Get("client_assertion_type"); typ != JWTBearer {
			c.violation(badClient, "client_assertion_type %q, want %s", clip(typ), JWTBearer)
		}
		jwt := form.Get("client_assertion")
		if jwt == "" {
			c.violation(badClient, "no client_assertion")
			break
		}
		p.mu.Lock()
		if len(p.assertions) < 10000 {
			p.assertions = append(p.assertions, jwt)
		}
		p.mu.Unlock()
		dec.Form.Set("client_assertion", "<JWT: header.claims.signature, decoded below; signature elided>")
		dec.Header, dec.Claims = p.checkAssertion(c, badClient, jwt, p.URL()+r.URL.Path)
	case TLSClientAuth:
		p.checkClientCert(c, badClient, r)
	}
	p.mu.Lock()
	if len(p.decoded) >= 100 {
		p.decoded = p.decoded[1:]
	}
	p.decoded = append(p.decoded, dec)
	p.mu.Unlock()
	return refresh
}

// checkClientCert requires a verified client certificate with the
// configured subject.
func (p *IdP) checkClientCert(c *check, bad response, r *http.Request) {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.PeerCertificates) == 0 {
		c.violation(bad, "tls_client_auth without a verified client certificate")
		return
	}
	subject := r.TLS.PeerCertificates[0].Subject.String()
	p.mu.Lock()
	p.clientSubject = subject
	p.mu.Unlock()
	if subject != p.cfg.ClientSubject {
		c.violation(bad, "client certificate subject %q, want %q", clip(subject), p.cfg.ClientSubject)
	}
}

// checkAssertion checks a client assertion sent to tokenURL and returns its
// decoded header and claims (nil where unreadable).
func (p *IdP) checkAssertion(c *check, bad response, jwt, tokenURL string) (header, claims json.RawMessage) {
	parts := strings.Split(jwt, ".")
	if len(parts) != 3 {
		c.violation(bad, "client_assertion has %d parts, want 3 (compact JWS)", len(parts))
		return nil, nil
	}
	raw := make([][]byte, 3)
	for i, part := range parts {
		b, err := base64.RawURLEncoding.Strict().DecodeString(part)
		if err != nil {
			c.violation(bad, "client_assertion part %d is not unpadded base64url", i+1)
			return nil, nil
		}
		raw[i] = b
	}
	header, claims = indent(raw[0]), indent(raw[1])
	p.checkHeader(c, bad, raw[0])
	if problem := p.verify(parts[0]+"."+parts[1], raw[2]); problem != "" {
		c.violation(bad, "client_assertion signature: %s", problem)
	}
	p.checkClaims(c, bad, raw[1], tokenURL)
	return header, claims
}

// checkHeader requires alg, typ JWT, and kid, x5t, x5t#S256 as configured,
// and no other member.
func (p *IdP) checkHeader(c *check, bad response, raw []byte) {
	h, repeated, err := jsonObject(raw)
	if err != nil {
		c.violation(bad, "JOSE header: %v", err)
		return
	}
	for _, k := range repeated {
		c.violation(bad, "JOSE header member %q repeated", clip(k))
	}
	want := map[string]string{"alg": p.cfg.Alg, "typ": "JWT"}
	if p.cfg.KeyID != "" {
		want["kid"] = p.cfg.KeyID
	}
	if cert := p.cfg.Certificate; cert != nil {
		s1, s256 := sha1.Sum(cert.Raw), sha256.Sum256(cert.Raw) //nolint:gosec // x5t is SHA-1 by definition
		want["x5t"] = base64.RawURLEncoding.EncodeToString(s1[:])
		want["x5t#S256"] = base64.RawURLEncoding.EncodeToString(s256[:])
	}
	for _, k := range sortedKeys(h) {
		if _, ok := want[k]; !ok {
			c.violation(bad, "unexpected JOSE header %q", clip(k))
		}
	}
	for _, k := range sortedKeys(want) {
		v, ok := h[k]
		var s string
		switch {
		case !ok:
			c.violation(bad, "JOSE header has no %s (want %q)", k, want[k])
		case json.Unmarshal(v, &s) != nil:
			c.violation(bad, "JOSE header %s is not a string", k)
		case s != want[k]:
			c.violation(bad, "JOSE header %s %q, want %q", k, clip(s), want[k])
		}
	}
}

// verify checks sig over input with the configured alg and key, using only
// the standard library. It returns what is wrong, or "".
func (p *IdP) verify(input string, sig []byte) string {
	if len(p.cfg.Alg) < 5 {
		return "unknown configured alg " + p.cfg.Alg
	}
	var h crypto.Hash
	switch p.cfg.Alg[2:] {
	case "256":
		h = crypto.SHA256
	case "384":
		h = crypto.SHA384
	case "512":
		h = crypto.SHA512
	}
	digest := func() []byte {
		d := h.New()
		d.Write([]byte(input))
		return d.Sum(nil)
	}
	switch p.cfg.Alg[:2] {
	case "RS":
		pub, ok := p.cfg.PublicKey.(*rsa.PublicKey)
		if !ok || rsa.VerifyPKCS1v15(pub, h, digest(), sig) != nil {
			return "RSASSA-PKCS1-v1_5 does not verify"
		}
	case "PS":
		pub, ok := p.cfg.PublicKey.(*rsa.PublicKey)
		if !ok || rsa.VerifyPSS(pub, h, digest(), sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: h}) != nil {
			return "RSASSA-PSS (salt the size of the hash) does not verify"
		}
	case "ES":
		pub, ok := p.cfg.PublicKey.(*ecdsa.PublicKey)
		if !ok {
			return "no ECDSA key configured"
		}
		size := (pub.Curve.Params().BitSize + 7) / 8
		if len(sig) != 2*size {
			return fmt.Sprintf("%d bytes, want %d (r||s, RFC 7518 section 3.4)", len(sig), 2*size)
		}
		r, s := new(big.Int).SetBytes(sig[:size]), new(big.Int).SetBytes(sig[size:])
		if !ecdsa.Verify(pub, digest(), r, s) {
			return "ECDSA does not verify"
		}
	case "Ed":
		pub, ok := p.cfg.PublicKey.(ed25519.PublicKey)
		if !ok || !ed25519.Verify(pub, []byte(input), sig) {
			return "Ed25519 does not verify"
		}
	case "HS":
		mac := hmac.New(h.New, []byte(p.cfg.Secret))
		mac.Write([]byte(input))
		if !hmac.Equal(mac.Sum(nil), sig) {
			return "HMAC does not verify"
		}
	default:
		return "unknown configured alg " + p.cfg.Alg
	}
	return ""
}

// checkClaims requires exactly iss, sub, aud, iat, exp, jti and the
// configured extra claims, with the values the type doc lists.
func (p *IdP) checkClaims(c *check, bad response, raw []byte, tokenURL string) {
	m, repeated, err := jsonObject(raw)
	if err != nil {
		c.violation(bad, "claims: %v", err)
		return
	}
	for _, k := range repeated {
		c.violation(bad, "claim %q repeated", clip(k))
	}
	str := func(name string) (string, bool) {
		var s string
		v, ok := m[name]
		if !ok {
			c.violation(bad, "no %s claim", name)
			return "", false
		}
		if json.Unmarshal(v, &s) != nil {
			c.violation(bad, "claim %s is not a string", name)
			return "", false
		}
		return s, true
	}
	date := func(name string) (int64, bool) {
		v, ok := m[name]
		if !ok {
			c.violation(bad, "no %s claim", name)
			return 0, false
		}
		var n json.Number
		dec := json.NewDecoder(bytes.NewReader(v))
		dec.UseNumber()
		if dec.Decode(&n) != nil {
			c.violation(bad, "claim %s is not a NumericDate", name)
			return 0, false
		}
		i, err := n.Int64()
		if err != nil {
			c.violation(bad, "claim %s is not a whole number of seconds", name)
			return 0, false
		}
		return i, true
	}
	known := map[string]bool{"iss": true, "sub": true, "aud": true, "iat": true, "exp": true, "jti": true}
	for k := range p.cfg.Claims {
		known[k] = true
	}
	for _, k := range sortedKeys(m) {
		if !known[k] {
			c.violation(bad, "unexpected claim %q", clip(k))
		}
	}
	if iss, ok := str("iss"); ok && iss != p.cfg.ClientID {
		c.violation(bad, "iss %q is not the client id", clip(iss))
	}
	if sub, ok := str("sub"); ok && sub != p.cfg.ClientID {
		c.violation(bad, "sub %q is not the client id", clip(sub))
	}
	wantAud := p.cfg.Audience
	if wantAud == "" {
		wantAud = tokenURL
	}
	if aud, ok := str("aud"); ok && aud != wantAud {
		c.violation(bad, "aud %q, want %q", clip(aud), wantAud)
	}
	now := time.Now().Unix()
	iat, iatOK := date("iat")
	exp, expOK := date("exp")
	if iatOK && (iat > now+1 || iat < now-30) {
		c.violation(bad, "iat is %ds from now, want now", iat-now)
	}
	if expOK {
		if exp <= now {
			c.violation(bad, "exp has passed")
		}
		if want := int64(p.cfg.Lifetime / time.Second); iatOK && exp-iat != want {
			c.violation(bad, "exp - iat = %ds, want %ds", exp-iat, want)
		}
	}
	if jti, ok := str("jti"); ok {
		if len(jti) < 22 {
			c.violation(bad, "jti of %d characters is shorter than 128 bits in base64url", len(jti))
		}
		p.mu.Lock()
		_, replay := p.jtis[jti]
		if !replay {
			if len(p.jtis) >= 100000 {
				for k, e := range p.jtis {
					if e.Unix() < now-60 {
						delete(p.jtis, k)
					}
				}
			}
			p.jtis[jti] = time.Unix(exp, 0)
		}
		p.mu.Unlock()
		if replay {
			c.violation(bad, "jti replayed: an assertion is used once (RFC 7523 section 3)")
		}
	}
	for _, k := range sortedKeys(p.cfg.Claims) {
		if v, ok := str(k); ok && v != p.cfg.Claims[k] {
			c.violation(bad, "claim %s %q, want %q", k, clip(v), p.cfg.Claims[k])
		}
	}
}

// grant issues tokens for a well-formed request, redeeming its refresh
// token (they rotate).
func (p *IdP) grant(c *check, refresh string) response {
	invalid := oauthError(http.StatusBadRequest, "invalid_grant", "Invalid refresh token")
	p.mu.Lock()
	defer p.mu.Unlock()
	if refresh != "" {
		switch p.redeemLocked(refresh) {
		case redeemUnknown:
			c.violation(invalid, "refresh_token was not issued by this IdP")
		case redeemUsed:
			c.violation(invalid, "refresh_token was already used (refresh tokens rotate)")
		case redeemRevoked, redeemExpired:
			c.reject(invalid)
		case redeemOK:
		}
		if c.resp != nil {
			return c.resp
		}
		p.refreshGrants.Add(1)
	}
	var refreshTTL time.Duration
	if p.cfg.IssueRefreshTokens {
		refreshTTL = DefaultRefreshTTL
	}
	access, newRefresh := p.issueLocked(p.cfg.TTL, refreshTTL)
	p.issued.Add(1)
	ttl := max(int64(p.cfg.TTL/time.Second), 1)
	return func(w http.ResponseWriter) {
		writeJSON(w, http.StatusOK, struct {
			AccessToken  string `json:"access_token"`
			TokenType    string `json:"token_type"`
			ExpiresIn    int64  `json:"expires_in"`
			RefreshToken string `json:"refresh_token,omitempty"`
		}{access, "Bearer", ttl, newRefresh})
	}
}

// finish records c's violations, then writes resp.
func (p *IdP) finish(w http.ResponseWriter, r *http.Request, c *check, resp response) {
	if len(c.problems) > 0 {
		v := fmt.Sprintf("idp: %s %s: %s", clip(r.Method), clip(r.URL.Path), strings.Join(c.problems, "; "))
		p.mu.Lock()
		p.violations = append(p.violations, v)
		p.mu.Unlock()
	}
	if resp != nil {
		resp(w)
	}
}

// oauthError answers with an RFC 6749 error.
func oauthError(status int, code, desc string) response {
	return func(w http.ResponseWriter) {
		writeJSON(w, status, struct {
			Error       string `json:"error"`
			Description string `json:"error_description"`
		}{code, desc})
	}
}

// indent is raw JSON indented for display, or nil if it is not JSON.
func indent(raw []byte) json.RawMessage {
	var out bytes.Buffer
	if json.Indent(&out, raw, "", "  ") != nil {
		return nil
	}
	return out.Bytes()
}
