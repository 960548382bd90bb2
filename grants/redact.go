package grants

import (
	"bytes"
	"cmp"
	"encoding/base64"
	"encoding/json"
	"net/url"
	"slices"
	"strings"
)

// Redacted stands in the provider's text for a secret it echoed.
const Redacted = "[REDACTED]"

// redactor removes from provider text every secret a client knows, in each
// form the client sent it in: plain, URL-encoded (form bodies),
// JSON-escaped (JSON bodies), and base64 of id:secret (the Basic header). A
// provider that echoes the request in its error answer then puts no secret
// into a log line, an event or the admin API. The zero redactor removes
// nothing.
type redactor struct {
	forms []string // longest first
	r     *strings.Replacer
}

// newRedactor returns the redactor of secrets; id is the client id that the
// Basic header pairs with the first of secrets (the client secret).
func newRedactor(id string, secrets ...string) redactor {
	var forms []string
	for i, s := range secrets {
		if s == "" {
			continue
		}
		forms = append(forms, s, url.QueryEscape(s), url.PathEscape(s), jsonEscaped(s, true), jsonEscaped(s, false))
		if i == 0 {
			pair := []byte(id + ":" + s)
			forms = append(forms,
				base64.StdEncoding.EncodeToString(pair), base64.RawStdEncoding.EncodeToString(pair),
				base64.URLEncoding.EncodeToString(pair), base64.RawURLEncoding.EncodeToString(pair))
		}
	}
	return redactor{}.plusForms(forms)
}

// plus is r with more secrets (a refresh token, the token being logged
// out), in their plain, URL-encoded and JSON-escaped forms.
func (r redactor) plus(more ...string) redactor {
	return r.plusForms(newRedactor("", more...).forms)
}

func (r redactor) plusForms(forms []string) redactor {
	if len(forms) == 0 {
		return r
	}
	all := append(slices.Clone(r.forms), forms...)
	all = slices.DeleteFunc(all, func(f string) bool { return f == "" })
	// The longest form first, so that a secret's encoded form is replaced
	// whole rather than around a shorter secret inside it.
	slices.SortFunc(all, func(a, b string) int { return cmp.Or(cmp.Compare(len(b), len(a)), strings.Compare(a, b)) })
	all = slices.Compact(all)
	pairs := make([]string, 0, 2*len(all))
	for _, f := range all {
		pairs = append(pairs, f, Redacted)
	}
	return redactor{forms: all, r: strings.NewReplacer(pairs...)}
}

// apply returns s without the secrets.
func (r redactor) apply(s string) string {
	if r.r == nil {
		return s
	}
	return r.r.Replace(s)
}

// jsonEscaped is s as it stands inside a JSON string, escaping HTML
// characters or not (encoding/json does by default).
func jsonEscaped(s string, html bool) string {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(html)
	_ = enc.Encode(s)
	out := strings.TrimSuffix(buf.String(), "\n")
	return strings.TrimSuffix(strings.TrimPrefix(out, `"`), `"`)
}
