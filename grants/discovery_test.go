package grants

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestMetadataURLs: RFC 8414 inserts the well-known part between host and
// path, OpenID Connect appends it; a trailing slash is dropped first.
func TestMetadataURLs(t *testing.T) {
	for _, tc := range []struct{ issuer, rfc8414, oidc string }{
		{"https://idp.example.com", "https://idp.example.com/.well-known/oauth-authorization-server", "https://idp.example.com/.well-known/openid-configuration"},
		{"https://idp.example.com/", "https://idp.example.com/.well-known/oauth-authorization-server", "https://idp.example.com/.well-known/openid-configuration"},
		{"https://idp.example.com/realms/acme", "https://idp.example.com/.well-known/oauth-authorization-server/realms/acme", "https://idp.example.com/realms/acme/.well-known/openid-configuration"},
		{"https://login.example.com/tenant-1/v2.0/", "https://login.example.com/.well-known/oauth-authorization-server/tenant-1/v2.0", "https://login.example.com/tenant-1/v2.0/.well-known/openid-configuration"},
		{"http://127.0.0.1:8443/a%2Fb", "http://127.0.0.1:8443/.well-known/oauth-authorization-server/a%2Fb", "http://127.0.0.1:8443/a%2Fb/.well-known/openid-configuration"},
	} {
		rfc8414, oidc, err := metadataURLs(tc.issuer)
		if err != nil || rfc8414 != tc.rfc8414 || oidc != tc.oidc {
			t.Errorf("metadataURLs(%s) = %s, %s, %v; want %s, %s", tc.issuer, rfc8414, oidc, err, tc.rfc8414, tc.oidc)
		}
	}
}

// TestCheckIssuer: an issuer is a URL that token_url's rules accept, with
// no query or fragment.
func TestCheckIssuer(t *testing.T) {
	for _, tc := range []struct{ issuer, wantErr string }{
		{"https://idp.example.com/realms/x", ""},
		{"http://localhost:8080", ""},
		{"https://idp.example.com/?a=b", "no query or fragment"},
		{"https://idp.example.com/?", "no query or fragment"},
		{"https://idp.example.com/#x", "no query or fragment"},
		{"http://idp.example.com", "issuer: http:// is only allowed for a loopback host"},
		{"idp.example.com", "issuer: \"idp.example.com\" is not an absolute URL"},
		{"https://u:p@idp.example.com", "issuer: credentials in the URL are not allowed"},
	} {
		err := CheckIssuer(tc.issuer, false)
		if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("CheckIssuer(%s) = %v, want %q", tc.issuer, err, tc.wantErr)
		}
	}
}

// idpServer serves metadata documents and a token endpoint, counting
// requests per path.
type idpServer struct {
	*server
	mu   sync.Mutex
	docs map[string]func(issuer string) (int, string) // path -> answer
	hits map[string]int
}

func newIDPServer(t *testing.T) *idpServer {
	t.Helper()
	s := &idpServer{docs: map[string]func(string) (int, string){}, hits: map[string]int{}}
	s.server = newServer(t, func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.hits[r.URL.Path]++
		doc := s.docs[r.URL.Path]
		s.mu.Unlock()
		if r.URL.Path == "/realms/x/token" && doc == nil {
			okAnswer(w, r)
			return
		}
		if doc == nil {
			http.NotFound(w, r)
			return
		}
		status, body := doc(s.URL + "/realms/x")
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		fmt.Fprint(w, body)
	})
	return s
}

func (s *idpServer) serve(path string, doc func(issuer string) (int, string)) {
	s.mu.Lock()
	s.docs[path] = doc
	s.mu.Unlock()
}

func (s *idpServer) count(path string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hits[path]
}

const (
	rfc8414Path = "/.well-known/oauth-authorization-server/realms/x"
	oidcPath    = "/realms/x/.well-known/openid-configuration"
)

// goodDoc names the server's /realms/x/token.
func goodDoc(issuer string) (int, string) {
	return 200, fmt.Sprintf(`{"issuer":%q,"token_endpoint":%q,"jwks_uri":"x"}`, issuer, issuer+"/token")
}

func discoveryClient(t *testing.T, s *idpServer, mod ...func(*Config)) *Client {
	t.Helper()
	c := validConfig()
	c.TokenURL, c.Issuer = "", s.URL+"/realms/x"
	for _, m := range mod {
		m(&c)
	}
	return newClient(t, c)
}

func token(t *testing.T, c *Client) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := c.Token(ctx)
	return err
}

// TestDiscoveryRFC8414: the RFC 8414 document is read once, before the
// first token request, and kept for the next ones; the token requests go
// to the token_endpoint it names. NewClient reads nothing.
func TestDiscoveryRFC8414(t *testing.T) {
	s := newIDPServer(t)
	s.serve(rfc8414Path, goodDoc)
	c := discoveryClient(t, s)
	if n := len(s.requests()); n != 0 {
		t.Fatalf("NewClient made %d requests, want none", n)
	}
	for range 3 {
		if err := token(t, c); err != nil {
			t.Fatal(err)
		}
	}
	if s.count(rfc8414Path) != 1 || s.count(oidcPath) != 0 || s.count("/realms/x/token") != 3 {
		t.Errorf("requests: RFC 8414 %d, OIDC %d, token %d; want 1, 0, 3", s.count(rfc8414Path), s.count(oidcPath), s.count("/realms/x/token"))
	}
	r := s.requests()[0]
	if r.Method != http.MethodGet || r.Header.Get("Accept") != "application/json" || r.Header.Get("Authorization") != "" {
		t.Errorf("metadata request %s, Accept %q, Authorization %q; want GET, application/json, none", r.Method, r.Header.Get("Accept"), r.Header.Get("Authorization"))
	}
}

// TestDiscoveryOIDCFallback: with no RFC 8414 document, the OpenID Connect
// one is used.
func TestDiscoveryOIDCFallback(t *testing.T) {
	s := newIDPServer(t)
	s.serve(oidcPath, goodDoc)
	if err := token(t, discoveryClient(t, s)); err != nil {
		t.Fatal(err)
	}
	if s.count(rfc8414Path) != 1 || s.count(oidcPath) != 1 || s.count("/realms/x/token") != 1 {
		t.Errorf("requests: RFC 8414 %d, OIDC %d, token %d; want 1, 1, 1", s.count(rfc8414Path), s.count(oidcPath), s.count("/realms/x/token"))
	}
}

// TestDiscoveryRefusals: unusable metadata is a DiscoveryError that says
// why for each document, and no token request is made.
func TestDiscoveryRefusals(t *testing.T) {
	huge := strings.Repeat(" ", MaxBody)
	for _, tc := range []struct {
		name string
		doc  func(issuer string) (int, string)
		want string
	}{
		{"issuer mismatch", func(string) (int, string) {
			return 200, `{"issuer":"https://evil.example.com","token_endpoint":"https://evil.example.com/token"}`
		}, `metadata issuer "https://evil.example.com" is not the configured issuer`},
		{"issuer with a trailing slash", func(iss string) (int, string) {
			return 200, fmt.Sprintf(`{"issuer":%q,"token_endpoint":%q}`, iss+"/", iss+"/token")
		}, "is not the configured issuer"},
		{"no issuer", func(iss string) (int, string) { return 200, fmt.Sprintf(`{"token_endpoint":%q}`, iss+"/token") }, "metadata has no issuer"},
		{"no token_endpoint", func(iss string) (int, string) { return 200, fmt.Sprintf(`{"issuer":%q}`, iss) }, "metadata has no token_endpoint"},
		{"http token_endpoint", func(iss string) (int, string) {
			return 200, fmt.Sprintf(`{"issuer":%q,"token_endpoint":"http://idp.example.com/token"}`, iss)
		}, "metadata token_endpoint: http:// is only allowed for a loopback host"},
		{"token_endpoint with credentials", func(iss string) (int, string) {
			return 200, fmt.Sprintf(`{"issuer":%q,"token_endpoint":"https://a:b@idp.example.com/token"}`, iss)
		}, "credentials in the URL are not allowed"},
		{"not JSON", func(string) (int, string) { return 200, "<html>" }, "metadata is not a JSON object"},
		{"issuer not a string", func(string) (int, string) { return 200, `{"issuer":5}` }, "metadata is not a JSON object"},
		{"over 1 MiB", func(iss string) (int, string) { return 200, huge + "{}" }, "metadata over 1 MiB refused"},
		{"server error", func(string) (int, string) { return 500, `{"error":"x"}` }, "status 500"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newIDPServer(t)
			s.serve(rfc8414Path, tc.doc)
			s.serve(oidcPath, tc.doc)
			err := token(t, discoveryClient(t, s))
			de, ok := errors.AsType[*DiscoveryError](err)
			if !ok {
				t.Fatalf("error %v (%T), want a *DiscoveryError", err, err)
			}
			if len(de.Reasons) != 2 || !strings.HasPrefix(de.Reasons[0], s.URL+rfc8414Path+": ") || !strings.Contains(de.Reasons[0], tc.want) ||
				!strings.HasPrefix(de.Reasons[1], s.URL+oidcPath+": ") || !strings.Contains(de.Reasons[1], tc.want) {
				t.Errorf("error %q, want %q for both documents", err, tc.want)
			}
			if _, ok := errors.AsType[*TransportError](err); ok {
				t.Errorf("an answered discovery counts as a transport error")
			}
			if n := s.count("/realms/x/token"); n != 0 {
				t.Errorf("%d token requests after failed discovery", n)
			}
		})
	}
}

// TestDiscoveryRedirectNotFollowed: a redirecting metadata URL is refused.
func TestDiscoveryRedirectNotFollowed(t *testing.T) {
	s := newIDPServer(t)
	redirect := func(string) (int, string) { return 302, "" }
	s.serve(rfc8414Path, redirect)
	s.serve(oidcPath, redirect)
	err := token(t, discoveryClient(t, s))
	if err == nil || !strings.Contains(err.Error(), "redirect (status 302) refused") {
		t.Fatalf("error %v, want the redirect refused", err)
	}
}

// TestDiscoveryMTLSAlias: with tls_client_auth, mtls_endpoint_aliases'
// token_endpoint is preferred (RFC 8705 section 5); other methods ignore it.
func TestDiscoveryMTLSAlias(t *testing.T) {
	doc := func(iss string) (int, string) {
		return 200, fmt.Sprintf(`{"issuer":%q,"token_endpoint":%q,"mtls_endpoint_aliases":{"token_endpoint":%q}}`, iss, iss+"/plain", iss+"/token")
	}
	s := newIDPServer(t)
	s.serve(rfc8414Path, doc)
	tls := func(c *Config) { c.ClientAuth, c.ClientSecret, c.Password = AuthTLSClient, "", "" }
	if err := token(t, discoveryClient(t, s, tls)); err != nil {
		t.Fatal(err)
	}
	if s.count("/realms/x/token") != 1 || s.count("/realms/x/plain") != 0 {
		t.Errorf("tls_client_auth went to the plain endpoint")
	}
	_ = token(t, discoveryClient(t, s))
	if s.count("/realms/x/plain") != 1 {
		t.Errorf("basic did not use token_endpoint")
	}
}

// TestRediscovery: the metadata is read again after a token request that
// answers 404 or gets no answer, not after other failures.
func TestRediscovery(t *testing.T) {
	t.Run("404", func(t *testing.T) {
		s := newIDPServer(t)
		s.serve(rfc8414Path, goodDoc)
		c := discoveryClient(t, s)
		if err := token(t, c); err != nil {
			t.Fatal(err)
		}
		moved := func(iss string) (int, string) {
			return 200, fmt.Sprintf(`{"issuer":%q,"token_endpoint":%q}`, iss, iss+"/token2")
		}
		s.serve(rfc8414Path, moved)
		s.serve("/realms/x/token", func(string) (int, string) { return 404, `{"error":"not_found"}` })
		s.serve("/realms/x/token2", func(string) (int, string) {
			return 200, `{"access_token":"` + sampleToken + `","expires_in":60}`
		})
		if err := token(t, c); err == nil {
			t.Fatal("the 404 answer gave a token")
		}
		if err := token(t, c); err != nil {
			t.Fatalf("after the 404, the token request to the new endpoint failed: %v", err)
		}
		if s.count(rfc8414Path) != 2 || s.count("/realms/x/token2") != 1 {
			t.Errorf("metadata read %d times, new endpoint %d; want 2, 1", s.count(rfc8414Path), s.count("/realms/x/token2"))
		}
	})
	t.Run("no answer", func(t *testing.T) {
		s := newIDPServer(t)
		closed := newServer(t, nil)
		closedURL := closed.URL
		closed.Close()
		s.serve(rfc8414Path, func(iss string) (int, string) {
			return 200, fmt.Sprintf(`{"issuer":%q,"token_endpoint":%q}`, iss, closedURL+"/token")
		})
		c := discoveryClient(t, s)
		err := token(t, c)
		if _, ok := errors.AsType[*TransportError](err); !ok {
			t.Fatalf("error %v, want a transport error", err)
		}
		s.serve(rfc8414Path, goodDoc)
		if err := token(t, c); err != nil {
			t.Fatalf("after no answer, the token request to the new endpoint failed: %v", err)
		}
		if s.count(rfc8414Path) != 2 {
			t.Errorf("metadata read %d times, want 2", s.count(rfc8414Path))
		}
	})
	t.Run("other failures keep it", func(t *testing.T) {
		s := newIDPServer(t)
		s.serve(rfc8414Path, goodDoc)
		s.serve("/realms/x/token", func(string) (int, string) { return 503, `{"error":"temporarily_unavailable"}` })
		c := discoveryClient(t, s)
		for range 3 {
			_ = token(t, c)
		}
		if s.count(rfc8414Path) != 1 {
			t.Errorf("metadata read %d times after 503s, want 1", s.count(rfc8414Path))
		}
	})
}

// TestDiscoveryUnanswered: when neither document gets an answer, the error
// is a transport error; the token request's deadline bounds discovery.
func TestDiscoveryUnanswered(t *testing.T) {
	s := newIDPServer(t)
	url := s.URL
	s.Close()
	c := validConfig()
	c.TokenURL, c.Issuer = "", url+"/realms/x"
	err := token(t, newClient(t, c))
	if _, ok := errors.AsType[*TransportError](err); !ok {
		t.Fatalf("error %v, want one that unwraps to *TransportError", err)
	}
	if !strings.Contains(err.Error(), "issuer discovery for "+url+"/realms/x failed") {
		t.Errorf("error %q does not name the issuer", err)
	}

	hang := newServer(t, func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	c.Issuer = hang.URL
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err = newClient(t, c).Token(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("error %v, want the deadline", err)
	}
	if n := len(hang.requests()); n != 1 {
		t.Errorf("%d metadata requests after the deadline, want 1 (no second try)", n)
	}
}
