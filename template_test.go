package upstreamoauth

import (
	"testing"

	"github.com/caddyserver/caddy/v2"
)

// TestTemplate: global placeholders are expanded once, at compile time, and
// their values (a secret with braces in it) are literals, never read for
// placeholders; request placeholders are read per request, unknown HTTP
// ones as empty, other unknown ones as written (as Caddy's ReplaceKnown);
// braces around what cannot name a placeholder, and escaped braces, are
// literal.
func TestTemplate(t *testing.T) {
	t.Setenv("UPSTREAM_OAUTH_BRACED", "s3{tenant}cr}et{")
	global := caddy.NewReplacer()
	repl := caddy.NewEmptyReplacer()
	repl.Set("tenant", "acme")
	repl.Set("n", 42)
	for _, c := range []struct {
		in, want   string
		dynamic    bool
		firstPlace string
	}{
		{"plain", "plain", false, ""},
		{"{env.UPSTREAM_OAUTH_BRACED}", "s3{tenant}cr}et{", false, ""},
		{"pre-{env.UPSTREAM_OAUTH_BRACED}-{tenant}", "pre-s3{tenant}cr}et{-acme", true, "{tenant}"},
		{"{tenant}", "acme", true, "{tenant}"},
		{"id-{tenant}-{n}", "id-acme-42", true, "{tenant}"},
		{"{http.request.header.X-Unset}", "", true, "{http.request.header.X-Unset}"},
		{`\{tenant\}`, "{tenant}", false, ""},
		{"open{brace", "open{brace", false, ""},
		{`[{"type":"a","actions":["x"]}]`, `[{"type":"a","actions":["x"]}]`, false, ""},
		{"{}", "{}", false, ""},
		{"{not a placeholder}", "{not a placeholder}", false, ""},
		{"p4ss{w0rd}", "p4ss{w0rd}", true, "{w0rd}"},
		{"{w0rd}", "{w0rd}", true, "{w0rd}"},
		{"{tenant}-{http.regexp.t.1}", "acme-", true, "{tenant}"},
	} {
		tm := compileTemplate(c.in, global)
		if tm.dynamic() != c.dynamic {
			t.Errorf("%q: dynamic %v, want %v", c.in, tm.dynamic(), c.dynamic)
		}
		if got := tm.valueFor(repl); got != c.want {
			t.Errorf("%q: value %q, want %q", c.in, got, c.want)
		}
		if got := string(tm.appendValue([]byte("x"), repl)); got != "x"+c.want {
			t.Errorf("%q: appended %q, want %q", c.in, got, "x"+c.want)
		}
		if got := requestPlaceholder(c.in); got != c.firstPlace {
			t.Errorf("%q: request placeholder %q, want %q", c.in, got, c.firstPlace)
		}
	}
}
