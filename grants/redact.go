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

// withheld stands for a whole piece of provider text (an error code, a
// description) that shares a run of runLen bytes with a secret: a provider
// that echoes a secret only in part, cut off, still puts none of it into a
// log line.
const withheld = "[withheld: it shares text with a secret]"

// runLen is the shortest run of a secret's form that withholds the provider
// text it is found in. Forms shorter than runLen are only redacted whole:
// a shorter run could be any word. (sharesRun compares runs of 8 bytes as
// numbers.)
const runLen = 8

// redactor removes from provider text every secret a client knows, in each
// form the client sent it in: plain, URL-encoded (form bodies),
// JSON-escaped (JSON bodies), and base64 of id:secret (the Basic header).
// A text that still shares a run of runLen bytes with one of those forms (a
// provider that echoed part of a secret) is withheld whole (see clean),
// unless the run is also text the requests carry in the open (see
// sparing). A provider that echoes the request in its error answer then
// puts no secret into a log line, an event or the admin API. The zero
// redactor removes nothing.
type redactor struct {
	forms []string // longest first
	r     *strings.Replacer
	// runs are the texts that provider text may share no run of runLen
	// bytes with: the forms of runLen bytes or more, and the signature of
	// a client assertion (whose header and payload are no secret).
	runs []string
	// open holds the runs of the text that requests carry in the open
	// (field names, the grant, the client id, ...): a secret's run that is
	// one of them ("password" in password-Xk3, beside grant_type=password)
	// is no sign of an echoed secret. Shared by copies: never written
	// after sparing.
	open map[uint64]struct{}
}

// newRedactor returns the redactor of secrets; id is the client id that the
// Basic header pairs with the first of secrets (the client secret).
func newRedactor(id string, secrets ...string) redactor {
	forms := formsOf(secrets...)
	if len(secrets) > 0 && secrets[0] != "" {
		pair := []byte(id + ":" + secrets[0])
		forms = append(forms,
			base64.StdEncoding.EncodeToString(pair), base64.RawStdEncoding.EncodeToString(pair),
			base64.URLEncoding.EncodeToString(pair), base64.RawURLEncoding.EncodeToString(pair))
	}
	return redactor{}.plusForms(forms, forms)
}

// formsOf lists the plain, URL-encoded and JSON-escaped forms of
// secrets.
func formsOf(secrets ...string) []string {
	var forms []string
	for _, s := range secrets {
		if s != "" {
			forms = append(forms, s, url.QueryEscape(s), url.PathEscape(s), jsonEscaped(s, true), jsonEscaped(s, false))
		}
	}
	return forms
}

// plus is r with more secrets (a refresh token, the token being logged
// out), in their plain, URL-encoded and JSON-escaped forms.
func (r redactor) plus(more ...string) redactor {
	forms := formsOf(more...)
	return r.plusForms(forms, forms)
}

// plusAssertion is r with a client assertion: redacted whole in each of
// its forms, and withheld where the text shares a run with its signature,
// the part that makes it a credential.
func (r redactor) plusAssertion(jwt string) redactor {
	return r.plusForms(formsOf(jwt), []string{jwt[strings.LastIndexByte(jwt, '.')+1:]})
}

func (r redactor) plusForms(forms, runs []string) redactor {
	if len(forms) == 0 && len(runs) == 0 {
		return r
	}
	// The longest form first, so that a secret's encoded form is replaced
	// whole rather than around a shorter secret inside it.
	all := sortedSet(append(slices.Clone(r.forms), forms...))
	pairs := make([]string, 0, 2*len(all))
	for _, f := range all {
		pairs = append(pairs, f, Redacted)
	}
	allRuns := slices.DeleteFunc(append(slices.Clone(r.runs), runs...), func(f string) bool { return len(f) < runLen })
	return redactor{forms: all, r: strings.NewReplacer(pairs...), runs: sortedSet(allRuns), open: r.open}
}

// sparing is r with open, the text that requests carry in the open, in
// each of its forms: runs of a secret that are also runs of it withhold
// nothing.
func (r redactor) sparing(open ...string) redactor {
	set := make(map[uint64]struct{})
	for _, f := range formsOf(open...) {
		for i := 0; i+runLen <= len(f); i++ {
			set[run8(f, i)] = struct{}{}
		}
	}
	r.open = set
	return r
}

// sortedSet is texts without the empty one and repeats, longest first.
func sortedSet(texts []string) []string {
	texts = slices.DeleteFunc(texts, func(f string) bool { return f == "" })
	slices.SortFunc(texts, func(a, b string) int { return cmp.Or(cmp.Compare(len(b), len(a)), strings.Compare(a, b)) })
	return slices.Compact(texts)
}

// apply returns s without the secrets.
func (r redactor) apply(s string) string {
	if r.r == nil {
		return s
	}
	return r.r.Replace(s)
}

// clean makes provider text fit for a log line: the secrets redacted, then
// cut to max bytes (so that no part of a secret survives at the cut) and
// sanitized; withheld whole if what is left still shares a run with a
// secret.
func (r redactor) clean(s string, max int) string {
	return r.withhold(sanitize(r.apply(s), max))
}

// withhold returns s, or withheld when s shares a run of runLen bytes with
// a secret. s is provider text already cut to the length of a log line: the
// check costs a set of its runs and a look-up per byte of the secrets'
// forms.
func (r redactor) withhold(s string) string {
	if r.shares(s) {
		return withheld
	}
	return s
}

// shares reports whether s holds a run of runLen bytes of a secret that is
// not also text the requests carry in the open.
func (r redactor) shares(s string) bool {
	return sharesRun(s, r.runs, r.open)
}

// sharesRun reports whether s and one of secrets have a run of runLen
// bytes in common, other than those in open. The runs of s go into a set
// that every run of the secrets is looked up in, so the cost grows with the
// sum of their lengths, not with its product.
func sharesRun(s string, secrets []string, open map[uint64]struct{}) bool {
	if len(s) < runLen || len(secrets) == 0 {
		return false
	}
	runs := make(map[uint64]struct{}, len(s)-runLen+1)
	for i := 0; i+runLen <= len(s); i++ {
		if w := run8(s, i); !has(open, w) {
			runs[w] = struct{}{}
		}
	}
	for _, secret := range secrets {
		for i := 0; i+runLen <= len(secret); i++ {
			if _, ok := runs[run8(secret, i)]; ok {
				return true
			}
		}
	}
	return false
}

func has(set map[uint64]struct{}, w uint64) bool {
	_, ok := set[w]
	return ok
}

// run8 is the run of 8 bytes of s at i, as a number: two runs are equal
// when their numbers are.
func run8(s string, i int) uint64 {
	_ = s[i+7]
	return uint64(s[i]) | uint64(s[i+1])<<8 | uint64(s[i+2])<<16 | uint64(s[i+3])<<24 |
		uint64(s[i+4])<<32 | uint64(s[i+5])<<40 | uint64(s[i+6])<<48 | uint64(s[i+7])<<56
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
