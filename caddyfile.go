package upstreamoauth

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-upstream-oauth/upstream_oauth/grants"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("upstream_oauth", parseCaddyfile)
	httpcaddyfile.RegisterDirectiveOrder("upstream_oauth", httpcaddyfile.After, "request_header")
}

// parseCaddyfile sets up the handler from Caddyfile tokens.
func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(Handler)
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return m, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	upstream_oauth [<matcher>] [<provider>] {
//		name           <id>
//		token_url      <url>
//		grant          client_credentials|password
//		client_id      <value>
//		client_secret  <value>
//		username       <value>
//		password       <value>
//		client_auth    basic|body|none|private_key_jwt|client_secret_jwt|tls_client_auth
//		body           form|json
//		scope          <scope...>
//		audience       <value>
//		param          <name> <value>
//		token_header   <name> <value>
//		logout_url     <url>
//		issuer         <url>
//		assertion {
//			key        <pem file>
//			alg        <alg>
//			kid        <key id>
//			x5t        <cert pem file>
//			audience   <value>
//			lifetime   <duration>
//			claim      <name> <value>
//		}
//		refresh_ahead  <duration>|<percent>
//		default_ttl    <duration>
//		timeout        <duration>
//		renew_on       <status...>|off
//		max_sources    <n>
//		header         <name> [<scheme>]
//		share
//		allow_http
//		tls {
//			ca           <pem file...>
//			client_cert  <cert file> <key file>
//			server_name  <name>
//		}
//	}
//
// client_auth also takes the RFC 7591 names client_secret_basic (basic) and
// client_secret_post (body); alg is one of RS256, RS384, RS512, PS256,
// PS384, PS512, ES256, ES384, EdDSA, HS256, HS384, HS512.
//
// Settings that can be checked without expanding placeholders are checked
// here, so that a bad Caddyfile fails at adapt time with its file and line.
// No file is read and no request made: the assertion's key is read at
// provision time, the issuer's metadata when the first token is needed.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	if d.NextArg() {
		h.Provider = d.Val()
		if ph := requestPlaceholder(h.Provider); ph != "" {
			return d.Errf("%v", steeringError("provider", ph))
		}
		if _, ok := grants.LookupPreset(h.Provider); !ok && !hasPlaceholder(h.Provider) {
			return d.Errf("unknown provider '%s' (known: %s)", h.Provider, strings.Join(grants.PresetNames(), ", "))
		}
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		sub := d.Val()
		if seen[sub] && !repeatable[sub] {
			return d.Errf("subdirective '%s' given more than once", sub)
		}
		seen[sub] = true
		if err := h.unmarshalSubdirective(d, sub); err != nil {
			return err
		}
		if !blocks[sub] {
			if err := h.steeringAt(d); err != nil {
				return err
			}
			if err := noBlock(d, sub); err != nil {
				return err
			}
		}
	}
	if err := h.checkStatic(); err != nil {
		d.Reset()
		d.Next()
		return d.Errf("upstream_oauth: %v", err)
	}
	return nil
}

// repeatable subdirectives may stand more than once in a block.
var repeatable = map[string]bool{"param": true, "token_header": true, "scope": true}

// blocks are the subdirectives that open a block of their own.
var blocks = map[string]bool{"tls": true, "assertion": true}

// steeringAt refuses, at the line just read, a request placeholder where
// none is allowed (see Handler.steeringFields): the first one found was
// set by that line, since every line before was checked.
func (h *Handler) steeringAt(d *caddyfile.Dispenser) error {
	if err := h.checkSteering(); err != nil {
		return d.Errf("%v", err)
	}
	return nil
}

// noBlock refuses a block after a subdirective that takes none: without
// this, `name x {` would read the block's lines as subdirectives of the
// handler.
func noBlock(d *caddyfile.Dispenser, sub string) error {
	before := d.Token()
	if d.NextBlock(d.Nesting()) || d.Token().Line != before.Line || d.Token().Text != before.Text {
		return d.Errf("subdirective '%s' takes values on its line, not a block: remove the '{'", sub)
	}
	return nil
}

func (h *Handler) unmarshalSubdirective(d *caddyfile.Dispenser, sub string) error {
	switch sub {
	case "name":
		return oneArg(d, &h.Name)
	case "token_url":
		return oneArg(d, &h.TokenURL)
	case "logout_url":
		return oneArg(d, &h.LogoutURL)
	case "issuer":
		return oneArg(d, &h.Issuer)
	case "grant":
		return oneOf(d, sub, &h.Grant, grants.ParseGrant, grants.Grants)
	case "client_id":
		return oneArg(d, &h.ClientID)
	case "client_secret":
		return oneArg(d, &h.ClientSecret)
	case "username":
		return oneArg(d, &h.Username)
	case "password":
		return oneArg(d, &h.Password)
	case "client_auth":
		return oneOf(d, sub, &h.ClientAuth, grants.ParseAuthMethod, grants.AuthMethodNames())
	case "body":
		return oneOf(d, sub, &h.Body, grants.ParseBodyEncoding, grants.BodyEncodings)
	case "audience":
		return oneArg(d, &h.Audience)
	case "scope":
		args := d.RemainingArgs()
		if len(args) == 0 {
			return d.ArgErr()
		}
		h.Scope = append(h.Scope, args...)
	case "param", "token_header":
		args := d.RemainingArgs()
		if len(args) != 2 {
			return d.ArgErr()
		}
		m := &h.Param
		if sub == "token_header" {
			m = &h.TokenHeader
			if err := checkField(sub, args[0], args[1]); err != nil {
				return d.Errf("%v", err)
			}
		}
		if *m == nil {
			*m = map[string]string{}
		}
		if _, dup := (*m)[args[0]]; dup {
			return d.Errf("%s '%s' given more than once", sub, args[0])
		}
		(*m)[args[0]] = args[1]
	case "refresh_ahead":
		if err := oneArg(d, &h.RefreshAhead); err != nil {
			return err
		}
		if !hasPlaceholder(h.RefreshAhead) {
			if _, _, err := parseRefreshAhead(h.RefreshAhead); err != nil {
				return d.Errf("%v", err)
			}
		}
	case "default_ttl":
		if err := durationArg(d, &h.DefaultTTL); err != nil {
			return err
		}
		if err := checkDefaultTTL(time.Duration(h.DefaultTTL)); err != nil {
			return d.Errf("%v", err)
		}
	case "timeout":
		return durationArg(d, &h.Timeout)
	case "renew_on":
		args := d.RemainingArgs()
		if len(args) == 0 {
			return d.ArgErr()
		}
		if args[0] == "off" {
			if len(args) > 1 {
				return d.Errf("renew_on off takes no status codes")
			}
			h.RenewOn = []int{}
			return nil
		}
		for _, a := range args {
			st, err := strconv.Atoi(a)
			if err != nil || st < 100 || st > 599 {
				return d.Errf("renew_on: '%s' is not an HTTP status code", a)
			}
			h.RenewOn = append(h.RenewOn, st)
		}
	case "header":
		args := d.RemainingArgs()
		if len(args) < 1 || len(args) > 2 {
			return d.ArgErr()
		}
		if err := checkField(sub, args[0], ""); err != nil && !hasPlaceholder(args[0]) {
			return d.Errf("header: '%s' is not a header name", args[0])
		}
		h.Header = http.CanonicalHeaderKey(args[0])
		if len(args) == 2 {
			h.HeaderScheme = args[1]
			if err := checkScheme(args[1]); err != nil && !hasPlaceholder(args[1]) {
				return d.Errf("%v", err)
			}
		}
	case "max_sources":
		var v string
		if err := oneArg(d, &v); err != nil {
			return err
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return d.Errf("max_sources: '%s' is not a positive number", v)
		}
		h.MaxSources = n
	case "share":
		return noArgs(d, &h.Share)
	case "allow_http":
		return noArgs(d, &h.AllowHTTP)
	case "tls":
		if d.NextArg() {
			return d.ArgErr()
		}
		h.TLS = new(TLS)
		return h.TLS.unmarshalCaddyfile(d, func() error { return h.steeringAt(d) })
	case "assertion":
		if d.NextArg() {
			return d.ArgErr()
		}
		h.Assertion = new(Assertion)
		return h.Assertion.unmarshalCaddyfile(d, func() error { return h.steeringAt(d) })
	default:
		return d.Errf("unrecognized subdirective '%s'", sub)
	}
	return nil
}

// unmarshalCaddyfile reads the tls block; check runs after each line.
func (t *TLS) unmarshalCaddyfile(d *caddyfile.Dispenser, check func() error) error {
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		if err := t.unmarshalLine(d); err != nil {
			return err
		}
		if err := check(); err != nil {
			return err
		}
	}
	return nil
}

// unmarshalLine reads one line of the tls block.
func (t *TLS) unmarshalLine(d *caddyfile.Dispenser) error {
	switch d.Val() {
	case "ca":
		args := d.RemainingArgs()
		if len(args) == 0 {
			return d.ArgErr()
		}
		t.CA = append(t.CA, args...)
	case "client_cert":
		args := d.RemainingArgs()
		if len(args) != 2 {
			return d.ArgErr()
		}
		t.ClientCert, t.ClientKey = args[0], args[1]
	case "server_name":
		return oneArg(d, &t.ServerName)
	default:
		return d.Errf("unrecognized tls subdirective '%s'", d.Val())
	}
	return nil
}

// unmarshalCaddyfile reads the assertion block; check runs after each
// line.
func (a *Assertion) unmarshalCaddyfile(d *caddyfile.Dispenser, check func() error) error {
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		sub := d.Val()
		if seen[sub] && sub != "claim" {
			return d.Errf("assertion subdirective '%s' given more than once", sub)
		}
		seen[sub] = true
		var err error
		switch sub {
		case "key":
			err = oneArg(d, &a.Key)
		case "alg":
			if err = oneArg(d, &a.Alg); err == nil && !hasPlaceholder(a.Alg) {
				if _, perr := grants.ParseAlg(a.Alg); perr != nil {
					err = d.Errf("%v", perr)
				}
			}
		case "kid":
			err = oneArg(d, &a.Kid)
		case "x5t":
			err = oneArg(d, &a.X5T)
		case "audience":
			err = oneArg(d, &a.Audience)
		case "lifetime":
			err = durationArg(d, &a.Lifetime)
		case "claim":
			args := d.RemainingArgs()
			if len(args) != 2 {
				return d.ArgErr()
			}
			if a.Claim == nil {
				a.Claim = map[string]string{}
			}
			if _, dup := a.Claim[args[0]]; dup {
				return d.Errf("claim '%s' given more than once", args[0])
			}
			a.Claim[args[0]] = args[1]
		default:
			return d.Errf("unrecognized assertion subdirective '%s'", sub)
		}
		if err != nil {
			return err
		}
		if err := check(); err != nil {
			return err
		}
	}
	return nil
}

// checkStatic resolves the settings with every placeholder standing for a
// harmless value, so what can be known before start-up is checked at adapt
// time: presets, grants and their credentials, URLs without placeholders.
func (h *Handler) checkStatic() error {
	probe := *h
	for _, u := range []*string{&probe.TokenURL, &probe.LogoutURL, &probe.Issuer} {
		if hasPlaceholder(*u) {
			*u = "https://placeholder.invalid/"
		}
	}
	if hasPlaceholder(probe.ClientAuth) {
		// Checked at provision time, with what goes with the method.
		probe.ClientAuth, probe.Assertion = string(grants.AuthNone), nil
	}
	if a := probe.Assertion; a != nil && hasPlaceholder(a.Alg) {
		probeA := *a
		probeA.Alg = "" // checked at provision time
		probe.Assertion = &probeA
	}
	for _, v := range []*string{&probe.Grant, &probe.Body, &probe.RefreshAhead} {
		if hasPlaceholder(*v) {
			*v = "" // checked at provision time
		}
	}
	if hasPlaceholder(probe.Provider) {
		probe.Provider = ""
		if probe.TokenURL == "" {
			probe.TokenURL = "https://placeholder.invalid/"
		}
	}
	repl := caddy.NewEmptyReplacer()
	repl.Map(func(string) (any, bool) { return "placeholder", true })
	_, err := probe.settings(repl)
	return err
}

func hasPlaceholder(s string) bool {
	open := strings.IndexByte(s, '{')
	return open >= 0 && strings.IndexByte(s[open:], '}') > 0
}

func oneArg(d *caddyfile.Dispenser, dst *string) error {
	if !d.NextArg() {
		return d.ArgErr()
	}
	*dst = d.Val()
	if d.NextArg() {
		return d.ArgErr()
	}
	return nil
}

// oneOf reads one argument into dst that parse accepts (or a placeholder,
// checked at provision time); allowed names the accepted values for the
// error.
func oneOf[T ~string](d *caddyfile.Dispenser, name string, dst *string, parse func(string) (T, error), allowed []T) error {
	if err := oneArg(d, dst); err != nil {
		return err
	}
	if _, err := parse(*dst); err == nil || hasPlaceholder(*dst) {
		return nil
	}
	names := make([]string, len(allowed))
	for i, a := range allowed {
		names[i] = string(a)
	}
	return d.Errf("%s: '%s' is not one of %s", name, *dst, strings.Join(names, ", "))
}

func durationArg(d *caddyfile.Dispenser, dst *caddy.Duration) error {
	var v string
	if err := oneArg(d, &v); err != nil {
		return err
	}
	dur, err := caddy.ParseDuration(v)
	if err != nil {
		return d.Errf("bad duration '%s': %v", v, err)
	}
	if dur <= 0 {
		return d.Errf("duration '%s' must be positive", v)
	}
	*dst = caddy.Duration(dur)
	return nil
}

func noArgs(d *caddyfile.Dispenser, dst *bool) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	*dst = true
	return nil
}

// Interface guard.
var _ caddyfile.Unmarshaler = (*Handler)(nil)
