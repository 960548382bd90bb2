package integration

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-upstream-oauth/upstream_oauth/integration/emulator"
)

// The tests of the tls block: the token endpoint is served over TLS by the
// ONEiO emulator (itself, or wrapped in a server with a certificate of a
// test CA), and the gateway reaches it only with the right settings.

// oneioBlock is the upstream_oauth directive with the oneio preset and the
// credentials startProvider gives the ONEiO emulator, at tokenURL (which
// may be another server wrapping the emulator), plus extra lines.
func oneioBlock(tokenURL string, extra ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\tupstream_oauth oneio {\n\t\ttoken_url %s\n", tokenURL)
	b.WriteString("\t\tclient_id client-oneio\n\t\tclient_secret secret-oneio-Zq8\n")
	for _, e := range extra {
		fmt.Fprintf(&b, "\t\t%s\n", e)
	}
	b.WriteString("\t}\n")
	return b.String()
}

// tlsBlock is a tls block with lines, for oneioBlock's extra.
func tlsBlock(lines ...string) string {
	return "tls {\n\t\t\t" + strings.Join(lines, "\n\t\t\t") + "\n\t\t}"
}

// writePEM writes one PEM block of typ to a new file in dir.
func writePEM(t *testing.T, dir, name, typ string, der []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// testCA is a certificate authority made for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	file string // its certificate, PEM
	dir  string
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "upstream_oauth test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	return &testCA{cert: cert, key: key, dir: dir, file: writePEM(t, dir, "ca.pem", "CERTIFICATE", der)}
}

// pool is a cert pool holding only the CA.
func (ca *testCA) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

// issue makes a leaf certificate for a server (names: DNS names or IP
// addresses) or, with client, for a TLS client; it returns the pair and
// the PEM files of the certificate and key.
func (ca *testCA) issue(t *testing.T, name string, client bool, names ...string) (pair tls.Certificate, certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if client {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile = writePEM(t, ca.dir, name+".pem", "CERTIFICATE", der)
	keyFile = writePEM(t, ca.dir, name+"-key.pem", "PRIVATE KEY", keyDER)
	pair, err = tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	return pair, certFile, keyFile
}

// startTLSHandler serves h over TLS with cfg on 127.0.0.1.
func startTLSHandler(t *testing.T, h http.Handler, cfg *tls.Config) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.TLS = cfg
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

// startTLSProvider starts the ONEiO emulator over TLS, with httptest's
// self-signed certificate, and returns it with that certificate as a PEM
// file to trust.
func startTLSProvider(t *testing.T) (*emulator.Provider, string) {
	t.Helper()
	p := emulator.New(emulator.Config{
		Kind:         emulator.ONEiO,
		ClientID:     "client-oneio",
		ClientSecret: "secret-oneio-Zq8",
	})
	srv := p.StartTLS()
	providersMu.Lock()
	providers = append(providers, p)
	providersMu.Unlock()
	t.Cleanup(func() {
		p.Close()
		if v := p.Violations(); len(v) > 0 {
			t.Errorf("emulator saw malformed token requests: %q", v)
		}
	})
	return p, writePEM(t, t.TempDir(), "provider-ca.pem", "CERTIFICATE", srv.Certificate().Raw)
}

// getOK sends n requests through g and requires 200 "ok oneio" for each.
func getOK(t *testing.T, g *gateway, n int) {
	t.Helper()
	for i := range n {
		if status, body, _ := g.get("/tls"); status != http.StatusOK || body != "ok oneio" {
			t.Fatalf("request %d: %d %q, want 200 \"ok oneio\"", i, status, body)
		}
	}
}

// getBadGateway sends one request through g and requires 502, with nothing
// reaching the backend.
func getBadGateway(t *testing.T, g *gateway, b *emulator.Backend) {
	t.Helper()
	if status, _, _ := g.get("/tls"); status != http.StatusBadGateway {
		t.Errorf("status %d, want 502", status)
	}
	if n := b.Accepted() + b.Rejected(); n != 0 || len(b.SeenAuthorization()) != 0 {
		t.Errorf("%d requests reached the backend", n)
	}
}

// TestTLSCustomCA: the token endpoint is served with a certificate the
// system does not trust; `tls { ca <file> }` makes the gateway trust it.
func TestTLSCustomCA(t *testing.T) {
	p, caFile := startTLSProvider(t)
	if !strings.HasPrefix(p.TokenURL(), "https://127.0.0.1:") {
		t.Fatalf("emulator token URL %s is not https on loopback", p.TokenURL())
	}
	b := startBackend(t, p)
	g := startGateway(t, oneioBlock(p.TokenURL(), tlsBlock("ca "+caFile))+"\treverse_proxy "+b.URL()+"\n")
	getOK(t, g, 5)
	if n := p.TokenRequests(); n != 1 {
		t.Errorf("token requests: %d, want 1", n)
	}
	if b.Accepted() != 5 || b.Rejected() != 0 {
		t.Errorf("backend accepted %d, rejected %d; want 5, 0", b.Accepted(), b.Rejected())
	}
}

// TestTLSWithoutCAFails: the same endpoint without the ca: the handshake
// fails, the client gets 502, nothing reaches the backend, and one warning
// says why.
func TestTLSWithoutCAFails(t *testing.T) {
	p, _ := startTLSProvider(t)
	b := startBackend(t, p)
	g := startGateway(t, oneioBlock(p.TokenURL())+"\treverse_proxy "+b.URL()+"\n")
	getBadGateway(t, g, b)
	if n := p.TokenRequests(); n != 0 {
		t.Errorf("token requests reached the emulator: %d, want 0", n)
	}
	var warns []logLine
	if !eventually(5*time.Second, func() bool { warns = moduleWarnings(g.logText()); return len(warns) > 0 }) {
		t.Fatalf("no warning logged for the TLS failure; log:\n%s", g.logText())
	}
	if len(warns) != 1 {
		t.Errorf("%d warnings for one token request, want 1: %q", len(warns), warns)
	}
	if w := warns[0].text(); !strings.Contains(w, "x509") || !strings.Contains(w, "unknown authority") {
		t.Errorf("the warning does not say the certificate is not trusted: %s", w)
	}
	t.Logf("log: %s", warns[0].text())
}

// TestTLSMutual: a token endpoint that requires a client certificate of a
// test CA accepts the gateway with `client_cert`, and refuses it (502,
// nothing forwarded) without.
func TestTLSMutual(t *testing.T) {
	p := startProvider(t, emulator.ONEiO)
	ca := newTestCA(t)
	serverPair, _, _ := ca.issue(t, "token-server", false, "127.0.0.1")
	_, clientCert, clientKey := ca.issue(t, "gateway-client", true)
	srv := startTLSHandler(t, p, &tls.Config{
		Certificates: []tls.Certificate{serverPair},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    ca.pool(),
	})
	tokenURL := srv.URL + emulator.ONEiOTokenPath
	b := startBackend(t, p)

	t.Run("with client_cert", func(t *testing.T) {
		g := startGateway(t, oneioBlock(tokenURL, tlsBlock("ca "+ca.file, "client_cert "+clientCert+" "+clientKey))+
			"\treverse_proxy "+b.URL()+"\n")
		getOK(t, g, 3)
		if n := p.TokenRequests(); n != 1 {
			t.Errorf("token requests: %d, want 1", n)
		}
	})
	before := b.Accepted() + b.Rejected()
	requests := p.TokenRequests()
	t.Run("without client_cert", func(t *testing.T) {
		b2 := startBackend(t, p)
		g := startGateway(t, oneioBlock(tokenURL, tlsBlock("ca "+ca.file))+"\treverse_proxy "+b2.URL()+"\n")
		getBadGateway(t, g, b2)
		if n := p.TokenRequests() - requests; n != 0 {
			t.Errorf("%d token requests reached the emulator without a client certificate", n)
		}
		var warns []logLine
		if !eventually(5*time.Second, func() bool { warns = moduleWarnings(g.logText()); return len(warns) > 0 }) {
			t.Fatalf("no warning logged for the refused handshake")
		}
		t.Logf("log: %s", warns[0].text())
	})
	if n := b.Accepted() + b.Rejected(); n != before {
		t.Errorf("the first backend saw %d more requests", n-before)
	}
}

// TestTLSServerName: the endpoint's certificate names only auth.internal;
// the token URL uses 127.0.0.1, and `server_name auth.internal` makes the
// certificate check (and SNI) use the name. Without it, the check fails.
func TestTLSServerName(t *testing.T) {
	p := startProvider(t, emulator.ONEiO)
	ca := newTestCA(t)
	pair, _, _ := ca.issue(t, "auth.internal", false, "auth.internal")
	sni := make(chan string, 100)
	srv := startTLSHandler(t, p, &tls.Config{
		Certificates: []tls.Certificate{pair},
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			select {
			case sni <- hello.ServerName:
			default:
			}
			return nil, nil
		},
	})
	tokenURL := srv.URL + emulator.ONEiOTokenPath
	if !strings.HasPrefix(tokenURL, "https://127.0.0.1:") {
		t.Fatalf("token URL %s is not https://127.0.0.1", tokenURL)
	}
	b := startBackend(t, p)

	t.Run("server_name auth.internal", func(t *testing.T) {
		g := startGateway(t, oneioBlock(tokenURL, tlsBlock("ca "+ca.file, "server_name auth.internal"))+
			"\treverse_proxy "+b.URL()+"\n")
		getOK(t, g, 3)
		select {
		case name := <-sni:
			if name != "auth.internal" {
				t.Errorf("SNI %q, want auth.internal", name)
			}
		default:
			t.Errorf("no TLS handshake seen")
		}
	})
	t.Run("without server_name", func(t *testing.T) {
		b2 := startBackend(t, p)
		g := startGateway(t, oneioBlock(tokenURL, tlsBlock("ca "+ca.file))+"\treverse_proxy "+b2.URL()+"\n")
		getBadGateway(t, g, b2)
		var warns []logLine
		if !eventually(5*time.Second, func() bool { warns = moduleWarnings(g.logText()); return len(warns) > 0 }) {
			t.Fatalf("no warning logged for the name mismatch")
		}
		if w := warns[0].text(); !strings.Contains(w, "x509") {
			t.Errorf("the warning does not give the certificate problem: %s", w)
		}
	})
	if n := p.TokenRequests(); n != 1 {
		t.Errorf("token requests: %d, want 1 (from the config with server_name)", n)
	}
}
