package grants

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
)

// Issuer discovery: the token endpoint read from the authorization
// server's metadata (RFC 8414 section 3, then OpenID Connect Discovery 1.0
// section 4), when the first token is needed, never before. The answer is
// kept until a token request to the endpoint it named fails for a transport
// reason or answers 404.

// Well-known paths of the metadata documents.
const (
	wellKnownOAuth = "/.well-known/oauth-authorization-server"
	wellKnownOIDC  = "/.well-known/openid-configuration"
)

// CheckIssuer checks an issuer identifier: an absolute URL that CheckURL
// accepts, with no query or fragment (RFC 8414 section 2).
func CheckIssuer(raw string, allowHTTP bool) error {
	if err := CheckURL("issuer", raw, allowHTTP); err != nil {
		return err
	}
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("issuer: malformed URL")
	}
	if u.RawQuery != "" || u.ForceQuery || strings.Contains(raw, "#") {
		return fmt.Errorf("issuer: an issuer identifier has no query or fragment (RFC 8414 section 2)")
	}
	return nil
}

// metadataURLs are where the metadata of issuer is looked for, in order:
// RFC 8414's, with the well-known part inserted between the host and the
// issuer's path, and OpenID Connect's, appended to the issuer. A trailing
// "/" of the path is dropped first, as both say.
func metadataURLs(issuer string) (rfc8414, oidc string, err error) {
	u, err := url.Parse(issuer)
	if err != nil {
		return "", "", fmt.Errorf("issuer: malformed URL")
	}
	origin := u.Scheme + "://" + u.Host
	path := strings.TrimSuffix(u.EscapedPath(), "/")
	return origin + wellKnownOAuth + path, origin + path + wellKnownOIDC, nil
}

// DiscoveryError is a failed discovery: no metadata document of the issuer
// was usable. Reasons say, per document tried, why.
type DiscoveryError struct {
	Issuer  string
	Reasons []string
	// err is the *TransportError of the last try when no try got an
	// answer, so that the failure counts as the transport's.
	err error
}

func (e *DiscoveryError) Error() string {
	return "issuer discovery for " + e.Issuer + " failed: " + strings.Join(e.Reasons, "; ")
}

func (e *DiscoveryError) Unwrap() error { return e.err }

// discovery finds and keeps the token endpoint of one issuer.
type discovery struct {
	issuer    string
	allowHTTP bool
	mtls      bool // prefer mtls_endpoint_aliases (RFC 8705 section 5)
	hc        *http.Client

	mu       sync.Mutex
	tokenURL string // "" until discovered, and again once forgotten
}

// endpoint returns the token endpoint, reading the metadata first when it
// is not known. ctx bounds the reading: the token request's timeout.
func (d *discovery) endpoint(ctx context.Context) (string, error) {
	d.mu.Lock()
	u := d.tokenURL
	d.mu.Unlock()
	if u != "" {
		return u, nil
	}
	u, err := d.discover(ctx)
	if err != nil {
		return "", err
	}
	d.mu.Lock()
	d.tokenURL = u
	d.mu.Unlock()
	return u, nil
}

// forget drops tokenURL, if it is still the one kept, so that the next
// token request reads the metadata again. A nil d (a configured token_url)
// has nothing to forget.
func (d *discovery) forget(tokenURL string) {
	if d == nil {
		return
	}
	d.mu.Lock()
	if d.tokenURL == tokenURL {
		d.tokenURL = ""
	}
	d.mu.Unlock()
}

// discover reads the metadata documents in turn until one is usable.
func (d *discovery) discover(ctx context.Context) (string, error) {
	rfc8414, oidc, err := metadataURLs(d.issuer)
	if err != nil {
		return "", err
	}
	de := &DiscoveryError{Issuer: d.issuer}
	answered := false
	for _, u := range []string{rfc8414, oidc} {
		tokenURL, err := d.fetch(ctx, u)
		if err == nil {
			return tokenURL, nil
		}
		de.Reasons = append(de.Reasons, u+": "+err.Error())
		if _, ok := errors.AsType[*TransportError](err); ok {
			de.err = err
		} else {
			answered = true
		}
		if ctx.Err() != nil {
			break
		}
	}
	if answered {
		de.err = nil
	}
	return "", de
}

// metadata is what discovery reads of a metadata document.
type metadata struct {
	Issuer        *string `json:"issuer"`
	TokenEndpoint *string `json:"token_endpoint"`
	MTLSAliases   *struct {
		TokenEndpoint *string `json:"token_endpoint"`
	} `json:"mtls_endpoint_aliases"`
}

// fetch reads one metadata document and returns the token endpoint it
// names; a *TransportError when there was no answer.
func (d *discovery) fetch(ctx context.Context, metadataURL string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, metadataURL, nil)
	if err != nil {
		return "", fmt.Errorf("metadata request: %v", scrubURLError(err))
	}
	req.Header.Set("Accept", "application/json")
	resp, err := d.hc.Do(req)
	if err != nil {
		return "", &TransportError{Endpoint: "the issuer", Err: scrubURLError(err)}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxBody+1))
	if err != nil {
		return "", &TransportError{Endpoint: "the issuer", Err: fmt.Errorf("reading metadata: %w", scrubURLError(err))}
	}
	switch {
	case len(body) > MaxBody:
		return "", fmt.Errorf("metadata over 1 MiB refused")
	case resp.StatusCode >= 300 && resp.StatusCode < 400:
		return "", fmt.Errorf("redirect (status %d) refused: discovery does not follow redirects", resp.StatusCode)
	case resp.StatusCode != http.StatusOK:
		return "", fmt.Errorf("status %d", resp.StatusCode)
	}
	var md metadata
	if err := json.Unmarshal(body, &md); err != nil {
		return "", fmt.Errorf("metadata is not a JSON object with string issuer and token_endpoint")
	}
	switch {
	case md.Issuer == nil:
		return "", fmt.Errorf("metadata has no issuer")
	case *md.Issuer != d.issuer:
		return "", fmt.Errorf("metadata issuer %q is not the configured issuer %q (they must be equal, RFC 8414 section 3.3)",
			sanitize(*md.Issuer, 200), d.issuer)
	}
	endpoint, what := md.TokenEndpoint, "token_endpoint"
	if d.mtls && md.MTLSAliases != nil && md.MTLSAliases.TokenEndpoint != nil {
		endpoint, what = md.MTLSAliases.TokenEndpoint, "mtls_endpoint_aliases token_endpoint"
	}
	if endpoint == nil || *endpoint == "" {
		return "", fmt.Errorf("metadata has no %s", what)
	}
	if len(*endpoint) > 2048 {
		return "", fmt.Errorf("metadata %s is longer than 2048 bytes", what)
	}
	if err := CheckURL("metadata "+what, *endpoint, d.allowHTTP); err != nil {
		return "", err
	}
	return *endpoint, nil
}
