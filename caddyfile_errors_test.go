package upstreamoauth

import (
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// TestUnmarshalCaddyfileErrors checks that each bad block fails to parse
// with a message that names the problem and the file and line.
func TestUnmarshalCaddyfileErrors(t *testing.T) {
	for _, tc := range []struct {
		name, input, want string
	}{
		{"unknown provider", `upstream_oauth acme`, `unknown provider 'acme'`},
		{"two providers", `upstream_oauth 1nce oneio`, `wrong argument count`},
		{"unknown subdirective", "upstream_oauth 1nce {\n\tusername u\n\tpassword p\n\tflavour vanilla\n}", `unrecognized subdirective 'flavour'`},
		{"unknown tls subdirective", "upstream_oauth 1nce {\n\tusername u\n\tpassword p\n\ttls {\n\t\tinsecure\n\t}\n}", `unrecognized tls subdirective 'insecure'`},
		{"bad grant", "upstream_oauth {\n\tgrant implicit\n}", `grant: 'implicit' is not one of client_credentials, password`},
		{"bad client_auth", "upstream_oauth {\n\tclient_auth digest\n}", `client_auth: 'digest' is not one of basic, body, none`},
		{"bad body", "upstream_oauth {\n\tbody xml\n}", `body: 'xml' is not one of form, json`},
		{"no token_url", "upstream_oauth {\n\tclient_id a\n\tclient_secret b\n}", `token_url is required`},
		{"client_credentials without secret", "upstream_oauth {\n\ttoken_url https://a.example/t\n\tclient_id a\n}", `needs client_secret`},
		{"client_credentials without id", "upstream_oauth oneio {\n\tclient_secret s\n}", `needs client_id`},
		{"password without user", "upstream_oauth telenor {\n\tclient_id a\n\tclient_secret b\n}", `grant password needs username and password`},
		{"password without client", "upstream_oauth telenor {\n\tusername u\n\tpassword p\n}", `needs client_id and client_secret`},
		{"malformed url", "upstream_oauth {\n\ttoken_url ://nope\n\tclient_id a\n\tclient_secret b\n}", `token_url: malformed URL`},
		{"relative url", "upstream_oauth {\n\ttoken_url /oauth/token\n\tclient_id a\n\tclient_secret b\n}", `is not an absolute URL`},
		{"http url", "upstream_oauth {\n\ttoken_url http://auth.example.com/token\n\tclient_id a\n\tclient_secret b\n}", `http:// is only allowed for a loopback host`},
		{"ftp url", "upstream_oauth {\n\ttoken_url ftp://auth.example.com/token\n\tclient_id a\n\tclient_secret b\n}", `scheme "ftp" is not supported`},
		{"http logout url", "upstream_oauth 1nce {\n\tusername u\n\tpassword p\n\tlogout_url http://auth.example.com/logout\n}", `logout_url: http:// is only allowed`},
		{"credentials in url", "upstream_oauth {\n\ttoken_url https://u:p@auth.example.com/token\n\tclient_id a\n\tclient_secret b\n}", `credentials in the URL are not allowed`},
		{"bad duration", "upstream_oauth 1nce {\n\ttimeout soon\n}", `bad duration 'soon'`},
		{"negative duration", "upstream_oauth 1nce {\n\tdefault_ttl -5m\n}", `must be positive`},
		{"bad refresh_ahead", "upstream_oauth 1nce {\n\trefresh_ahead 120%\n}", `refresh_ahead "120%"`},
		{"bad refresh_ahead duration", "upstream_oauth 1nce {\n\trefresh_ahead later\n}", `refresh_ahead "later"`},
		{"bad status", "upstream_oauth 1nce {\n\trenew_on 401 nope\n}", `renew_on: 'nope' is not an HTTP status code`},
		{"status out of range", "upstream_oauth 1nce {\n\trenew_on 999\n}", `renew_on: '999' is not an HTTP status code`},
		{"param arity", "upstream_oauth 1nce {\n\tparam only_name\n}", `wrong argument count`},
		{"reserved param", "upstream_oauth 1nce {\n\tusername u\n\tpassword p\n\tparam grant_type implicit\n}", `param "grant_type" is set by the module itself`},
		{"duplicate param", "upstream_oauth 1nce {\n\tparam a 1\n\tparam a 2\n}", `param 'a' given more than once`},
		{"bad header name", "upstream_oauth 1nce {\n\theader X:Y\n}", `header: 'X:Y' is not a header name`},
		{"header arity", "upstream_oauth 1nce {\n\theader A B C\n}", `wrong argument count`},
		{"share with arg", "upstream_oauth 1nce {\n\tshare yes\n}", `wrong argument count`},
		{"repeated token_url", "upstream_oauth {\n\ttoken_url https://a.example/t\n\ttoken_url https://b.example/t\n}", `subdirective 'token_url' given more than once`},
		{"client_cert arity", "upstream_oauth 1nce {\n\ttls {\n\t\tclient_cert only.pem\n\t}\n}", `wrong argument count`},
		{"missing value", "upstream_oauth 1nce {\n\tusername\n}", `wrong argument count`},
		{"header with a non-token character", "upstream_oauth 1nce {\n\theader X-Tök\n}", `header: 'X-Tök' is not a header name`},
		{"token_header with parentheses", "upstream_oauth 1nce {\n\ttoken_header \"X(a)\" v\n}", `token_header: "X(a)" is not a valid HTTP field name`},
		{"token_header value with a newline", "upstream_oauth 1nce {\n\ttoken_header X-Key \"a\nb\"\n}", `the value has control characters`},
		{"scheme with a newline", "upstream_oauth 1nce {\n\theader X-Token \"Be\narer\"\n}", `scheme "Be\narer" has spaces, control`},
		{"scheme with a space", "upstream_oauth 1nce {\n\theader X-Token \"My Scheme\"\n}", `scheme "My Scheme" has spaces`},
		{"default_ttl of a nanosecond", "upstream_oauth 1nce {\n\tdefault_ttl 1ns\n}", `default_ttl 1ns: want 1s to a year`},
		{"default_ttl past a year", "upstream_oauth 1nce {\n\tdefault_ttl 100000h\n}", `default_ttl 100000h0m0s: want 1s to a year`},
		{"block after a one-value subdirective", "upstream_oauth 1nce {\n\tname gw {\n\t\tusername u\n\t}\n}", `subdirective 'name' takes values on its line, not a block`},
		{"block after token_url", "upstream_oauth {\n\ttoken_url https://a.example/t {\n\t}\n}", `subdirective 'token_url' takes values on its line, not a block`},
		{"block after share", "upstream_oauth 1nce {\n\tshare {\n\t\tttl 5m\n\t}\n}", `subdirective 'share' takes values on its line, not a block`},
		{"request placeholder in token_url", "upstream_oauth {\n\ttoken_url https://{http.request.host}/token\n\tclient_id a\n\tclient_secret b\n}", `token_url: request placeholder {http.request.host} is not allowed here`},
		{"request placeholder in issuer", "upstream_oauth {\n\tissuer {http.request.header.X-Issuer}\n}", `issuer: request placeholder {http.request.header.X-Issuer} is not allowed here`},
		{"request placeholder in logout_url", "upstream_oauth telenor {\n\tlogout_url https://{tenant_host}/logout\n}", `logout_url: request placeholder {tenant_host} is not allowed`},
		{"request placeholder in grant", "upstream_oauth {\n\tgrant {http.request.header.X-Grant}\n}", `grant: request placeholder`},
		{"request placeholder in client_auth", "upstream_oauth {\n\tclient_auth {tenant_auth}\n}", `client_auth: request placeholder {tenant_auth} is not allowed`},
		{"request placeholder in body", "upstream_oauth {\n\tbody {http.request.header.X-Body}\n}", `body: request placeholder`},
		{"request placeholder in header", "upstream_oauth 1nce {\n\theader {http.request.header.X-H}\n}", `header: request placeholder`},
		{"request placeholder in a tls file", "upstream_oauth 1nce {\n\ttls {\n\t\tclient_cert /certs/{tenant}.pem /keys/k.pem\n\t}\n}", `tls client_cert: request placeholder {tenant} is not allowed`},
		{"request placeholder in a tls ca", "upstream_oauth 1nce {\n\ttls {\n\t\tca {http.request.header.X-CA}\n\t}\n}", `tls ca: request placeholder`},
		{"request placeholder in the assertion key", "upstream_oauth {\n\tclient_auth private_key_jwt\n\tassertion {\n\t\tkey /keys/{tenant}.pem\n\t}\n}", `assertion key: request placeholder {tenant} is not allowed`},
		{"request placeholder in the assertion x5t", "upstream_oauth {\n\tclient_auth private_key_jwt\n\tassertion {\n\t\tkey /keys/k.pem\n\t\tx5t /certs/{tenant}.pem\n\t}\n}", `assertion x5t: request placeholder`},
		{"request placeholder in the provider", "upstream_oauth {http.request.header.X-Provider}", `provider: request placeholder`},
		{"max_sources not a number", "upstream_oauth 1nce {\n\tmax_sources many\n}", `max_sources: 'many' is not a positive number`},
		{"max_sources zero", "upstream_oauth 1nce {\n\tmax_sources 0\n}", `max_sources: '0' is not a positive number`},
		{"renew_on off with statuses", "upstream_oauth 1nce {\n\trenew_on off 401\n}", `renew_on off takes no status codes`},

		// Client authentication with keys, issuer discovery.
		{"unknown assertion subdirective", "upstream_oauth {\n\tassertion {\n\t\tpassphrase x\n\t}\n}", `unrecognized assertion subdirective 'passphrase'`},
		{"assertion with an argument", "upstream_oauth {\n\tassertion key.pem {\n\t}\n}", `wrong argument count`},
		{"alg none", "upstream_oauth {\n\tassertion {\n\t\talg none\n\t}\n}", `alg none is refused: an unsigned assertion proves nothing`},
		{"alg None", "upstream_oauth {\n\tassertion {\n\t\talg None\n\t}\n}", `alg none is refused`},
		{"unknown alg", "upstream_oauth {\n\tassertion {\n\t\talg RS999\n\t}\n}", `unknown alg "RS999" (want RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA, HS256, HS384 or HS512)`},
		{"assertion key twice", "upstream_oauth {\n\tassertion {\n\t\tkey a.pem\n\t\tkey b.pem\n\t}\n}", `assertion subdirective 'key' given more than once`},
		{"assertion key arity", "upstream_oauth {\n\tassertion {\n\t\tkey a.pem b.pem\n\t}\n}", `wrong argument count`},
		{"claim arity", "upstream_oauth {\n\tassertion {\n\t\tclaim tenant\n\t}\n}", `wrong argument count`},
		{"duplicate claim", "upstream_oauth {\n\tassertion {\n\t\tclaim tenant a\n\t\tclaim tenant b\n\t}\n}", `claim 'tenant' given more than once`},
		{"bad lifetime", "upstream_oauth {\n\tassertion {\n\t\tlifetime soon\n\t}\n}", `bad duration 'soon'`},
		{"two assertion blocks", "upstream_oauth {\n\tassertion {\n\t}\n\tassertion {\n\t}\n}", `subdirective 'assertion' given more than once`},
		{"private_key_jwt without key", "upstream_oauth {\n\ttoken_url https://idp.example.com/token\n\tclient_id a\n\tclient_auth private_key_jwt\n}", `client_auth private_key_jwt needs assertion { key <pem file> }`},
		{"private_key_jwt with client_secret", "upstream_oauth {\n\ttoken_url https://idp.example.com/token\n\tclient_id a\n\tclient_secret b\n\tclient_auth private_key_jwt\n\tassertion {\n\t\tkey /k.pem\n\t}\n}", `client_auth private_key_jwt sends no secret: remove client_secret`},
		{"private_key_jwt with HS256", "upstream_oauth {\n\ttoken_url https://idp.example.com/token\n\tclient_id a\n\tclient_auth private_key_jwt\n\tassertion {\n\t\tkey /k.pem\n\t\talg HS256\n\t}\n}", `alg HS256 signs with the client secret`},
		{"assertion with basic", "upstream_oauth {\n\ttoken_url https://idp.example.com/token\n\tclient_id a\n\tclient_secret b\n\tassertion {\n\t\tkey /k.pem\n\t}\n}", `assertion is only used with client_auth private_key_jwt or client_secret_jwt`},
		{"reserved claim", "upstream_oauth {\n\ttoken_url https://idp.example.com/token\n\tclient_id a\n\tclient_auth private_key_jwt\n\tassertion {\n\t\tkey /k.pem\n\t\tclaim aud https://x\n\t}\n}", `assertion claim "aud" is set by the module itself`},
		{"lifetime over an hour", "upstream_oauth {\n\ttoken_url https://idp.example.com/token\n\tclient_id a\n\tclient_auth private_key_jwt\n\tassertion {\n\t\tkey /k.pem\n\t\tlifetime 2h\n\t}\n}", `assertion lifetime must be at most 1h0m0s`},
		{"client_secret_jwt with RS256", "upstream_oauth {\n\ttoken_url https://idp.example.com/token\n\tclient_id a\n\tclient_secret b\n\tclient_auth client_secret_jwt\n\tassertion {\n\t\talg RS256\n\t}\n}", `client_auth client_secret_jwt signs with HMAC (HS256, HS384 or HS512), not RS256`},
		{"client_secret_jwt with x5t", "upstream_oauth {\n\ttoken_url https://idp.example.com/token\n\tclient_id a\n\tclient_secret b\n\tclient_auth client_secret_jwt\n\tassertion {\n\t\tx5t /c.pem\n\t}\n}", `assertion x5t names the certificate of a key`},
		{"tls_client_auth without tls", "upstream_oauth {\n\ttoken_url https://idp.example.com/token\n\tclient_id a\n\tclient_auth tls_client_auth\n}", `client_auth tls_client_auth needs tls { client_cert <cert file> <key file> }`},
		{"tls_client_auth with tls but no client_cert", "upstream_oauth {\n\ttoken_url https://idp.example.com/token\n\tclient_id a\n\tclient_auth tls_client_auth\n\ttls {\n\t\tca /ca.pem\n\t}\n}", `client_auth tls_client_auth needs tls { client_cert`},
		{"tls_client_auth with client_secret", "upstream_oauth {\n\ttoken_url https://idp.example.com/token\n\tclient_id a\n\tclient_secret b\n\tclient_auth tls_client_auth\n\ttls {\n\t\tclient_cert /c.pem /k.pem\n\t}\n}", `client_auth tls_client_auth sends no secret`},
		{"issuer http", "upstream_oauth {\n\tissuer http://idp.example.com\n\tclient_id a\n\tclient_secret b\n}", `issuer: http:// is only allowed for a loopback host`},
		{"issuer with query", "upstream_oauth {\n\tissuer https://idp.example.com/?tenant=a\n\tclient_id a\n\tclient_secret b\n}", `issuer: an issuer identifier has no query or fragment`},
		{"issuer arity", "upstream_oauth {\n\tissuer https://a.example https://b.example\n}", `wrong argument count`},
		{"repeated issuer", "upstream_oauth {\n\tissuer https://a.example\n\tissuer https://b.example\n}", `subdirective 'issuer' given more than once`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := caddyfile.NewTestDispenser(tc.input)
			err := new(Handler).UnmarshalCaddyfile(d)
			if err == nil {
				t.Fatalf("no error for:\n%s", tc.input)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
			if !strings.Contains(err.Error(), "Testfile:") {
				t.Errorf("error %q does not name the file and line", err)
			}
		})
	}
}

// TestRequestPlaceholderErrorLine: a request placeholder where none is
// allowed is refused at the line that carries it.
func TestRequestPlaceholderErrorLine(t *testing.T) {
	for input, line := range map[string]string{
		"upstream_oauth {\n\tclient_id {tenant}\n\tclient_secret {tenant_secret}\n\ttoken_url https://{tenant}.example/t\n}":  "Testfile:4",
		"upstream_oauth 1nce {\n\tusername {tenant}\n\tpassword p\n\ttls {\n\t\tca /ca.pem\n\t\tserver_name {tenant}\n\t}\n}": "Testfile:6",
	} {
		err := new(Handler).UnmarshalCaddyfile(caddyfile.NewTestDispenser(input))
		if err == nil || !strings.Contains(err.Error(), line) || !strings.Contains(err.Error(), "request placeholder") {
			t.Errorf("want a request placeholder error at %s, got %v", line, err)
		}
	}
}

// TestUnmarshalCaddyfileErrorLine checks that an error points at the line
// of the offending subdirective.
func TestUnmarshalCaddyfileErrorLine(t *testing.T) {
	d := caddyfile.NewTestDispenser("upstream_oauth 1nce {\n\tusername u\n\tpassword p\n\ttimeout 10s\n\trenew_on abc\n}")
	err := new(Handler).UnmarshalCaddyfile(d)
	if err == nil || !strings.Contains(err.Error(), "Testfile:5") {
		t.Fatalf("want an error at Testfile:5, got %v", err)
	}
}

// TestUnmarshalCaddyfileAssertionErrorLine: an error in the assertion
// block points at its own line; one found when the block is resolved (here:
// tls_client_auth without a client certificate) at the directive's line.
func TestUnmarshalCaddyfileAssertionErrorLine(t *testing.T) {
	for _, tc := range []struct{ input, want string }{
		{"upstream_oauth {\n\tclient_id a\n\tclient_auth private_key_jwt\n\tassertion {\n\t\tkey /k.pem\n\t\talg none\n\t}\n}", "Testfile:6"},
		{"upstream_oauth {\n\tclient_id a\n\tassertion {\n\t\tkey /k.pem\n\t\tlifetime -1s\n\t}\n}", "Testfile:5"},
		{"\nupstream_oauth {\n\ttoken_url https://idp.example.com/token\n\tclient_id a\n\tclient_auth tls_client_auth\n}", "Testfile:2"},
	} {
		err := new(Handler).UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("want an error at %s, got %v for:\n%s", tc.want, err, tc.input)
		}
	}
}

// TestUnmarshalCaddyfileKeysPlaceholders: placeholders in client_auth, the
// assertion's alg and files, and issuer are kept for provision time.
func TestUnmarshalCaddyfileKeysPlaceholders(t *testing.T) {
	h := new(Handler)
	err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(`upstream_oauth {
		issuer {env.ISSUER}
		client_id a
		client_auth {env.AUTH}
		assertion {
			key {env.KEY_FILE}
			alg {env.ALG}
		}
	}`))
	if err != nil {
		t.Fatal(err)
	}
	if h.Issuer != "{env.ISSUER}" || h.ClientAuth != "{env.AUTH}" || h.Assertion.Key != "{env.KEY_FILE}" || h.Assertion.Alg != "{env.ALG}" {
		t.Errorf("placeholders not kept verbatim: %+v %+v", h, h.Assertion)
	}
}

// TestUnmarshalCaddyfileSecretsNotInErrors checks that errors about a
// block never quote its secrets.
func TestUnmarshalCaddyfileSecretsNotInErrors(t *testing.T) {
	const secret = "s3cr3t-VALUE-42"
	for _, input := range []string{
		"upstream_oauth {\n\ttoken_url http://auth.example.com/t\n\tclient_id a\n\tclient_secret " + secret + "\n}",
		"upstream_oauth telenor {\n\tclient_id a\n\tclient_secret " + secret + "\n\tusername u\n}",
		"upstream_oauth {\n\ttoken_url https://a:" + secret + "@auth.example.com/t\n\tclient_id a\n\tclient_secret b\n}",
	} {
		err := new(Handler).UnmarshalCaddyfile(caddyfile.NewTestDispenser(input))
		if err == nil {
			t.Fatalf("no error for %q", input)
		}
		if strings.Contains(err.Error(), secret) {
			t.Errorf("error quotes the secret: %v", err)
		}
	}
}

// TestUnmarshalCaddyfilePlaceholders checks that placeholders are accepted
// where a literal would be checked, and kept verbatim for provision time.
func TestUnmarshalCaddyfilePlaceholders(t *testing.T) {
	h := new(Handler)
	err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(`upstream_oauth {
		token_url {env.TOKEN_URL}
		grant {env.GRANT}
		client_id {env.ID}
		client_secret {file./run/secret}
		refresh_ahead {env.AHEAD}
	}`))
	if err != nil {
		t.Fatal(err)
	}
	if h.TokenURL != "{env.TOKEN_URL}" || h.ClientSecret != "{file./run/secret}" || h.Grant != "{env.GRANT}" {
		t.Errorf("placeholders not kept verbatim: %+v", h)
	}
}
