// Command emulators serves, on loopback, the provider emulators and the
// backend that bench/load.sh puts Caddy in front of, and counts their
// token requests.
//
// It starts three 1NCE token endpoints (integration/emulator) and one
// backend that accepts the tokens of all three:
//
//	steady  tokens live an hour; answers at once. Also issues, before
//	        anything else, the one token that the static header_up
//	        baseline sends, so that the backend checks both arms' tokens
//	        alike (same provider, same token table).
//	cold    tokens live an hour; answers after 500 ms, so that a cold
//	        start's requests all arrive while its first answer is awaited
//	renew   tokens live 3 s; answers after 500 ms (the renewal boundary)
//
// With -tenants N it also starts a tenant provider with N accounts
// (client-t<i>, secret-t<i>-Kd9) and a backend that accepts a request only
// with a token of the tenant its X-Tenant names, and writes, one line per
// tenant, "t<i> <token>" to the file TENANT_TOKENS names: the tokens the
// static map baseline sends.
//
// It writes shell assignments (STEADY_TOKEN_URL=..., STATIC_TOKEN=..., the
// credentials, and PORTS, free ports for the caller) to -env, then serves on
// -control until SIGINT or SIGTERM:
//
//	GET /counts   one line per provider, "name token_requests", and the
//	              backend's "accepted N" and "rejected N"
//
// On exit it prints the counts and any request a provider found malformed.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/caddy-upstream-oauth/upstream_oauth/grants"
	"github.com/caddy-upstream-oauth/upstream_oauth/integration/emulator"
)

// Credentials of the emulated accounts: the same for all three (each
// provider has its own token set).
const (
	clientID     = "bench-client"
	clientSecret = "bench-secret-Kd9" //nolint:gosec // G101: the emulators' own test credential
)

type provider struct {
	name string
	*emulator.Provider
}

func main() {
	envFile := flag.String("env", "", "write shell assignments of the URLs and tokens to this file")
	control := flag.String("control", "127.0.0.1:0", "address of the control endpoint (/counts)")
	nPorts := flag.Int("ports", 0, "also pick this many free loopback ports for the caller (PORTS=...)")
	slow := flag.Duration("slow", 500*time.Millisecond, "how long the cold and renew providers take to answer")
	renewTTL := flag.Duration("renew-ttl", 3*time.Second, "lifetime of the renew provider's tokens")
	tenants := flag.Int("tenants", 0, "also start a tenant provider and backend with this many tenants")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("emulators: ")

	mk := func(name string, ttl, delay time.Duration) provider {
		p := emulator.New(emulator.Config{Kind: emulator.OneNCE, ClientID: clientID, ClientSecret: clientSecret, TTL: ttl})
		if delay > 0 {
			p.SetSlowDelay(delay)
			p.SetMode(emulator.Slow)
		}
		p.Start()
		return provider{name, p}
	}
	providers := []provider{
		mk("steady", time.Hour, 0),
		mk("cold", time.Hour, *slow),
		mk("renew", *renewTTL, *slow),
	}
	ps := make([]*emulator.Provider, len(providers))
	for i, p := range providers {
		ps[i] = p.Provider
	}
	backend := emulator.NewBackend(ps...)
	backend.Start()

	static, err := staticToken(providers[0].TokenURL())
	if err != nil {
		log.Fatalf("getting the static token: %v", err)
	}

	ln, err := net.Listen("tcp", *control)
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /counts", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = fmt.Fprint(w, counts(providers, backend))
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()

	var env strings.Builder
	for _, p := range providers {
		fmt.Fprintf(&env, "%s_TOKEN_URL=%s\n", strings.ToUpper(p.name), p.TokenURL())
	}
	fmt.Fprintf(&env, "BACKEND_URL=%s\nCONTROL_URL=http://%s\nSTATIC_TOKEN=%s\nCLIENT_ID=%s\nCLIENT_SECRET=%s\n",
		backend.URL(), ln.Addr(), static, clientID, clientSecret)
	var tp *emulator.TenantProvider
	var tb *emulator.TenantBackend
	if *tenants > 0 {
		accounts := map[string]string{}
		for i := range *tenants {
			accounts[fmt.Sprintf("client-t%d", i)] = fmt.Sprintf("secret-t%d-Kd9", i)
		}
		tp = emulator.NewTenantProvider(accounts)
		tb = emulator.NewTenantBackend(tp, func(tenant string) string { return "client-" + tenant })
		file := *envFile + ".tenant-tokens"
		if err := tenantTokens(tp.TokenURL(), *tenants, file); err != nil {
			log.Fatalf("getting the tenants' static tokens: %v", err)
		}
		fmt.Fprintf(&env, "TENANT_TOKEN_URL=%s\nTENANT_BACKEND_URL=%s\nTENANT_TOKENS=%s\n", tp.TokenURL(), tb.URL(), file)
		mux.HandleFunc("GET /tenant-counts", func(w http.ResponseWriter, _ *http.Request) {
			_, _ = fmt.Fprintf(w, "tenant_token_requests %d\ntenant_accepted %d\ntenant_cross %d\ntenant_unknown %d\n",
				tp.Requests(), tb.Accepted(), tb.CrossTenant(), tb.Unknown())
		})
	}
	ports, err := freePorts(*nPorts)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Fprintf(&env, "PORTS=%q\n", strings.Join(ports, " "))
	if *envFile != "" {
		if err := os.WriteFile(*envFile, []byte(env.String()), 0o600); err != nil {
			log.Fatal(err)
		}
	} else {
		fmt.Print(env.String())
	}

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = srv.Shutdown(ctx)
	fmt.Fprint(os.Stderr, counts(providers, backend))
	bad := 0
	for _, p := range providers {
		for _, v := range p.Violations() {
			log.Printf("malformed token request: %s", v)
			bad++
		}
		p.Close()
	}
	backend.Close()
	if tp != nil {
		for _, v := range tp.Violations() {
			log.Printf("malformed tenant token request: %s", v)
			bad++
		}
		if n := tb.CrossTenant(); n > 0 {
			log.Printf("%d requests carried another tenant's token", n)
			bad++
		}
		tp.Close()
		tb.Close()
	}
	if bad > 0 {
		os.Exit(1)
	}
}

// tenantTokens gets one token per tenant from the tenant provider and
// writes "t<i> <token>" lines to file.
func tenantTokens(tokenURL string, n int, file string) error {
	var b strings.Builder
	for i := range n {
		c, err := grants.NewClient(grants.Config{
			TokenURL: tokenURL, Grant: grants.ClientCredentials,
			ClientID: fmt.Sprintf("client-t%d", i), ClientSecret: fmt.Sprintf("secret-t%d-Kd9", i),
			ClientAuth: grants.AuthBody, Body: grants.BodyForm, DefaultTTL: time.Hour,
		}, grants.NewHTTPClient(nil))
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		tok, err := c.Token(ctx)
		cancel()
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "t%d %s\n", i, tok.AccessToken)
	}
	return os.WriteFile(file, []byte(b.String()), 0o600)
}

// freePorts returns n loopback ports that were free a moment ago (all
// held at once, so they differ).
func freePorts(n int) ([]string, error) {
	var ports []string
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		_, port, _ := net.SplitHostPort(l.Addr().String())
		ports = append(ports, port)
	}
	return ports, nil
}

func counts(providers []provider, backend *emulator.Backend) string {
	var b strings.Builder
	for _, p := range providers {
		fmt.Fprintf(&b, "%s %d\n", p.name, p.TokenRequests())
	}
	fmt.Fprintf(&b, "accepted %d\nrejected %d\n", backend.Accepted(), backend.Rejected())
	return b.String()
}

// staticToken obtains a token from tokenURL with the module's own client,
// as the 1nce preset asks for it.
func staticToken(tokenURL string) (string, error) {
	p, _ := grants.LookupPreset("1nce")
	c, err := grants.NewClient(grants.Config{
		TokenURL:   tokenURL,
		Grant:      p.Grant,
		Username:   clientID,
		Password:   clientSecret,
		ClientAuth: p.ClientAuth,
		Body:       p.Body,
		DefaultTTL: time.Hour,
	}, grants.NewHTTPClient(nil))
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tok, err := c.Token(ctx)
	if err != nil {
		return "", err
	}
	return tok.AccessToken, nil
}
