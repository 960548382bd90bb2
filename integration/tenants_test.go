package integration

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/caddy-upstream-oauth/upstream_oauth/integration/emulator"
)

// Per-request credentials: one gateway, many tenants, each with its own
// account at the provider. The tenants are t0, t1, ...: the gateway maps a
// request's X-Tenant to the tenant's client id and secret (a map regexp, so
// that the config under test stays one readable block), and the backend
// accepts a request only with a token the provider issued to the tenant the
// request names.

// tenantSecretMark ends every tenant secret: the leak check looks for it.
const tenantSecretMark = "-Qv7"

// tenantAccounts is the provider's accounts for tenants t0 .. t(n-1).
func tenantAccounts(n int) map[string]string {
	m := make(map[string]string, n)
	for i := range n {
		m[fmt.Sprintf("client-t%d", i)] = fmt.Sprintf("secret-t%d%s", i, tenantSecretMark)
	}
	return m
}

// startTenantProvider starts a provider with accounts (client id to
// secret), counted for the leak check; at the end of the test it must have
// seen no malformed token request.
func startTenantProvider(t *testing.T, accounts map[string]string) *emulator.TenantProvider {
	t.Helper()
	p := emulator.NewTenantProvider(accounts)
	providersMu.Lock()
	tenantProviders++
	providersMu.Unlock()
	t.Cleanup(func() {
		p.Close()
		if v := p.Violations(); len(v) > 0 {
			t.Errorf("tenant provider saw malformed token requests: %q", v[:min(len(v), 5)])
		}
	})
	return p
}

// startTenants starts a provider with n tenant accounts and a backend that
// checks each request's token belongs to the tenant it names.
func startTenants(t *testing.T, n int) (*emulator.TenantProvider, *emulator.TenantBackend) {
	t.Helper()
	p := startTenantProvider(t, tenantAccounts(n))
	b := emulator.NewTenantBackend(p, func(tenant string) string { return "client-" + tenant })
	t.Cleanup(b.Close)
	return p, b
}

// tenantSite is the gateway of the tenant tests (fmt: the handler's name,
// the token URL, more lines for the block, the backend): X-Tenant t<N> maps to
// client-t<N> and secret-t<N>-Qv7; any other X-Tenant to empty credentials.
const tenantSite = `
	map {http.request.header.X-Tenant} {tenant_id} {tenant_secret} {
		~^(t[0-9]+)$   "client-${1}"   "secret-${1}-Qv7"
		default        ""              ""
	}
	upstream_oauth {
		name %s
		token_url %s
		client_id {tenant_id}
		client_secret {tenant_secret}
		client_auth body
		%s
	}
	reverse_proxy %s
`

// tenantGet sends one request for tenant through the gateway.
func tenantGet(client *http.Client, g *gateway, tenant string) (int, error) {
	return tenantGetURL(client, g.url("/api"), tenant)
}

// tenantGetURL sends one GET of url for tenant.
func tenantGetURL(client *http.Client, url, tenant string) (int, error) {
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set(emulator.TenantHeader, tenant)
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

// TestTenantsIsolation: 50 tenants, 4 000 requests interleaved from 20
// clients at once: every request carries its own tenant's token (0 with
// another tenant's), and each tenant costs exactly one token request.
func TestTenantsIsolation(t *testing.T) {
	p, b := startTenants(t, 50)
	name := opsName("tenants")
	g := startGateway(t, fmt.Sprintf(tenantSite, name, p.TokenURL(), "", b.URL()))
	const clients, perClient = 20, 200
	var wg sync.WaitGroup
	var failed atomic.Int64
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := &http.Client{Timeout: 30 * time.Second}
			defer client.CloseIdleConnections()
			for i := range perClient {
				tenant := fmt.Sprintf("t%d", (c*7+i*13)%50)
				if status, err := tenantGet(client, g, tenant); err != nil || status != http.StatusOK {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("%d requests for 50 tenants: %d accepted, %d with another tenant's token, %d failed; %d token requests for %d clients",
		clients*perClient, b.Accepted(), b.CrossTenant(), failed.Load(), p.Requests(), p.Clients())
	if n := b.CrossTenant(); n != 0 {
		t.Errorf("%d requests carried another tenant's token; the contract: never a token obtained with credentials other than the request's own", n)
	}
	if n := failed.Load(); n != 0 || b.Unknown() != 0 {
		t.Errorf("%d requests failed, %d reached the backend without a valid token", n, b.Unknown())
	}
	if p.Requests() != 50 || p.Clients() != 50 {
		t.Errorf("token requests %d for %d clients; want exactly one per tenant, 50", p.Requests(), p.Clients())
	}
	for i := range 50 {
		if n := p.RequestsFor(fmt.Sprintf("client-t%d", i)); n != 1 {
			t.Errorf("tenant t%d: %d token requests, want 1", i, n)
		}
	}
}

// TestTenantsUnknownAndRejected: a request whose X-Tenant the map sends to
// the empty default is answered 403, with no token requested and nothing
// forwarded; a tenant whose secret the provider refuses gets 502 and its
// own backoff, while the other tenants go on unaffected.
func TestTenantsUnknownAndRejected(t *testing.T) {
	p, b := startTenants(t, 3)
	name := opsName("tenants")
	p.SetAccount("client-t2", "another-secret") // the gateway's secret for t2 is now wrong
	g := startGateway(t, fmt.Sprintf(tenantSite, name, p.TokenURL(), "", b.URL()))
	client := &http.Client{Timeout: 10 * time.Second}
	for _, who := range []string{"stranger", "", "t1; t2", "T1"} {
		if status, _ := tenantGet(client, g, who); status != http.StatusForbidden {
			t.Errorf("X-Tenant %q: %d, want 403 (incomplete credentials)", who, status)
		}
	}
	if n := p.Requests(); n != 0 {
		t.Fatalf("unknown tenants made %d token requests, want 0", n)
	}
	for i := range 3 {
		for range 5 {
			status, _ := tenantGet(client, g, "t2")
			if status != http.StatusBadGateway {
				t.Errorf("t2 with rejected credentials: %d, want 502", status)
			}
			if status, _ := tenantGet(client, g, fmt.Sprintf("t%d", i%2)); status != http.StatusOK {
				t.Errorf("t%d while t2 is refused: %d, want 200", i%2, status)
			}
		}
	}
	if n := p.RequestsFor("client-t2"); n != 1 {
		t.Errorf("t2's rejected credentials: %d token requests, want 1 (then its own backoff)", n)
	}
	if b.Accepted() != 15 || b.Unknown() != 0 || b.CrossTenant() != 0 {
		t.Errorf("backend: %d accepted, %d unknown, %d cross-tenant; want 15, 0, 0", b.Accepted(), b.Unknown(), b.CrossTenant())
	}
}

// TestTenantsMaxSources: with max_sources 3, a fourth tenant evicts the
// least recently used one (stopped as on a reload), which then needs a new
// token; the metrics count it, labelled by the handler's name.
func TestTenantsMaxSources(t *testing.T) {
	p, b := startTenants(t, 5)
	name := opsName("tenants")
	g := startGateway(t, fmt.Sprintf(tenantSite, name, p.TokenURL(), "max_sources 3", b.URL()))
	client := &http.Client{Timeout: 10 * time.Second}
	get := func(tenant string) {
		t.Helper()
		if status, err := tenantGet(client, g, tenant); err != nil || status != http.StatusOK {
			t.Fatalf("%s: %d %v", tenant, status, err)
		}
	}
	for _, tn := range []string{"t0", "t1", "t2", "t0"} { // t1 is now the least recently used
		get(tn)
	}
	get("t3") // evicts t1
	if n := p.Requests(); n != 4 {
		t.Fatalf("token requests: %d, want 4", n)
	}
	get("t0")
	get("t2")
	if n := p.Requests(); n != 4 {
		t.Errorf("t0 and t2 made token requests again (%d in all): the eviction took the wrong tenant", n)
	}
	get("t1")
	if n := p.RequestsFor("client-t1"); n != 2 {
		t.Errorf("t1 after its eviction: %d token requests in all, want 2", n)
	}
	metrics := scrape(t)
	for _, want := range []string{
		`caddy_upstream_oauth_sources{source="` + name + `"} 3`,
		`caddy_upstream_oauth_sources_created_total{source="` + name + `"} 5`,
		`caddy_upstream_oauth_sources_evicted_total{reason="capacity",source="` + name + `"} 2`,
		`caddy_upstream_oauth_token_requests_total{result="success",source="` + name + `"} 5`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if strings.Contains(metrics, `source="`+name+`:client-t`) {
		t.Errorf("metrics have a series per tenant; the contract: labelled by the handler's name")
	}
}

// TestTenantsColdStartBounded: 5 000 tenants at once, the provider taking
// 20 ms per token: it never sees more than 32 token requests in flight,
// and every request is answered 200.
func TestTenantsColdStartBounded(t *testing.T) {
	const n = 5000
	p, b := startTenants(t, n)
	name := opsName("tenants")
	p.SetDelay(20 * time.Millisecond)
	// The wait for one of the 32 slots counts against each token request's
	// timeout: 5000 queued behind a 20 ms provider wait over 3 s at best,
	// and on a loaded machine under -race more than the default 10 s. This
	// test is about the bound and every request answered, not speed.
	g := startGateway(t, fmt.Sprintf(tenantSite, name, p.TokenURL(), "timeout 90s", b.URL()))
	client := &http.Client{Timeout: 120 * time.Second, Transport: &http.Transport{MaxConnsPerHost: 1000, MaxIdleConnsPerHost: 1000}}
	defer client.CloseIdleConnections()
	var wg sync.WaitGroup
	var ok, failed atomic.Int64
	start := time.Now()
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if status, err := tenantGet(client, g, fmt.Sprintf("t%d", i)); err == nil && status == http.StatusOK {
				ok.Add(1)
			} else {
				failed.Add(1)
			}
		}()
	}
	wg.Wait()
	t.Logf("%d tenants at once: %d answered 200, %d not, in %v; the provider saw %d token requests, at most %d at once",
		n, ok.Load(), failed.Load(), time.Since(start).Round(time.Millisecond), p.Requests(), p.MostInFlight())
	if m := p.MostInFlight(); m > 32 {
		t.Errorf("the provider saw %d token requests in flight at once; the contract: at most 32 per token endpoint", m)
	}
	if ok.Load() != n {
		t.Errorf("%d of %d requests answered 200", ok.Load(), n)
	}
	if p.Requests() != n || b.CrossTenant() != 0 {
		t.Errorf("token requests %d (want %d), cross-tenant %d", p.Requests(), n, b.CrossTenant())
	}
}

// TestTenantsReload: a reload that leaves the handler unchanged (another
// route changed) keeps every tenant's source and token: 0 token requests
// for 1 000 warm tenants; a changed handler starts over.
func TestTenantsReload(t *testing.T) {
	const n = 1000
	p, b := startTenants(t, n)
	name := opsName("tenants")
	g := startGateway(t, fmt.Sprintf(tenantSite, name, p.TokenURL(), "", b.URL()))
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 50}}
	defer client.CloseIdleConnections()
	warm := func() int64 {
		var wg sync.WaitGroup
		var failed atomic.Int64
		sem := make(chan struct{}, 50)
		for i := range n {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				if status, err := tenantGet(client, g, fmt.Sprintf("t%d", i)); err != nil || status != http.StatusOK {
					failed.Add(1)
				}
			}()
		}
		wg.Wait()
		return failed.Load()
	}
	if f := warm(); f != 0 {
		t.Fatalf("%d requests failed warming up", f)
	}
	before := p.Requests()
	g.load(fmt.Sprintf(tenantSite, name, p.TokenURL(), "", b.URL()) + "\thandle_path /other/* {\n\t\trespond \"another route\"\n\t}\n")
	if f := warm(); f != 0 {
		t.Errorf("%d requests failed after the reload", f)
	}
	kept := p.Requests() - before
	g.load(fmt.Sprintf(tenantSite, name, p.TokenURL(), "scope read", b.URL()))
	if f := warm(); f != 0 {
		t.Errorf("%d requests failed after the changed reload", f)
	}
	changed := p.Requests() - before - kept
	t.Logf("%d warm tenants: %d token requests after an unchanged reload, %d after the handler changed", n, kept, changed)
	if kept != 0 {
		t.Errorf("an unchanged reload made %d token requests for %d warm tenants, want 0", kept, n)
	}
	if changed != n {
		t.Errorf("a changed handler made %d token requests, want %d (it starts over)", changed, n)
	}
}

// TestTenantsAdminLogsEvents: the admin API lists each tenant's source,
// named after the handler's name and the tenant's client id, and renews
// one by that name; the log lines name the tenant's source.
func TestTenantsAdminLogs(t *testing.T) {
	p, b := startTenants(t, 3)
	name := opsName("tenants")
	g := startGateway(t, fmt.Sprintf(tenantSite, name, p.TokenURL(), "", b.URL()))
	client := &http.Client{Timeout: 10 * time.Second}
	for _, tn := range []string{"t0", "t1", "t2"} {
		if status, err := tenantGet(client, g, tn); err != nil || status != http.StatusOK {
			t.Fatalf("%s: %d %v", tn, status, err)
		}
	}
	code, body := admin(t, http.MethodGet, "/upstream_oauth/sources")
	if code != http.StatusOK {
		t.Fatalf("admin: %d", code)
	}
	for i := range 3 {
		s := sourcesAnswer(t, body, fmt.Sprintf("%s:client-t%d", name, i))
		if s.ClientID != fmt.Sprintf("client-t%d", i) || s.State != "valid" || s.Requests != 1 {
			t.Errorf("tenant t%d in the admin API: %+v", i, s)
		}
	}
	if strings.Contains(body, tenantSecretMark) || strings.Contains(body, emulator.TenantTokenPrefix) {
		t.Errorf("the admin answer holds a secret or a token")
	}
	if code, body := admin(t, http.MethodPost, "/upstream_oauth/sources/"+name+":client-t1/renew"); code != http.StatusOK {
		t.Fatalf("renew t1: %d %s", code, body)
	}
	if n0, n1 := p.RequestsFor("client-t0"), p.RequestsFor("client-t1"); n0 != 1 || n1 != 2 {
		t.Errorf("token requests after renewing t1: t0 %d, t1 %d; want 1 and 2", n0, n1)
	}
	if !eventually(3*time.Second, func() bool {
		return strings.Count(g.logText(), `"source":"`+name+`:client-t1"`) >= 2
	}) {
		t.Errorf("the log lines do not name the tenant's source %s:client-t1", name)
	}
}

// TestTenantsShared: two instances (the xcaddy binary) sharing a
// file_system storage, 20 tenants sent to both: one token request per
// tenant in all.
func TestTenantsShared(t *testing.T) {
	p, b := startTenants(t, 20)
	store := t.TempDir()
	ins := launchFleet(t, 2, func(in *instance) string {
		return fmt.Sprintf(`{
	admin %s
	auto_https off
	storage file_system %s
	log {
		output file %s
		level DEBUG
	}
}
http://%s {
	map {http.request.header.X-Tenant} {tenant_id} {tenant_secret} {
		~^(t[0-9]+)$   "client-${1}"   "secret-${1}-Qv7"
		default        ""              ""
	}
	upstream_oauth {
		name shared-tenants
		token_url %s
		client_id {tenant_id}
		client_secret {tenant_secret}
		client_auth body
		share
	}
	reverse_proxy %s
}
`, in.admin, store, in.log, in.addr, p.TokenURL(), b.URL())
	})
	client := &http.Client{Timeout: 30 * time.Second}
	for round := range 3 {
		for i := range 20 {
			for k, in := range ins {
				status, err := tenantGetURL(client, "http://"+in.addr+"/api", fmt.Sprintf("t%d", i))
				if err != nil {
					t.Fatal(err)
				}
				if status != http.StatusOK {
					t.Errorf("round %d, tenant t%d, instance %d: %d", round, i, k, status)
				}
			}
		}
	}
	t.Logf("2 instances, 20 tenants, 120 requests: %d token requests, %d cross-tenant", p.Requests(), b.CrossTenant())
	if n := p.Requests(); n != 20 {
		t.Errorf("token requests: %d, want 20 (one per tenant, fleet-wide)", n)
	}
	if b.CrossTenant() != 0 {
		t.Errorf("%d requests carried another tenant's token", b.CrossTenant())
	}
}

// TestTenantsContractExample: the contract's example as written: a map
// from the client certificate's subject to the 1NCE username and a
// password from a file, the unknown subject to empty credentials. Each
// device gets its tenant's token; a device the map does not know gets 403.
func TestTenantsContractExample(t *testing.T) {
	p := startTenantProvider(t, map[string]string{"api-acme": "acme-pass-Qv7", "api-globex": "globex-pass-Qv7"})
	devices := map[string]string{"gw-acme": "api-acme", "gw-globex": "api-globex"}
	b := emulator.NewTenantBackend(p, func(subject string) string { return devices[strings.TrimPrefix(subject, "CN=")] })
	t.Cleanup(b.Close)
	secrets := t.TempDir()
	for file, pass := range map[string]string{"acme": "acme-pass-Qv7\n", "globex": "globex-pass-Qv7\n"} {
		if err := os.WriteFile(filepath.Join(secrets, file), []byte(pass), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ca := newTestCA(t)
	_, serverCert, serverKey := ca.issue(t, "gateway", false, "gateway.localhost")
	port := freePort(t)
	addr := fmt.Sprintf("gateway.localhost:%d", port) // a name: with client_auth, Caddy wants SNI to match the host
	log := filepath.Join(logDir, "tenants-contract-example.log")
	tester := caddytest.NewTester(t)
	tester.InitServer(fmt.Sprintf(`{
	admin localhost:%[1]d
	auto_https off
	log {
		output file %[2]s
		level DEBUG
	}
}
https://%[3]s {
	bind 127.0.0.1
	tls %[4]s %[5]s {
		client_auth {
			mode require_and_verify
			trust_pool file %[6]s
		}
	}
	map {http.request.tls.client.subject} {tenant_user} {tenant_pass} {
		"CN=gw-acme"     api-acme     {file.%[7]s/acme}
		"CN=gw-globex"   api-globex   {file.%[7]s/globex}
		default          ""           ""
	}
	upstream_oauth 1nce {
		token_url %[8]s
		username {tenant_user}
		password {tenant_pass}
	}
	reverse_proxy %[9]s {
		header_up X-Tenant {http.request.tls.client.subject}
	}
}
`, adminPort, log, addr, serverCert, serverKey, ca.file, secrets, p.TokenURL(), b.URL()), "caddyfile")
	if t.Failed() {
		t.FailNow()
	}
	device := func(cn string) (int, string) {
		pair, _, _ := ca.issue(t, cn, true)
		client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: ca.pool(), Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12},
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, network, fmt.Sprintf("127.0.0.1:%d", port))
			},
		}}
		defer client.CloseIdleConnections()
		resp, err := client.Get("https://" + addr + "/v1/sims")
		if err != nil {
			t.Fatalf("%s: %v", cn, err)
		}
		defer resp.Body.Close()
		return resp.StatusCode, resp.Header.Get("X-Token-Owner")
	}
	for range 2 {
		for cn, user := range devices {
			if status, owner := device(cn); status != http.StatusOK || owner != user {
				t.Errorf("device %s: %d, token of %q; want 200 with %s's token", cn, status, owner, user)
			}
		}
	}
	if status, _ := device("gw-stranger"); status != http.StatusForbidden {
		t.Errorf("a device the map does not know: %d, want 403", status)
	}
	if p.Requests() != 2 || p.RequestsFor("api-acme") != 1 || p.RequestsFor("api-globex") != 1 {
		t.Errorf("token requests: %d (acme %d, globex %d), want one per tenant", p.Requests(), p.RequestsFor("api-acme"), p.RequestsFor("api-globex"))
	}
}
