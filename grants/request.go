package grants

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"
)

// MaxBody is the largest token endpoint answer that is read; a larger one is
// refused.
const MaxBody = 1 << 20

// Client requests tokens for one Config.
type Client struct {
	cfg    Config
	hc     *http.Client
	red    func() redactor     // the secrets of cfg, out of every error (made when first needed)
	slots  *semaphore.Weighted // the token requests in flight to the endpoint
	assert *assertionSigner    // private_key_jwt and client_secret_jwt
	disc   *discovery          // issuer without token_url
}

// DefaultTokenType is the token_type a response must carry, when it carries
// one, unless Config.TokenType names another.
const DefaultTokenType = "bearer"

// NewClient returns a client for cfg that sends its requests through hc
// (see NewHTTPClient; nil takes NewHTTPClient(nil)). cfg must be valid.
// With a client assertion, it reads and checks the key (and certificate)
// now, once: an unreadable key, or one that does not fit the algorithm, is
// an error here. It does no network I/O: an issuer's metadata is read when
// the first token is requested.
func NewClient(cfg Config, hc *http.Client) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.TokenType == "" {
		cfg.TokenType = DefaultTokenType
	}
	if hc == nil {
		hc = NewHTTPClient(nil)
	}
	// The endpoint whose slots the client takes: the token URL, or with
	// discovery the issuer (known before its metadata is: the sources of
	// one issuer share its slots; an endpoint reached both through an
	// issuer and as a token_url counts as two).
	endpoint := cfg.TokenURL
	if endpoint == "" {
		endpoint = cfg.Issuer
	}
	c := &Client{cfg: cfg, hc: hc, red: sync.OnceValue(cfg.redactor), slots: endpointSlots(endpoint)}
	if cfg.ClientAuth.signs() {
		s, err := newAssertionSigner(cfg)
		if err != nil {
			return nil, err
		}
		c.assert = s
	}
	if cfg.TokenURL == "" {
		c.disc = &discovery{issuer: cfg.Issuer, allowHTTP: cfg.AllowHTTP, mtls: cfg.ClientAuth == AuthTLSClient, hc: hc}
	}
	return c, nil
}

// MaxInFlight is the most token requests to one token endpoint in flight at
// once, whatever the number of sources (clients) that use it: a cold start
// of thousands of tenants does not flood the provider. Beyond it, requests
// wait their turn in order (each within its own context's deadline).
const MaxInFlight = 32

// slots holds, per token endpoint (scheme, host and path), the token
// requests in flight to it. Endpoints come from the config (token_url
// takes no request placeholder), so the map stays as small as the config.
var slots sync.Map // string → *semaphore.Weighted

func endpointSlots(tokenURL string) *semaphore.Weighted {
	key := tokenURL
	if u, err := url.Parse(tokenURL); err == nil {
		key = u.Scheme + "://" + u.Host + u.Path
	}
	if s, ok := slots.Load(key); ok {
		return s.(*semaphore.Weighted)
	}
	s, _ := slots.LoadOrStore(key, semaphore.NewWeighted(MaxInFlight))
	return s.(*semaphore.Weighted)
}

// redactor removes c's secrets from provider text: the client secret (also
// as the Basic header's id:secret), the password, and the values of
// token_header and param that could be keys (4 characters or more). What
// c's requests carry in the open (see openText) is spared.
func (c Config) redactor() redactor {
	id, secret := c.clientCredentials()
	secrets := []string{secret, c.ClientSecret, c.Password}
	for _, m := range []map[string]string{c.Headers, c.Params} {
		for _, v := range m {
			if len(v) >= 4 {
				secrets = append(secrets, v)
			}
		}
	}
	return newRedactor(id, secrets...).sparing(c.openText()...)
}

// openText is what c's requests carry in the open: the names of their
// fields and headers, the grants, the client id, the username, scope,
// audience and the endpoints. A provider that quotes them quotes no
// secret, even where a secret has them in it.
func (c Config) openText() []string {
	id, _ := c.clientCredentials()
	open := []string{"grant_type", "client_id", "client_secret", "username", "password", "refresh_token",
		"scope", "audience", "client_assertion", "client_assertion_type", JWTBearer,
		string(c.Grant), string(ClientCredentials), string(Password), string(RefreshToken),
		"Authorization", "Basic", "application/json", "application/x-www-form-urlencoded",
		id, c.ClientID, c.Username, strings.Join(c.Scopes, " "), c.Audience, c.TokenURL, c.Issuer}
	for _, m := range []map[string]string{c.Headers, c.Params} {
		for name := range m {
			open = append(open, name)
		}
	}
	return open
}

// NewHTTPClient returns an HTTP client for token requests: it follows no
// redirect, honours HTTPS_PROXY/NO_PROXY and uses tlsConfig. With a nil
// tlsConfig (the system's roots) every client shares one transport, so that
// many sources at one provider share its connections rather than each
// keeping its own open.
func NewHTTPClient(tlsConfig *tls.Config) *http.Client {
	tr := sharedTransport
	if tlsConfig != nil {
		tr = newTransport(tlsConfig)
	}
	return &http.Client{
		Transport: tr,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

// sharedTransport carries the token requests of every client without a TLS
// config of its own.
var sharedTransport = newTransport(nil)

func newTransport(tlsConfig *tls.Config) *http.Transport {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = http.ProxyFromEnvironment
	if tlsConfig != nil {
		tr.TLSClientConfig = tlsConfig
	}
	tr.MaxIdleConnsPerHost = 4
	tr.IdleConnTimeout = 90 * time.Second
	return tr
}

// Token requests a new token with the configured grant.
func (c *Client) Token(ctx context.Context) (*Token, error) {
	tokenURL, err := c.tokenURL(ctx)
	if err != nil {
		return nil, err
	}
	fields, err := c.grantFields(tokenURL)
	if err != nil {
		return nil, err
	}
	return c.do(ctx, tokenURL, fields, c.red())
}

// Refresh requests a new token with the refresh_token grant.
func (c *Client) Refresh(ctx context.Context, refreshToken string) (*Token, error) {
	tokenURL, err := c.tokenURL(ctx)
	if err != nil {
		return nil, err
	}
	client, err := c.clientBodyFields(tokenURL)
	if err != nil {
		return nil, err
	}
	fields := append([][2]string{{"grant_type", string(RefreshToken)}, {"refresh_token", refreshToken}}, client...)
	return c.do(ctx, tokenURL, fields, c.red().plus(refreshToken))
}

// tokenURL is the configured token endpoint, or the issuer's as its
// metadata names it (read now if not known).
func (c *Client) tokenURL(ctx context.Context) (string, error) {
	if c.disc == nil {
		return c.cfg.TokenURL, nil
	}
	return c.disc.endpoint(ctx)
}

// Logout calls logoutURL with GET and the token as bearer, as Telenor
// documents; any 2xx answer counts as done.
func (c *Client) Logout(ctx context.Context, logoutURL string, tok *Token) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, logoutURL, nil)
	if err != nil {
		return fmt.Errorf("logout request: %v", err)
	}
	req.Header.Set("Authorization", "Bearer "+tok.AccessToken)
	req.Header.Set("Accept", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("logout: %w", scrubURLError(err))
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		return parseError(resp.StatusCode, body, c.red().plus(tok.AccessToken))
	}
	return nil
}

// grantFields lists the body fields of a request to tokenURL with the
// configured grant, in the order they are sent.
func (c *Client) grantFields(tokenURL string) ([][2]string, error) {
	fields := [][2]string{{"grant_type", string(c.cfg.Grant)}}
	if c.cfg.Grant == Password {
		fields = append(fields, [2]string{"username", c.cfg.Username}, [2]string{"password", c.cfg.Password})
	}
	client, err := c.clientBodyFields(tokenURL)
	if err != nil {
		return nil, err
	}
	fields = append(fields, client...)
	if len(c.cfg.Scopes) > 0 {
		fields = append(fields, [2]string{"scope", strings.Join(c.cfg.Scopes, " ")})
	}
	if c.cfg.Audience != "" {
		fields = append(fields, [2]string{"audience", c.cfg.Audience})
	}
	for _, name := range sortedKeys(c.cfg.Params) {
		fields = append(fields, [2]string{name, c.cfg.Params[name]})
	}
	return fields, nil
}

// clientBodyFields are the client's credentials as body fields, where
// client_auth puts them there; with an assertion, a new one for a request
// to tokenURL.
func (c *Client) clientBodyFields(tokenURL string) ([][2]string, error) {
	id, secret := c.cfg.clientCredentials()
	switch c.cfg.ClientAuth {
	case AuthBasic: // in the Authorization header (newRequest)
	case AuthBody:
		return [][2]string{{"client_id", id}, {"client_secret", secret}}, nil
	case AuthNone:
		if id != "" {
			return [][2]string{{"client_id", id}}, nil
		}
	case AuthTLSClient: // the certificate is on the connection
		return [][2]string{{"client_id", id}}, nil
	case AuthPrivateKeyJWT, AuthClientSecretJWT:
		jwt, err := c.assert.assertion(tokenURL)
		if err != nil {
			return nil, err
		}
		return [][2]string{{"client_id", id}, {"client_assertion_type", JWTBearer}, {"client_assertion", jwt}}, nil
	}
	return nil, nil
}

// newRequest builds the token request to tokenURL that carries fields,
// without sending it.
func (c *Client) newRequest(ctx context.Context, tokenURL string, fields [][2]string) (*http.Request, error) {
	var body []byte
	var contentType string
	switch c.cfg.Body {
	case BodyJSON:
		obj := make(map[string]string, len(fields))
		for _, f := range fields {
			obj[f[0]] = f[1]
		}
		var err error
		if body, err = json.Marshal(obj); err != nil {
			return nil, err
		}
		contentType = "application/json"
	case BodyForm:
		form := make([]string, 0, len(fields))
		for _, f := range fields {
			form = append(form, url.QueryEscape(f[0])+"="+url.QueryEscape(f[1]))
		}
		body = []byte(strings.Join(form, "&"))
		contentType = "application/x-www-form-urlencoded"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, tokenURL, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("token request: %v", err)
	}
	for _, name := range sortedKeys(c.cfg.Headers) {
		req.Header.Set(name, c.cfg.Headers[name])
	}
	req.Header.Set("Content-Type", contentType)
	req.Header.Set("Accept", "application/json")
	if c.cfg.ClientAuth == AuthBasic {
		id, secret := c.cfg.clientCredentials()
		req.SetBasicAuth(id, secret)
	}
	return req, nil
}

// do sends fields to tokenURL and reads the answer; red removes the
// request's secrets (and its client assertion) from any provider text in
// the error, and withholds text that quotes part of one. When tokenURL was discovered and the request gets no answer or
// a 404, the metadata is read again for the next one: the endpoint may have
// moved.
func (c *Client) do(ctx context.Context, tokenURL string, fields [][2]string, red redactor) (*Token, error) {
	req, err := c.newRequest(ctx, tokenURL, fields)
	if err != nil {
		return nil, err
	}
	for _, f := range fields {
		if f[0] == "client_assertion" {
			red = red.plusAssertion(f[1])
		}
	}
	// Wait for one of the endpoint's slots: the wait counts against ctx
	// (the token request's timeout), so a queue never outlasts it.
	if err := c.slots.Acquire(ctx, 1); err != nil {
		return nil, &TransportError{Err: fmt.Errorf("waiting for one of the %d token requests in flight to this endpoint: %w", MaxInFlight, err)}
	}
	defer c.slots.Release(1)
	var sent atomic.Bool // the request was written in full
	req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
		WroteRequest: func(info httptrace.WroteRequestInfo) {
			if info.Err == nil {
				sent.Store(true)
			}
		},
	}))
	start := time.Now()
	resp, err := c.hc.Do(req)
	if err != nil {
		c.disc.forget(tokenURL)
		return nil, &TransportError{Err: scrubURLError(err), Sent: sent.Load()}
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		c.disc.forget(tokenURL)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxBody+1))
	if err != nil {
		c.disc.forget(tokenURL)
		return nil, &TransportError{Err: fmt.Errorf("reading response: %w", scrubURLError(err)), Sent: true}
	}
	if len(body) > MaxBody {
		return nil, &ResponseError{Status: resp.StatusCode, Reason: "response body over 1 MiB"}
	}
	if resp.StatusCode >= 300 && resp.StatusCode < 400 {
		return nil, &ResponseError{Status: resp.StatusCode, Reason: fmt.Sprintf("redirect (status %d) refused: token requests do not follow redirects", resp.StatusCode)}
	}
	if resp.StatusCode != http.StatusOK {
		pe := parseError(resp.StatusCode, body, red)
		if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable {
			pe.RetryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
		}
		return nil, pe
	}
	return parseToken(body, resp.Header.Get("Content-Type"), c.cfg.TokenType, c.cfg.DefaultTTL, start, red)
}

// TransportError is a token request that got no answer: connection refused
// or reset, TLS failure, timeout.
type TransportError struct {
	Err error
	// Endpoint names what did not answer; empty: the token endpoint.
	Endpoint string
	// Sent: the request was written to the connection in full before the
	// failure, so the endpoint may have acted on it (redeemed a refresh
	// token) though no answer came. False when it cannot have: no
	// connection, a TLS failure, a wait for one of the endpoint's slots.
	Sent bool
}

func (e *TransportError) Error() string {
	what := e.Endpoint
	if what == "" {
		what = "the token endpoint"
	}
	return "no answer from " + what + ": " + e.Err.Error()
}
func (e *TransportError) Unwrap() error { return e.Err }

// scrubURLError drops the URL from a *url.Error: query strings may carry
// values that are not for logs. The operation and cause stay.
func scrubURLError(err error) error {
	if ue, ok := errors.AsType[*url.Error](err); ok {
		return fmt.Errorf("%s: %w", strings.ToLower(ue.Op), ue.Err)
	}
	return err
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
